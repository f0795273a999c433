# Reference token ids for tests/test_smollm2.cpp: Hugging Face tokenizers (a Rust implementation independent of
# this example) with a BPE built from the GGUF's own tokenizer.ggml.tokens and merges, SmolLM2's pre-tokenizer
# (Digits(individual_digits) + ByteLevel) and its control tokens as special tokens.
#   pip install gguf tokenizers   (used: gguf 0.19.0, tokenizers 0.23.3)
#   python3 reference_token_ids.py SmolLM2-135M-Instruct.Q4_1.gguf strings.json   (a JSON list of strings)
# Not run by CI: its output is pinned in the test.
import sys, json
import gguf
from tokenizers import Tokenizer, models, pre_tokenizers, decoders, AddedToken
r = gguf.GGUFReader(sys.argv[1])
def strings(name):
    f = r.fields[name]
    return [bytes(f.parts[i]).decode('utf-8') for i in f.data]
tokens = strings('tokenizer.ggml.tokens'); merges = strings('tokenizer.ggml.merges')
types = [int(r.fields['tokenizer.ggml.token_type'].parts[i][0]) for i in r.fields['tokenizer.ggml.token_type'].data]
vocab = {t: i for i, t in enumerate(tokens)}
tok = Tokenizer(models.BPE(vocab=vocab, merges=[tuple(m.split(' ', 1)) for m in merges]))
tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
tok.decoder = decoders.ByteLevel()
tok.add_special_tokens([AddedToken(t, special=True) for t, ty in zip(tokens, types) if ty == 3])
print({ty: types.count(ty) for ty in set(types)}, [t for t, ty in zip(tokens, types) if ty != 1][:20])
for s in json.load(open(sys.argv[2])):
    ids = tok.encode(s).ids
    print(json.dumps(s, ensure_ascii=False), ids, tok.decode(ids) == s)

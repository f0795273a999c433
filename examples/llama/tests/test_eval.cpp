// The quality harness's parts on the tiny random model and on synthetic data: forward_logits() keeps token-by-token
// decode semantics through the window and group flushes of kivi and nuq, calibration files are validated and
// loaded, k-means fits known codebooks, windows and metrics are what docs/quality.md says.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "eval/codebook_kmeans.hpp"
#include "eval/text_windows.hpp"
#include "eval/token_metrics.hpp"
#include "kvq/core/error.hpp"
#include "model/llama_model.hpp"
#include "runtime/cpu_backend.hpp"
#include "runtime/kv_calibration.hpp"
#include "backend_logits.hpp"
#include "tiny_calibration.hpp"
#include "tiny_model.hpp"

using namespace kvq::llama;
using namespace kvq::llama::test;

namespace {

// 300 tokens: past nuq's first key group (129 tokens) and kivi's first flush (160), with several flushes after.
std::vector<TokenId> long_prompt(int vocabulary) {
  std::vector<TokenId> tokens;
  for (int i = 0; i < 300; ++i) tokens.push_back(static_cast<TokenId>((i * 37 + 11) % (vocabulary - 3)));
  return tokens;
}

KvCacheOptions cache(const std::string& preset) {
  KvCacheOptions options;
  options.preset = preset;
  options.max_tokens = 320;
  options.page_tokens = 128;
  return options;
}

}  // namespace

TEST_CASE("forward_logits over a long chunk gives the logits of token-by-token decode, flushes included") {
  TempDir dir;
  write_file(dir / "tiny.gguf", tiny_gguf(make_tiny_model(21)).bytes());
  const LlamaModel model = load_model(dir / "tiny.gguf");
  const std::vector<TokenId> tokens = long_prompt(model.config.vocabulary);
  const auto vocabulary = static_cast<std::size_t>(model.config.vocabulary);
  // kivi-2: fp16 window of 128 flushing 32 at a time; nuq2/nuq4: per-channel key groups of 128 behind one sink;
  // int8 and rot3: per-token, nothing to cut.
  const auto decode_all = [&](const std::string& preset) {
    return decode_logits(*make_cpu_backend(model, cache(preset)), tokens, vocabulary);
  };
  const std::vector<float> fp16 = decode_all("fp16");
  for (const std::string preset : {"kivi-2", "kivi-4", "nuq4", "nuq2", "int8", "rot3"}) {
    CAPTURE(preset);
    const std::vector<float> expected = decode_all(preset);
    const double quantization = rms_difference(expected, fp16);  // what the preset itself changes
    for (const std::size_t chunk : {std::size_t{300}, std::size_t{97}}) {
      CAPTURE(chunk);
      auto chunked = make_cpu_backend(model, cache(preset));
      std::vector<float> actual(tokens.size() * vocabulary);
      for (std::size_t begin = 0; begin < tokens.size(); begin += chunk) {
        const std::size_t size = std::min(chunk, tokens.size() - begin);
        chunked->forward_logits(std::span(tokens).subspan(begin, size),
                                std::span(actual).subspan(begin * vocabulary, size * vocabulary));
      }
      CHECK(chunked->position() == static_cast<std::int64_t>(tokens.size()));
      // Float BLAS instead of the double decode reference leaves ~1e-6 differences in keys and values, and now and
      // then one lands on the other side of a rounding boundary of a code; that code's step then moves everything
      // after it a little. What remains is small against what the preset itself does to the logits; reading
      // window tokens quantized where decode reads them in fp16 (a wrong cut) would be of the same order as that.
      const double difference = rms_difference(actual, expected);
      MESSAGE(preset, " chunk ", chunk, ": RMS logit difference from decode ", difference, ", preset vs fp16 ",
              quantization);
      CHECK(difference < 0.02 * quantization);
    }
  }
}

TEST_CASE("a calibration file round-trips and its codebooks reach the cache") {
  TempDir dir;
  write_file(dir / "tiny.gguf", tiny_gguf(make_tiny_model(23)).bytes());
  const LlamaModel model = load_model(dir / "tiny.gguf");
  KvCalibration written = tiny_calibration(model.config.layers, model.config.head_dim, 4);
  written.codebooks[2] = tiny_calibration(model.config.layers, model.config.head_dim, 2).codebooks[2];
  write_kv_calibration((dir / "c.kvqcal").string(), written);
  const KvCalibration read = read_kv_calibration((dir / "c.kvqcal").string());
  CHECK(read.layers == written.layers);
  CHECK(read.head_dim == written.head_dim);
  CHECK(read.codebooks.at(4)[1].key == written.codebooks.at(4)[1].key);
  CHECK(read.codebooks.at(2)[0].value == written.codebooks.at(2)[0].value);

  const std::vector<TokenId> tokens = long_prompt(model.config.vocabulary);
  const auto vocabulary = static_cast<std::size_t>(model.config.vocabulary);
  std::vector<float> with_defaults(tokens.size() * vocabulary), calibrated(with_defaults.size());
  make_cpu_backend(model, cache("nuq4"))->forward_logits(tokens, with_defaults);
  KvCacheOptions options = cache("nuq4");
  options.calibration = std::make_shared<const KvCalibration>(read);
  make_cpu_backend(model, options)->forward_logits(tokens, calibrated);
  // Other centroids, other codes: the logits move once tokens sit in quantized pages (not before: the first 129
  // tokens are the sink and the first pending group, fp16 in both).
  CHECK(std::equal(with_defaults.begin(), with_defaults.begin() + 100 * static_cast<std::ptrdiff_t>(vocabulary),
                   calibrated.begin()));
  CHECK_FALSE(std::equal(with_defaults.begin(), with_defaults.end(), calibrated.begin()));

  // A preset without codebooks, a model of another shape, missing bits: errors, not silent defaults.
  options.preset = "int8";
  CHECK_THROWS_WITH_AS(make_cpu_backend(model, options), doctest::Contains("has no codebooks"), kvq::Error);
  options.preset = "nuq3";
  CHECK_THROWS_WITH_AS(make_cpu_backend(model, options), doctest::Contains("needs 3-bit codebooks"), kvq::Error);
  KvCalibration other = tiny_calibration(model.config.layers + 1, model.config.head_dim, 4);
  options.preset = "nuq4";
  options.calibration = std::make_shared<const KvCalibration>(other);
  CHECK_THROWS_WITH_AS(make_cpu_backend(model, options), doctest::Contains("calibration for 3 layers, the model has 2"),
                       kvq::Error);
  other = tiny_calibration(model.config.layers, 128, 4);
  options.calibration = std::make_shared<const KvCalibration>(other);
  CHECK_THROWS_WITH_AS(make_cpu_backend(model, options), doctest::Contains("head_dim 128, the model has 64"), kvq::Error);
}

TEST_CASE("malformed calibration files are refused with the line and the problem") {
  TempDir dir;
  const std::string head = "kvq-kv-calibration 1\nlayers 1\nhead_dim 64\n";
  const std::string key = "codebook 2 key 0 -0.7 -0.2 0.2 0.7\n", value = "codebook 2 value 0 -0.7 -0.2 0.2 0.7\n";
  const struct {
    std::string text, message;
  } cases[] = {
      {"", "empty file"},
      {"kvq-calibration 1\n", "not a kvq calibration file"},
      {"kvq-kv-calibration 2\n", "unsupported version"},
      {head + "codebook 2 key 0 -0.7 -0.2 0.2\n", "3 centroids for 2 bits, expected 4"},
      {head + "codebook 2 key 0 -0.7 nan 0.2 0.7\n", "centroid 1 is not finite"},
      {head + "codebook 2 key 0 -0.7 0.2 -0.2 0.7\n", "not strictly ascending at 2"},
      {head + "codebook 2 key 0 -1.5 -0.2 0.2 0.7\n", "outside the normalised range"},
      {head + "codebook 2 key 0 -0.7 -0.2 0.2 0.7x\n", "\"0.7x\" is not a number"},
      {head + "codebook 2 key 1 -0.7 -0.2 0.2 0.7\n", "layer 1 is outside [0, 1)"},
      {head + "codebook 2 keys 0 -0.7 -0.2 0.2 0.7\n", "a codebook is `key` or `value`"},
      {head + key + key + value, "a second 2-bit key codebook for layer 0"},
      {head + key, "layer 0 has no 2-bit value codebook"},
      {head, "no codebooks"},
      {"kvq-kv-calibration 1\nhead_dim 64\n" + key, "a codebook before the `layers` record"},
      {head + key + value + "centroids 3\n", "unknown record \"centroids\""},
  };
  for (const auto& c : cases) {
    CAPTURE(c.text);
    write_file(dir / "bad.kvqcal", c.text);
    CHECK_THROWS_WITH_AS(read_kv_calibration((dir / "bad.kvqcal").string()), doctest::Contains(c.message.c_str()), kvq::Error);
  }
  write_file(dir / "good.kvqcal", "# a comment\n" + head + key + value);
  CHECK(read_kv_calibration((dir / "good.kvqcal").string()).codebooks.at(2).size() == 1);
  CHECK_THROWS_WITH_AS(read_kv_calibration((dir / "missing.kvqcal").string()), doctest::Contains("cannot open"),
                       kvq::Error);
}

TEST_CASE("k-means codebooks: the centroids of separated clusters, the uniform quantizer of a uniform histogram") {
  NormalizedHistogram spikes;
  for (float u : {-0.8f, -0.3f, 0.1f, 0.6f})
    for (int i = 0; i < 100; ++i) spikes.add(u + 0.001f * static_cast<float>(i % 5));
  const std::vector<float> fitted = fit_codebook(spikes, 4);
  const float expected[] = {-0.8f, -0.3f, 0.1f, 0.6f};
  for (int k = 0; k < 4; ++k) CHECK(std::abs(fitted[static_cast<std::size_t>(k)] - expected[k] - 0.002f) < 2e-3f);
  CHECK(codebook_distortion(spikes, fitted) < 1e-5);

  NormalizedHistogram uniform;
  for (int i = 0; i < 20000; ++i) uniform.add(-1.0f + 2.0f * (static_cast<float>(i) + 0.5f) / 20000.0f);
  const std::vector<float> levels = fit_codebook(uniform, 4);  // Lloyd-Max of U(-1, 1): -0.75, -0.25, 0.25, 0.75
  const float lloyd[] = {-0.75f, -0.25f, 0.25f, 0.75f};
  for (int k = 0; k < 4; ++k) CHECK(std::abs(levels[static_cast<std::size_t>(k)] - lloyd[k]) < 5e-3f);
  CHECK(std::is_sorted(levels.begin(), levels.end()));
  CHECK_THROWS_AS(fit_codebook(NormalizedHistogram{}, 4), kvq::Error);
}

TEST_CASE("sliding windows: stride, count, spread and errors") {
  const WindowPlan all = plan_windows(1000, 100, 50, 0, 0);
  CHECK(all.available == 19);  // starts 0, 50, ..., 900
  CHECK(all.starts.size() == 19);
  CHECK(all.starts.back() == 900);
  const WindowPlan some = plan_windows(1000, 100, 50, 3, 0);
  CHECK(some.starts == std::vector<std::int64_t>{0, 450, 900});
  const WindowPlan late = plan_windows(1000, 100, 50, 2, 0.5);
  CHECK(late.starts == std::vector<std::int64_t>{500, 900});
  CHECK_THROWS_WITH_AS(plan_windows(1000, 100, 100, 0, 0), doctest::Contains("--stride must be in [1, window - 1"),
                       kvq::Error);
  CHECK_THROWS_WITH_AS(plan_windows(50, 100, 50, 0, 0), doctest::Contains("fewer than one window"), kvq::Error);
}

TEST_CASE("token metrics: KL divergence, perplexity, percentile, agreement") {
  const std::vector<float> a_logits{1.0f, 2.0f, 3.0f}, b_logits{3.0f, 2.0f, 1.0f};
  std::vector<double> a(3), b(3);
  log_softmax(a_logits, a);
  log_softmax(b_logits, b);
  double total = 0;
  for (double x : a) total += std::exp(x);
  CHECK(total == doctest::Approx(1.0));
  CHECK(kl_divergence(a, a) == 0.0);
  double expected = 0;
  for (int j = 0; j < 3; ++j) expected += std::exp(a[static_cast<std::size_t>(j)]) * (a[static_cast<std::size_t>(j)] - b[static_cast<std::size_t>(j)]);
  CHECK(kl_divergence(a, b) == doctest::Approx(expected));
  TokenMetrics m;
  m.add(a, a, argmax(a), 2);
  m.add(b, a, argmax(a), 2);
  CHECK(m.tokens() == 2);
  CHECK(m.perplexity() == doctest::Approx(std::exp(-(a[2] + b[2]) / 2)));
  CHECK(m.mean_kld() == doctest::Approx(expected / 2));
  CHECK(m.kld_quantile(0.99) == doctest::Approx(expected));
  CHECK(m.top1_agreement() == doctest::Approx(0.5));
}

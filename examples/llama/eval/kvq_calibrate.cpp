// kvq_calibrate: per-layer codebooks for the nuq presets (KVQuant-style k-means over calibration activations),
// written to a calibration file (runtime/kv_calibration.hpp) that kvq_eval --calibration and the CPU backend load.
//
//   kvq_calibrate --model SmolLM2.gguf --text moby-dick.txt --tokens 16384 --out smollm2.kvqcal
//
// The model runs over the calibration text with an fp16 cache; the CPU backend's observer hands over every layer's
// pre-RoPE keys, values and queries, which KvStatistics normalises exactly as the nuq policies will; k-means
// (codebook_kmeans.hpp) fits 2^bits centroids per layer for keys and for values. docs/quality.md says more.
#include <fmt/core.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

#include "eval/codebook_kmeans.hpp"
#include "eval/kv_statistics.hpp"
#include "eval/text_windows.hpp"
#include "kvq/cache/presets.hpp"
#include "kvq/core/error.hpp"
#include "cli_number.hpp"
#include "kvq/quant/gaussian_codebook.hpp"
#include "model/llama_model.hpp"
#include "runtime/cpu_backend.hpp"
#include "runtime/kv_calibration.hpp"

namespace {

using namespace kvq::llama;
using kvq::ErrorCode;
using kvq::require;

constexpr const char* usage = R"(usage: kvq_calibrate --model PATH --text FILE --out FILE [options]
  --model PATH       GGUF file or Hugging Face directory
  --text FILE        calibration text (UTF-8); keep it apart from the evaluation text
  --begin F          start at this fraction of the text's tokens (default 0)
  --tokens N         calibration tokens (default 16384)
  --sequence N       tokens per sequence (the cache is reset between sequences; default 2048)
  --chunk N          tokens per forward step (default 256)
  --weighting W      query-energy (default; key channels weighted by the mean q_c^2 reading them) or none
  --bits LIST        codebook sizes (default 2,3,4: nuq2, nuq3, nuq4)
  --out FILE         the calibration file to write
)";

struct Options {
  std::string model, text, out, weighting = "query-energy";
  double begin = 0;
  std::int64_t tokens = 16384, sequence = 2048, chunk = 256;
  std::vector<int> bits{2, 3, 4};
};

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string_view flag = argv[i];
    if (flag == "--help" || flag == "-h") {
      fmt::print("{}", usage);
      std::exit(0);
    }
    require(i + 1 < argc, ErrorCode::invalid_argument, fmt::format("{} needs a value (see --help)", flag));
    const std::string_view value = argv[++i];
    if (flag == "--model") o.model = value;
    else if (flag == "--text") o.text = value;
    else if (flag == "--out") o.out = value;
    else if (flag == "--weighting") o.weighting = value;
    else if (flag == "--begin") o.begin = parse_number<double>(flag, value);
    else if (flag == "--tokens") o.tokens = parse_number<std::int64_t>(flag, value);
    else if (flag == "--sequence") o.sequence = parse_number<std::int64_t>(flag, value);
    else if (flag == "--chunk") o.chunk = parse_number<std::int64_t>(flag, value);
    else if (flag == "--bits") {
      o.bits.clear();
      for (std::size_t start = 0; start <= value.size();) {
        const std::size_t comma = std::min(value.find(',', start), value.size());
        o.bits.push_back(parse_number<int>(flag, value.substr(start, comma - start)));
        start = comma + 1;
      }
    } else
      throw kvq::Error(ErrorCode::invalid_argument, fmt::format("unknown flag {} (see --help)", flag));
  }
  require(!o.model.empty() && !o.text.empty() && !o.out.empty(), ErrorCode::invalid_argument,
          "--model, --text and --out are required (see --help)");
  require(o.weighting == "none" || o.weighting == "query-energy", ErrorCode::invalid_argument,
          "--weighting is none or query-energy, got " + o.weighting);
  require(o.begin >= 0 && o.begin < 1, ErrorCode::invalid_argument, "--begin must be in [0, 1)");
  require(o.tokens > 0 && o.sequence > 1 && o.chunk > 0, ErrorCode::invalid_argument,
          "--tokens, --sequence and --chunk must be positive (--sequence at least 2)");
  for (int b : o.bits)
    require(b >= 2 && b <= 4, ErrorCode::invalid_argument, fmt::format("--bits: {} (the nuq presets are 2, 3 and 4 bits)", b));
  return o;
}

// The calibration-free codebook of the same size, for the distortion comparison printed at the end.
std::vector<float> default_codebook(int bits, int group) {
  const auto pick = [&]<int Bits>() -> std::vector<float> {
    if (group == 64) {
      const auto& c = kvq::gaussian_codebook<Bits, 64>();
      return {c.begin(), c.end()};
    }
    const auto& c = kvq::gaussian_codebook<Bits, 128>();
    return {c.begin(), c.end()};
  };
  return bits == 2 ? pick.operator()<2>() : bits == 3 ? pick.operator()<3>() : pick.operator()<4>();
}

int run(const Options& o) {
  const LlamaModel model = load_model(o.model);
  const LlamaConfig& c = model.config;
  // The policy geometry comes from the nuq preset types (the same for 2, 3 and 4 bits).
  KvStatisticsShape shape = kvq::visit_preset_head_dim(c.head_dim, [&]<int HeadDim>() {
    using P = kvq::presets::Nuq<HeadDim, 4>;
    using Key = typename P::Tier::KeyPolicy;
    using Value = typename P::Tier::ValuePolicy;
    static_assert(Value::InnerPolicy::groups_per_block == 1, "kvq_calibrate: nuq values are one group per token");
    return KvStatisticsShape{0, 0, 0, 0, kvq::RopeStyle::interleaved, P::settings.sink_tokens, Key::tokens_per_block,
                             P::outliers.capacity};
  });
  shape.layers = c.layers;
  shape.q_heads = c.q_heads;
  shape.kv_heads = c.kv_heads;
  shape.head_dim = c.head_dim;
  shape.rope_style = c.rope.style;
  KvStatistics statistics(shape);

  const std::vector<TokenId> text = model.tokenizer.encode(read_text_file(o.text), false, false);
  const auto first = static_cast<std::int64_t>(o.begin * static_cast<double>(text.size()));
  require(first + o.tokens <= static_cast<std::int64_t>(text.size()), ErrorCode::invalid_argument,
          fmt::format("{} has {} tokens; --begin {} --tokens {} asks for [{}, {})", o.text, text.size(), o.begin,
                      o.tokens, first, first + o.tokens));
  KvCacheOptions kv;
  kv.preset = "fp16";
  kv.max_tokens = o.sequence;
  const auto backend =
      make_cpu_backend(model, kv, [&](int layer, std::int64_t at, std::int64_t count, const float* q, const float* k,
                                      const float* v) { statistics.observe(layer, at, count, q, k, v); });
  const auto start = std::chrono::steady_clock::now();
  for (std::int64_t s = first; s < first + o.tokens; s += o.sequence) {
    backend->reset();
    const std::int64_t end = std::min(s + o.sequence, first + o.tokens);
    for (std::int64_t b = s; b < end; b += o.chunk)
      backend->forward({text.data() + b, static_cast<std::size_t>(std::min(o.chunk, end - b))});
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    fmt::print(stderr, "calibration tokens [{}, {}) of {}: {:.0f} s, {:.0f} tokens/s\n", first, end, text.size(),
               seconds, static_cast<double>(end - first) / seconds);
  }

  KvCalibration calibration;
  calibration.model = std::filesystem::path(o.model).filename().string();
  calibration.source = fmt::format("{}, tokens [{}, {}) of its {}, sequences of {}",
                                   std::filesystem::path(o.text).filename().string(), first, first + o.tokens,
                                   text.size(), o.sequence);
  calibration.weighting = o.weighting;
  calibration.layers = c.layers;
  calibration.head_dim = c.head_dim;
  fmt::print("{} key groups of {} tokens per layer and KV head; mean squared error in the normalised domain, "
             "calibration-free default -> fitted (mean over layers):\n",
             statistics.key_groups(), shape.key_group_tokens);
  for (int bits : o.bits) {
    auto& layers = calibration.codebooks[bits];
    double key_default = 0, key_fitted = 0, value_default = 0, value_fitted = 0;
    const std::vector<float> key_reference = default_codebook(bits, 128), value_reference = default_codebook(bits, c.head_dim);
    for (int layer = 0; layer < c.layers; ++layer) {
      const NormalizedHistogram keys = statistics.key_histogram(layer, o.weighting == "query-energy");
      const NormalizedHistogram& values = statistics.value_histogram(layer);
      LayerCodebooks codebooks{fit_codebook(keys, 1 << bits), fit_codebook(values, 1 << bits)};
      key_default += codebook_distortion(keys, key_reference) / c.layers;
      key_fitted += codebook_distortion(keys, codebooks.key) / c.layers;
      value_default += codebook_distortion(values, value_reference) / c.layers;
      value_fitted += codebook_distortion(values, codebooks.value) / c.layers;
      layers.push_back(std::move(codebooks));
    }
    fmt::print("  {} bits: keys {:.3e} -> {:.3e}, values {:.3e} -> {:.3e}\n", bits, key_default, key_fitted,
               value_default, value_fitted);
  }
  write_kv_calibration(o.out, calibration);
  fmt::print("wrote {}\n", o.out);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(parse(argc, argv));
  } catch (const std::exception& e) {
    std::fprintf(stderr, "kvq_calibrate: %s\n", e.what());
    return 1;
  }
}

#include "runtime/kv_calibration.hpp"

#include <fmt/format.h>

#include <cmath>
#include <fstream>
#include <sstream>

#include "kvq/core/error.hpp"

namespace kvq::llama {
namespace {

constexpr const char* magic = "kvq-kv-calibration";
constexpr int version = 1;

[[noreturn]] void malformed(const std::string& path, int line, const std::string& what) {
  throw Error(ErrorCode::io_error, fmt::format("calibration file {}:{}: {}", path, line, what));
}

// The checks a codebook must pass before a policy may use it (CodebookPolicy needs ascending centroids; a NaN would
// make every nearest-centroid search pick index 0 silently).
std::string codebook_problem(const std::vector<float>& centroids, int bits) {
  if (static_cast<int>(centroids.size()) != (1 << bits))
    return fmt::format("{} centroids for {} bits, expected {}", centroids.size(), bits, 1 << bits);
  for (std::size_t i = 0; i < centroids.size(); ++i) {
    if (!std::isfinite(centroids[i])) return fmt::format("centroid {} is not finite ({})", i, centroids[i]);
    if (centroids[i] < -1.0f || centroids[i] > 1.0f)
      return fmt::format("centroid {} = {} is outside the normalised range [-1, 1]", i, centroids[i]);
    if (i > 0 && !(centroids[i] > centroids[i - 1]))
      return fmt::format("centroids are not strictly ascending at {} ({} after {})", i, centroids[i],
                         centroids[i - 1]);
  }
  return {};
}

void validate(const KvCalibration& c, const std::string& path) {
  if (c.layers <= 0) malformed(path, 0, "no positive `layers` record");
  if (c.head_dim <= 0) malformed(path, 0, "no positive `head_dim` record");
  if (c.codebooks.empty()) malformed(path, 0, "no codebooks");
  for (const auto& [bits, layers] : c.codebooks) {
    if (static_cast<int>(layers.size()) != c.layers)
      malformed(path, 0, fmt::format("{}-bit codebooks for {} layers, the file says {}", bits, layers.size(), c.layers));
    for (std::size_t layer = 0; layer < layers.size(); ++layer)
      for (const auto* side : {&layers[layer].key, &layers[layer].value}) {
        const char* name = side == &layers[layer].key ? "key" : "value";
        if (side->empty()) malformed(path, 0, fmt::format("layer {} has no {}-bit {} codebook", layer, bits, name));
        if (const std::string problem = codebook_problem(*side, bits); !problem.empty())
          malformed(path, 0, fmt::format("layer {} {}-bit {} codebook: {}", layer, bits, name, problem));
      }
  }
}

}  // namespace

const std::vector<LayerCodebooks>& KvCalibration::codebooks_for(int bits, int model_layers, int model_head_dim,
                                                                 const std::string& preset) const {
  require(layers == model_layers, ErrorCode::invalid_argument,
          fmt::format("calibration for {} layers, the model has {} ({})", layers, model_layers, model));
  require(head_dim == model_head_dim, ErrorCode::invalid_argument,
          fmt::format("calibration for head_dim {}, the model has {} ({})", head_dim, model_head_dim, model));
  const auto found = codebooks.find(bits);
  require(found != codebooks.end(), ErrorCode::invalid_argument,
          fmt::format("preset {} needs {}-bit codebooks; the calibration has none", preset, bits));
  return found->second;
}

KvCalibration read_kv_calibration(const std::string& path) {
  std::ifstream in(path);
  require(in.good(), ErrorCode::io_error, "cannot open calibration file " + path);
  KvCalibration c;
  std::string text;
  int line = 0;
  bool seen_magic = false;
  while (std::getline(in, text)) {
    ++line;
    if (text.empty() || text[0] == '#') continue;
    std::istringstream fields(text);
    std::string record;
    fields >> record;
    const auto rest = [&] {
      std::string value;
      std::getline(fields >> std::ws, value);
      return value;
    };
    const auto integer = [&](const char* what) {
      long long value = 0;
      if (!(fields >> value) || value < 0 || value > 1 << 20)
        malformed(path, line, fmt::format("`{}` needs a non-negative integer", what));
      return static_cast<int>(value);
    };
    if (!seen_magic) {
      if (record != magic) malformed(path, line, fmt::format("not a kvq calibration file (expected \"{}\")", magic));
      if (integer("version") != version) malformed(path, line, fmt::format("unsupported version (this reads {})", version));
      seen_magic = true;
    } else if (record == "model") {
      c.model = rest();
    } else if (record == "source") {
      c.source = rest();
    } else if (record == "weighting") {
      c.weighting = rest();
    } else if (record == "layers") {
      c.layers = integer("layers");
    } else if (record == "head_dim") {
      c.head_dim = integer("head_dim");
    } else if (record == "codebook") {
      if (c.layers <= 0) malformed(path, line, "a codebook before the `layers` record");
      const int bits = integer("codebook bits");
      if (bits < 1 || bits > 8) malformed(path, line, fmt::format("codebook of {} bits (1 to 8 supported)", bits));
      std::string side;
      fields >> side;
      if (side != "key" && side != "value") malformed(path, line, "a codebook is `key` or `value`, got \"" + side + "\"");
      const int layer = integer("codebook layer");
      if (layer >= c.layers) malformed(path, line, fmt::format("layer {} is outside [0, {})", layer, c.layers));
      std::vector<float> centroids;
      std::string number;
      while (fields >> number) {
        char* end = nullptr;
        const float value = std::strtof(number.c_str(), &end);
        if (end != number.c_str() + number.size()) malformed(path, line, "\"" + number + "\" is not a number");
        centroids.push_back(value);
      }
      if (const std::string problem = codebook_problem(centroids, bits); !problem.empty())
        malformed(path, line, problem);
      auto& layers = c.codebooks[bits];
      layers.resize(static_cast<std::size_t>(c.layers));
      auto& slot = side == "key" ? layers[static_cast<std::size_t>(layer)].key : layers[static_cast<std::size_t>(layer)].value;
      if (!slot.empty()) malformed(path, line, fmt::format("a second {}-bit {} codebook for layer {}", bits, side, layer));
      slot = std::move(centroids);
    } else {
      malformed(path, line, "unknown record \"" + record + "\"");
    }
  }
  if (!seen_magic) malformed(path, line, "empty file");
  validate(c, path);
  return c;
}

void write_kv_calibration(const std::string& path, const KvCalibration& c) {
  validate(c, path);
  std::ofstream out(path);
  require(out.good(), ErrorCode::io_error, "cannot write calibration file " + path);
  out << "# KV-cache codebooks for kvq's nuq presets, written by kvq_calibrate (format: docs/quality.md)\n";
  out << magic << ' ' << version << '\n';
  out << "model " << c.model << "\nsource " << c.source << "\nweighting " << c.weighting << '\n';
  out << "layers " << c.layers << "\nhead_dim " << c.head_dim << '\n';
  for (const auto& [bits, layers] : c.codebooks)
    for (std::size_t layer = 0; layer < layers.size(); ++layer)
      for (const auto* side : {&layers[layer].key, &layers[layer].value}) {
        out << "codebook " << bits << (side == &layers[layer].key ? " key " : " value ") << layer;
        for (float centroid : *side) out << ' ' << fmt::format("{:.9g}", centroid);
        out << '\n';
      }
  require(out.good(), ErrorCode::io_error, "writing calibration file " + path + " failed");
}

}  // namespace kvq::llama

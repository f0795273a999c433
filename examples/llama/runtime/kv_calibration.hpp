// Calibrated parameters of the KV presets that take runtime data: per-layer non-uniform codebooks (KVQuant-style
// k-means centroids, computed by kvq_calibrate from a calibration text) for the nuq presets, in a small text file
// that a backend loads instead of the presets' calibration-free defaults (gaussian_codebook).
//
// The file (docs/quality.md#the-calibration-file), one record a line, '#' starts a comment line:
//   kvq-kv-calibration 1                    magic and version
//   model NAME                              what it was computed for (free text, informational)
//   source TEXT                             calibration text and tokens used (free text, informational)
//   weighting NAME                          none | query-energy (free text, informational)
//   layers L                                the model's layer count
//   head_dim D                              the model's head_dim
//   codebook BITS key|value LAYER c_0 ... c_{2^BITS - 1}
// Centroids live in the codebook policy's normalised domain: finite, strictly ascending, inside [-1, 1]. For every
// BITS that appears, every layer has a key and a value codebook. Only codebooks: no preset selects outliers by
// calibrated thresholds (the nuq presets take the largest magnitude of each token), so the file has none.
#pragma once

#include <map>
#include <string>
#include <vector>

namespace kvq::llama {

struct LayerCodebooks {
  std::vector<float> key, value;  // 2^bits ascending centroids each
};

struct KvCalibration {
  std::string model, source, weighting;
  int layers = 0;
  int head_dim = 0;
  std::map<int, std::vector<LayerCodebooks>> codebooks;  // bits -> one entry per layer

  // The codebooks of `bits` for this model, or a kvq::Error naming what does not match (layers, head_dim, bits).
  [[nodiscard]] const std::vector<LayerCodebooks>& codebooks_for(int bits, int model_layers, int model_head_dim,
                                                                 const std::string& preset) const;
};

// kvq::Error(io_error) naming the file and line for anything malformed: bad magic or version, unknown record,
// wrong centroid count, non-finite, unsorted or out-of-range centroids, a layer outside [0, layers), a missing or
// repeated codebook.
KvCalibration read_kv_calibration(const std::string& path);

// Writes `calibration` (validated the same way first); kvq::Error(io_error) if the file cannot be written.
void write_kv_calibration(const std::string& path, const KvCalibration& calibration);

}  // namespace kvq::llama

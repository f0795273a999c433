// What kvq_calibrate collects from a model's keys and values (the CPU backend's KvObserver): per layer, histograms
// of the values a nuq codebook sees, normalised the way the nuq presets' policies normalise them, so that k-means
// over them fits the codebooks those policies use:
//   - the first `sink_tokens` of a sequence are skipped (the cache keeps them in fp16);
//   - per token and KV head, the `outliers` largest magnitudes are taken out (kept exactly by OutlierPolicy) and
//     zeroed, as the dense part the codebook quantizes has them;
//   - keys (pre-RoPE) in per-channel groups of `key_group_tokens` consecutive tokens, values in per-token groups of
//     head_dim, each mapped to [-1, 1] by its midrange and half-range (CodebookPolicy with normalize).
// Keys can be weighted by sensitivity: an error e in key channel c moves a score q.k by q_c e, so key channel c of a
// KV head is weighted by the mean q_c^2 of the query heads that read it, averaged over the channel's RoPE pair
// (RoPE turns a pair's energy between its two channels with the distance). Values are unweighted.
#pragma once

#include <cstdint>
#include <vector>

#include "eval/codebook_kmeans.hpp"
#include "kvq/core/rope.hpp"

namespace kvq::llama {

struct KvStatisticsShape {
  int layers = 0, q_heads = 0, kv_heads = 0, head_dim = 0;
  RopeStyle rope_style = RopeStyle::interleaved;
  int sink_tokens = 1, key_group_tokens = 128, outliers = 1;  // from the nuq preset types
};

class KvStatistics {
 public:
  explicit KvStatistics(const KvStatisticsShape& shape);

  // The observer's arguments (cpu_backend.hpp: KvObserver). A step at position 0 starts a new sequence.
  void observe(int layer, std::int64_t first, std::int64_t count, const float* queries, const float* keys,
               const float* values);

  // Key histogram of a layer, each channel's weighted by its query energy (normalised to mean 1) or not at all.
  [[nodiscard]] NormalizedHistogram key_histogram(int layer, bool weighted) const;
  [[nodiscard]] const NormalizedHistogram& value_histogram(int layer) const {
    return values_[static_cast<std::size_t>(layer)];
  }
  [[nodiscard]] std::int64_t key_groups() const { return key_groups_; }  // per layer and KV head

 private:
  // Zeroes the `outliers` largest |x| of a row; marks them in `taken`.
  void take_outliers(float* row, std::vector<char>& taken) const;

  KvStatisticsShape shape_;
  std::vector<NormalizedHistogram> keys_;   // [layer][kv head][channel]
  std::vector<NormalizedHistogram> values_;  // [layer]
  std::vector<double> query_energy_;         // [layer][kv head][channel]: sum of q^2
  std::vector<std::int64_t> query_rows_;     // [layer]
  std::vector<std::vector<float>> pending_;  // [layer][kv head]: key rows of the group being filled
  std::vector<std::vector<char>> pending_taken_;
  std::int64_t key_groups_ = 0;
};

}  // namespace kvq::llama

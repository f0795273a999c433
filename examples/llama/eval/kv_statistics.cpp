#include "eval/kv_statistics.hpp"

#include <algorithm>
#include <cmath>

namespace kvq::llama {

KvStatistics::KvStatistics(const KvStatisticsShape& shape) : shape_(shape) {
  const auto layers = static_cast<std::size_t>(shape.layers), heads = static_cast<std::size_t>(shape.kv_heads);
  keys_.assign(layers * heads * static_cast<std::size_t>(shape.head_dim), NormalizedHistogram{});
  values_.assign(layers, NormalizedHistogram{});
  query_energy_.assign(layers * heads * static_cast<std::size_t>(shape.head_dim), 0.0);
  query_rows_.assign(layers, 0);
  pending_.assign(layers * heads, {});
  pending_taken_.assign(layers * heads, {});
}

void KvStatistics::take_outliers(float* row, std::vector<char>& taken) const {
  const int d = shape_.head_dim;
  for (int k = 0; k < shape_.outliers; ++k) {
    int best = -1;
    for (int c = 0; c < d; ++c)  // largest magnitude, ties to the lower channel
      if (!taken[static_cast<std::size_t>(c)] && (best < 0 || std::abs(row[c]) > std::abs(row[best]))) best = c;
    taken[static_cast<std::size_t>(best)] = 1;
    row[best] = 0.0f;
  }
}

void KvStatistics::observe(int layer, std::int64_t first, std::int64_t count, const float* queries, const float* keys,
                           const float* values) {
  const int d = shape_.head_dim, heads = shape_.kv_heads, group = shape_.q_heads / shape_.kv_heads;
  const auto l = static_cast<std::size_t>(layer);
  if (first == 0)
    for (int h = 0; h < heads; ++h) {  // a new sequence: an unfinished key group of the last one is dropped
      pending_[l * heads + h].clear();
      pending_taken_[l * heads + h].clear();
    }
  std::vector<float> row(static_cast<std::size_t>(d));
  std::vector<char> taken(static_cast<std::size_t>(d));
  for (std::int64_t t = 0; t < count; ++t) {
    if (first + t < shape_.sink_tokens) continue;
    for (int h = 0; h < heads; ++h) {
      for (int g = 0; g < group; ++g)
        for (int c = 0; c < d; ++c) {
          const float q = queries[(t * shape_.q_heads + h * group + g) * d + c];
          query_energy_[(l * heads + h) * d + c] += static_cast<double>(q) * q;
        }
      // Values: one per-token group of head_dim.
      std::copy_n(values + (t * heads + h) * d, d, row.begin());
      std::fill(taken.begin(), taken.end(), 0);
      take_outliers(row.data(), taken);
      const auto [low, high] = std::minmax_element(row.begin(), row.end());
      const float offset = 0.5f * (*high + *low), scale = std::max(*high - offset, offset - *low);
      if (scale > 0)
        for (int c = 0; c < d; ++c)
          if (!taken[static_cast<std::size_t>(c)]) values_[l].add((row[static_cast<std::size_t>(c)] - offset) / scale);
      // Keys: rows wait until a per-channel group is complete.
      std::copy_n(keys + (t * heads + h) * d, d, row.begin());
      std::fill(taken.begin(), taken.end(), 0);
      take_outliers(row.data(), taken);
      auto& pending = pending_[l * heads + h];
      auto& pending_taken = pending_taken_[l * heads + h];
      pending.insert(pending.end(), row.begin(), row.end());
      pending_taken.insert(pending_taken.end(), taken.begin(), taken.end());
      if (static_cast<int>(pending.size()) == shape_.key_group_tokens * d) {
        for (int c = 0; c < d; ++c) {
          float lo = INFINITY, hi = -INFINITY;
          for (int r = 0; r < shape_.key_group_tokens; ++r) {
            lo = std::min(lo, pending[static_cast<std::size_t>(r * d + c)]);
            hi = std::max(hi, pending[static_cast<std::size_t>(r * d + c)]);
          }
          const float mid = 0.5f * (hi + lo), half = std::max(hi - mid, mid - lo);
          if (!(half > 0)) continue;
          for (int r = 0; r < shape_.key_group_tokens; ++r)
            if (!pending_taken[static_cast<std::size_t>(r * d + c)])
              keys_[(l * heads + h) * d + c].add((pending[static_cast<std::size_t>(r * d + c)] - mid) / half);
        }
        if (layer == 0 && h == 0) ++key_groups_;
        pending.clear();
        pending_taken.clear();
      }
    }
    ++query_rows_[l];
  }
}

NormalizedHistogram KvStatistics::key_histogram(int layer, bool weighted) const {
  const int d = shape_.head_dim, heads = shape_.kv_heads;
  const auto l = static_cast<std::size_t>(layer);
  std::vector<double> weight(static_cast<std::size_t>(heads * d), 1.0);
  if (weighted) {
    for (int h = 0; h < heads; ++h)
      for (int c = 0; c < d; ++c) {
        // The channel's RoPE partner: adjacent (interleaved, GGUF) or half a head away (half_split, Hugging Face).
        const int partner = shape_.rope_style == RopeStyle::interleaved ? (c ^ 1) : (c + d / 2) % d;
        weight[static_cast<std::size_t>(h * d + c)] =
            0.5 * (query_energy_[(l * heads + h) * d + c] + query_energy_[(l * heads + h) * d + partner]);
      }
    double mean = 0;
    for (double w : weight) mean += w / static_cast<double>(weight.size());
    for (double& w : weight) w = mean > 0 ? w / mean : 1.0;
  }
  NormalizedHistogram result;
  for (int h = 0; h < heads; ++h)
    for (int c = 0; c < d; ++c) result.add(keys_[(l * heads + h) * d + c], weight[static_cast<std::size_t>(h * d + c)]);
  return result;
}

}  // namespace kvq::llama

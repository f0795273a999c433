// Host storage for the attention-driven importance of every token of a cache (kvq/attention/importance.hpp): one
// float array per layer, [max_sequences][kv_heads][capacity], that the decode attention adds to through
// view(layer), and that eviction compacts together with the cache (retain() with the same TokenSelection), so
// row entry t is always the importance of the token the cache holds at position t.
#pragma once

#include <algorithm>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "kvq/attention/importance.hpp"
#include "kvq/cache/token_selection.hpp"
#include "kvq/core/error.hpp"

namespace kvq {

class ImportanceScores {
 public:
  // `capacity`: tokens per (sequence, KV head), at least the cache's max_tokens_per_sequence.
  ImportanceScores(int layers, int max_sequences, int kv_heads, std::int64_t capacity)
      : layers_(layers), max_sequences_(max_sequences), kv_heads_(kv_heads), capacity_(capacity) {
    require(layers > 0 && max_sequences > 0 && kv_heads > 0 && capacity > 0, ErrorCode::invalid_argument,
            "importance scores: layers, max_sequences, kv_heads and capacity must be > 0");
    scores_.assign(static_cast<std::size_t>(layers), std::vector<float>(static_cast<std::size_t>(
                                                          std::int64_t{max_sequences} * kv_heads * capacity), 0.0f));
  }

  [[nodiscard]] int layers() const { return layers_; }
  [[nodiscard]] int kv_heads() const { return kv_heads_; }
  [[nodiscard]] std::int64_t capacity() const { return capacity_; }

  // What decode attention adds to for layer `layer` (all sequences).
  [[nodiscard]] ImportanceView view(int layer) {
    check(layer, 0, 0);
    return {scores_[static_cast<std::size_t>(layer)].data(), std::int64_t{kv_heads_} * capacity_, capacity_};
  }

  [[nodiscard]] std::span<float> row(int layer, int sequence, int head) {
    check(layer, sequence, head);
    return {scores_[static_cast<std::size_t>(layer)].data() + offset(sequence, head), static_cast<std::size_t>(capacity_)};
  }
  [[nodiscard]] std::span<const float> row(int layer, int sequence, int head) const {
    check(layer, sequence, head);
    return {scores_[static_cast<std::size_t>(layer)].data() + offset(sequence, head), static_cast<std::size_t>(capacity_)};
  }

  // Zeroes every row of a sequence (a new sequence, or the start of a SnapKV observation window).
  void clear(int sequence) {
    check(0, sequence, 0);
    for (int layer = 0; layer < layers_; ++layer)
      for (int head = 0; head < kv_heads_; ++head) std::ranges::fill(row(layer, sequence, head), 0.0f);
  }

  // Zeroes entries at and past `length` (after a truncate: those tokens are gone).
  void truncate(int sequence, std::int64_t length) {
    require(length >= 0 && length <= capacity_, ErrorCode::invalid_argument,
            "importance scores: cannot truncate to " + std::to_string(length) + " tokens");
    for (int layer = 0; layer < layers_; ++layer)
      for (int head = 0; head < kv_heads_; ++head) {
        const std::span<float> r = row(layer, sequence, head);
        std::fill(r.begin() + length, r.end(), 0.0f);
      }
  }

  // The rows of `sequence` after the cache's retain(sequence, keep): entry j becomes the old entry keep.row()[j],
  // entries past the kept count are zeroed. Validates like the cache (the sequence had `length` tokens).
  void retain(int sequence, const TokenSelection& keep, std::int64_t length) {
    require(length <= capacity_, ErrorCode::invalid_argument,
            "importance scores: a sequence of " + std::to_string(length) + " tokens exceeds the capacity " +
                std::to_string(capacity_));
    keep.validate(layers_, kv_heads_, length);
    check(0, sequence, 0);
    for (int layer = 0; layer < layers_; ++layer)
      for (int head = 0; head < kv_heads_; ++head) {
        const std::span<float> r = row(layer, sequence, head);
        const auto kept = keep.row(layer, head);
        // Ascending rows: kept[j] >= j, so copying forward never reads an entry already overwritten.
        for (std::size_t j = 0; j < kept.size(); ++j) r[j] = r[static_cast<std::size_t>(kept[j])];
        std::fill(r.begin() + static_cast<std::ptrdiff_t>(kept.size()), r.end(), 0.0f);
      }
  }

 private:
  void check(int layer, int sequence, int head) const {
    require(layer >= 0 && layer < layers_ && sequence >= 0 && sequence < max_sequences_ && head >= 0 && head < kv_heads_,
            ErrorCode::invalid_argument,
            "importance scores: layer " + std::to_string(layer) + ", sequence " + std::to_string(sequence) + ", head " +
                std::to_string(head) + " is outside " + std::to_string(layers_) + " x " +
                std::to_string(max_sequences_) + " x " + std::to_string(kv_heads_));
  }
  [[nodiscard]] std::size_t offset(int sequence, int head) const {
    return static_cast<std::size_t>((std::int64_t{sequence} * kv_heads_ + head) * capacity_);
  }

  int layers_, max_sequences_, kv_heads_;
  std::int64_t capacity_;
  std::vector<std::vector<float>> scores_;
};

}  // namespace kvq

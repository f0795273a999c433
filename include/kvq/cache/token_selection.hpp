// Which tokens of one sequence an eviction keeps: for every layer and KV head, `kept` token indices in ascending
// order. Rows may differ between layers and heads (H2O and SnapKV select per head), but every row keeps the same
// number of tokens: a sequence has one length for all its layers and heads, so that the page table, the fp16
// window rule and the position of the next token stay shared by the whole cache (docs/importance.md).
#pragma once

#include <algorithm>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "kvq/core/error.hpp"

namespace kvq {

class TokenSelection {
 public:
  // Every row starts as tokens 0 .. kept-1; fill rows with row().
  TokenSelection(int layers, int kv_heads, std::int64_t kept) : layers_(layers), kv_heads_(kv_heads), kept_(kept) {
    require(layers > 0 && kv_heads > 0 && kept >= 0, ErrorCode::invalid_argument,
            "token selection: needs layers > 0, kv_heads > 0 and kept >= 0, got " + std::to_string(layers) + ", " +
                std::to_string(kv_heads) + ", " + std::to_string(kept));
    tokens_.resize(static_cast<std::size_t>(layers) * static_cast<std::size_t>(kv_heads) * static_cast<std::size_t>(kept));
    for (std::size_t i = 0; i < tokens_.size(); ++i) tokens_[i] = static_cast<std::int64_t>(i % static_cast<std::size_t>(kept));
  }

  // The same tokens in every layer and head (StreamingLLM).
  static TokenSelection everywhere(int layers, int kv_heads, std::span<const std::int64_t> tokens) {
    TokenSelection selection(layers, kv_heads, static_cast<std::int64_t>(tokens.size()));
    for (int layer = 0; layer < layers; ++layer)
      for (int head = 0; head < kv_heads; ++head) {
        const std::span<std::int64_t> row = selection.row(layer, head);
        std::copy(tokens.begin(), tokens.end(), row.begin());
      }
    return selection;
  }

  [[nodiscard]] int layers() const { return layers_; }
  [[nodiscard]] int kv_heads() const { return kv_heads_; }
  [[nodiscard]] std::int64_t kept() const { return kept_; }

  [[nodiscard]] std::span<std::int64_t> row(int layer, int head) {
    check(layer, head);
    return {tokens_.data() + offset(layer, head), static_cast<std::size_t>(kept_)};
  }
  [[nodiscard]] std::span<const std::int64_t> row(int layer, int head) const {
    check(layer, head);
    return {tokens_.data() + offset(layer, head), static_cast<std::size_t>(kept_)};
  }

  // kvq::Error naming the first problem unless this selection fits a sequence of `length` tokens in a cache of
  // `layers` x `kv_heads`: every row strictly ascending inside [0, length).
  void validate(int layers, int kv_heads, std::int64_t length) const {
    require(layers_ == layers && kv_heads_ == kv_heads, ErrorCode::invalid_argument,
            "evict: the selection is for " + std::to_string(layers_) + " layers x " + std::to_string(kv_heads_) +
                " KV heads, the cache has " + std::to_string(layers) + " x " + std::to_string(kv_heads));
    require(kept_ <= length, ErrorCode::invalid_argument,
            "evict: the selection keeps " + std::to_string(kept_) + " tokens of a sequence of " + std::to_string(length));
    for (int layer = 0; layer < layers_; ++layer)
      for (int head = 0; head < kv_heads_; ++head) {
        const auto r = row(layer, head);
        for (std::size_t i = 0; i < r.size(); ++i) {
          require(r[i] >= 0 && r[i] < length, ErrorCode::invalid_argument,
                  "evict: layer " + std::to_string(layer) + " head " + std::to_string(head) + " keeps token " +
                      std::to_string(r[i]) + ", which is not in the sequence of " + std::to_string(length) + " tokens");
          require(i == 0 || r[i] > r[i - 1], ErrorCode::invalid_argument,
                  "evict: layer " + std::to_string(layer) + " head " + std::to_string(head) +
                      " keeps tokens out of order or twice (" + std::to_string(r[i - 1]) + " then " +
                      std::to_string(r[i]) + "); rows must be strictly ascending");
        }
      }
  }

 private:
  void check(int layer, int head) const {
    require(layer >= 0 && layer < layers_ && head >= 0 && head < kv_heads_, ErrorCode::invalid_argument,
            "token selection: layer " + std::to_string(layer) + " head " + std::to_string(head) + " is outside " +
                std::to_string(layers_) + " x " + std::to_string(kv_heads_));
  }
  [[nodiscard]] std::size_t offset(int layer, int head) const {
    return (static_cast<std::size_t>(layer) * static_cast<std::size_t>(kv_heads_) + static_cast<std::size_t>(head)) *
           static_cast<std::size_t>(kept_);
  }

  int layers_, kv_heads_;
  std::int64_t kept_;
  std::vector<std::int64_t> tokens_;
};

}  // namespace kvq

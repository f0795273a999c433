// Runtime shape of a paged quantized KV cache. Validated once, at construction, with an error naming the field.
#pragma once

#include <algorithm>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "kvq/core/error.hpp"
#include "kvq/core/rope.hpp"

namespace kvq {

// Where keys are stored relative to RoPE.
enum class KeyPosition {
  post_rope,  // the cache rotates keys at append time (fused into the write); attention reads them as they are
  pre_rope,   // keys are stored as projected; attention applies RoPE at read time from the token's position
};

struct CacheConfig {
  int layers = 32;
  int kv_heads = 8;
  int max_sequences = 1;                       // sequence slots, addressed 0 .. max_sequences-1
  std::int64_t max_tokens_per_sequence = 131072;
  int page_tokens = 256;                       // quantized tokens per page; a multiple of the tiers' flush unit
  int pool_pages = 0;                          // pages shared by all sequences; 0 = every sequence at its maximum
  int sink_tokens = 0;                         // first tokens of a sequence kept in fp16 (attention sinks)
  int window_tokens = 0;                       // most recent tokens kept in fp16 (residual window)
  KeyPosition key_position = KeyPosition::post_rope;
  RopeConfig rope{};
  std::vector<int> layer_tier{};               // tier of each layer; empty = tier 0 everywhere
};

namespace detail {

inline void validate_cache_config(const CacheConfig& c, int tier_count, int flush_tokens) {
  auto positive = [](auto value, const char* name) {
    require(value > 0, ErrorCode::invalid_argument,
            std::string("cache config: ") + name + " must be > 0, got " + std::to_string(value));
  };
  positive(c.layers, "layers");
  positive(c.kv_heads, "kv_heads");
  positive(c.max_sequences, "max_sequences");
  positive(c.max_tokens_per_sequence, "max_tokens_per_sequence");
  positive(c.page_tokens, "page_tokens");
  require(c.pool_pages >= 0, ErrorCode::invalid_argument,
          "cache config: pool_pages must be >= 0, got " + std::to_string(c.pool_pages));
  require(c.sink_tokens >= 0 && c.window_tokens >= 0, ErrorCode::invalid_argument,
          "cache config: sink_tokens and window_tokens must be >= 0");
  require(c.page_tokens % flush_tokens == 0, ErrorCode::invalid_argument,
          "cache config: page_tokens " + std::to_string(c.page_tokens) + " must be a multiple of " +
              std::to_string(flush_tokens) + ", the tokens its policies quantize together");
  require(c.layer_tier.empty() || static_cast<int>(c.layer_tier.size()) == c.layers, ErrorCode::invalid_argument,
          "cache config: layer_tier has " + std::to_string(c.layer_tier.size()) + " entries for " +
              std::to_string(c.layers) + " layers");
  for (std::size_t l = 0; l < c.layer_tier.size(); ++l)
    require(c.layer_tier[l] >= 0 && c.layer_tier[l] < tier_count, ErrorCode::invalid_argument,
            "cache config: layer_tier[" + std::to_string(l) + "] = " + std::to_string(c.layer_tier[l]) +
                " is not a tier index below " + std::to_string(tier_count));
  require(c.max_tokens_per_sequence <= (std::int64_t{1} << 40), ErrorCode::invalid_argument,
          "cache config: max_tokens_per_sequence " + std::to_string(c.max_tokens_per_sequence) + " is above 2^40");
  // Page ids and page-table rows are 32-bit.
  const std::int64_t pages_per_sequence =
      (std::max<std::int64_t>(0, c.max_tokens_per_sequence - c.sink_tokens) + c.page_tokens - 1) / c.page_tokens;
  require(pages_per_sequence <= std::numeric_limits<std::int32_t>::max() / c.max_sequences, ErrorCode::invalid_argument,
          "cache config: " + std::to_string(c.max_sequences) + " sequences of " + std::to_string(pages_per_sequence) +
              " pages each exceed 2^31 pages; use larger pages or fewer tokens");
}

}  // namespace detail
}  // namespace kvq

// What a chunked-prefill attention call computes: for each of `batch` sequences, one chunk of query tokens (the
// sequence's last tokens, already appended to the cache) attending causally to everything before and inside it.
// Chunks of one call may have different lengths; `max_chunk_tokens` bounds them and sizes the grid.
#pragma once

#include <cstdint>
#include <string>

#include "kvq/core/error.hpp"

namespace kvq {

struct PrefillShape {
  int batch = 1;                      // sequences, one chunk each
  int q_heads = 32;
  int kv_heads = 8;
  int head_dim = 128;
  std::int64_t max_chunk_tokens = 0;  // the longest chunk of the call
};

namespace detail {
inline void check_prefill_shape(const PrefillShape& s) {
  require(s.batch >= 0 && s.kv_heads > 0 && s.q_heads > 0 && s.q_heads % s.kv_heads == 0, ErrorCode::invalid_argument,
          "prefill attention: batch " + std::to_string(s.batch) + ", q_heads " + std::to_string(s.q_heads) +
              ", kv_heads " + std::to_string(s.kv_heads) + ": q_heads must be a positive multiple of kv_heads");
  require(s.max_chunk_tokens >= 0 && s.max_chunk_tokens <= (std::int64_t{1} << 24), ErrorCode::invalid_argument,
          "prefill attention: max_chunk_tokens " + std::to_string(s.max_chunk_tokens) + " is outside [0, 2^24]");
}
}  // namespace detail

}  // namespace kvq

// Chunked-prefill attention on the host over a CacheLayerView with host pointers: the oracle of the device
// kernel (kvq/cuda/prefill_attention.cuh) and a CPU fallback. Semantics (docs/attention.md, "Prefill"):
// the chunk's `count` tokens are the last tokens of the sequence, already appended; query i sits at position
// past + i (past = length - count) and attends tokens [0, past + i]. Tokens before the chunk are read as the cache
// stores them now (what the next decode step reads); the chunk's own tokens come from `chunk_keys` and
// `chunk_values` (the tensors given to the cache's write: keys before RoPE) when given, read as the fp16 window
// would hold them (RoPE for their positions; post-RoPE caches round the rotated key to fp16, as write() does),
// else from the cache as stored. Products, softmax and sums in double.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "kvq/attention/decode_plan.hpp"
#include "kvq/cache/cache_state.hpp"
#include "kvq/cache/layer_view.hpp"
#include "kvq/core/error.hpp"
#include "kvq/core/float16.hpp"
#include "kvq/core/rope.hpp"
#include "kvq/host/decode_attention.hpp"

namespace kvq {

// query: [count][q_heads][d] floats; chunk_keys, chunk_values: [count][kv_heads][d] floats or both null;
// rows: the query tokens (indices into the chunk) to compute, out: [rows.size()][q_heads][d].
template <class Tier>
void prefill_attention_reference(const CacheLayerView& v, const TierParams<Tier>& params,
                                 const RopeTable<Tier::KeyPolicy::head_dim>& rope, RopeStyle style, int sequence,
                                 std::int64_t count, std::span<const float> query, int q_heads, const float* chunk_keys,
                                 const float* chunk_values, const AttentionParams& attention,
                                 std::span<const std::int64_t> rows, std::span<double> out) {
  constexpr int d = Tier::KeyPolicy::head_dim;
  require(sequence >= 0 && sequence < v.max_sequences, ErrorCode::invalid_argument,
          "prefill attention: sequence " + std::to_string(sequence) + " is outside the cache");
  require(q_heads > 0 && q_heads % v.kv_heads == 0, ErrorCode::invalid_argument,
          "prefill attention: q_heads must be a positive multiple of kv_heads");
  const std::int64_t length = v.lengths[sequence];
  require(count >= 0 && count <= length, ErrorCode::invalid_argument,
          "prefill attention: a chunk of " + std::to_string(count) + " tokens is not inside the " +
              std::to_string(length) + " tokens of sequence " + std::to_string(sequence));
  require(query.size() == static_cast<std::size_t>(count) * q_heads * d &&
              out.size() == rows.size() * static_cast<std::size_t>(q_heads) * d,
          ErrorCode::invalid_argument, "prefill attention: query must be [count][q_heads][d], out [rows][q_heads][d]");
  require((chunk_keys == nullptr) == (chunk_values == nullptr), ErrorCode::invalid_argument,
          "prefill attention: give both chunk keys and values, or neither");
  for (const std::int64_t r : rows)
    require(r >= 0 && r < count, ErrorCode::invalid_argument, "prefill attention: row " + std::to_string(r) + " is outside the chunk");
  const std::int64_t past = length - count;
  const int group = q_heads / v.kv_heads;
  const double scale = attention.softmax_scale != 0.0f ? attention.softmax_scale : 1.0 / std::sqrt(static_cast<double>(d));
  std::vector<float> keys(static_cast<std::size_t>(length) * d), values(keys.size());
  std::vector<double> logits(static_cast<std::size_t>(length));
  for (int kv = 0; kv < v.kv_heads; ++kv) {
    for (std::int64_t t = 0; t < length; ++t) {
      float* key = keys.data() + t * d;
      float* value = values.data() + t * d;
      if (chunk_keys != nullptr && t >= past) {
        const std::size_t row = (static_cast<std::size_t>(t - past) * v.kv_heads + kv) * d;
        std::copy(chunk_keys + row, chunk_keys + row + d, key);
        std::copy(chunk_values + row, chunk_values + row + d, value);
        // write() takes keys before RoPE; read as the fp16 window holds them (post-RoPE: rotated, then fp16).
        apply_rope<d>(key, t, rope, style);
        if (v.key_position == KeyPosition::post_rope)
          for (int c = 0; c < d; ++c) key[c] = to_float(to_f16_saturating(key[c]));
      } else {
        read_attention_token<Tier>(v, params, rope, style, sequence, t, kv, key, value);
      }
    }
    for (std::size_t r = 0; r < rows.size(); ++r)
      for (int g = 0; g < group; ++g) {
        const int h = kv * group + g;
        attend_reference(query.data() + (static_cast<std::size_t>(rows[r]) * q_heads + h) * d, keys.data(),
                         values.data(), past + rows[r] + 1, d, scale, attention.soft_cap, logits.data(),
                         out.data() + (r * q_heads + h) * d);
      }
  }
}

}  // namespace kvq

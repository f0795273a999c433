// The CPU backend: the model on the host, its keys and values in a kvq::HostPagedKVCache, attention read back
// from that cache by kvq's host attention. So every token the model attends to has gone through the chosen
// quantization policy exactly as a GPU cache would store it.
//
// One forward() step: reserve the tokens in the cache once, then per layer: RMSNorm, q/k/v projections (BLAS),
// RoPE on the queries (kvq::apply_rope; the cache rotates the keys itself as it stores them, KeyPosition::post_rope),
// cache.write(keys, values), attention, output projection, RMSNorm, SwiGLU MLP. Attention for one token is
// kvq::decode_attention_reference; for a prefill chunk it is causal attention over the same cache reads
// (kvq::read_attention_token), each query seeing the tokens up to its own position, in double like the reference.
#pragma once

#include "kvq/cache/layer_view.hpp"
#include "kvq/core/rope.hpp"
#include "runtime/backend.hpp"

namespace kvq::llama {

// Causal attention of `count` queries at positions [first, first + count) of sequence 0 over a host cache layer
// that already holds them: out[i] attends to tokens [0, first + i]. query/out: [count][q_heads][head_dim].
// Exposed for the test that checks it against kvq::decode_attention_reference token by token.
template <class Tier>
void prefill_attention(const CacheLayerView& view, const RopeTable<Tier::KeyPolicy::head_dim>& rope, RopeStyle style,
                       std::int64_t first, std::int64_t count, const float* query, int q_heads, float* out);

}  // namespace kvq::llama

#include "runtime/prefill_attention.hpp"

// The CPU backend: the model on the host, its keys and values in a kvq::HostPagedKVCache, attention read back
// from that cache by kvq's host attention. So every token the model attends to has gone through the chosen
// quantization policy exactly as a GPU cache would store it.
//
// One forward() step: reserve the tokens in the cache once, then per layer: RMSNorm, q/k/v projections (BLAS),
// RoPE on the queries (kvq::apply_rope; the cache rotates the keys itself as it stores them, KeyPosition::post_rope),
// cache.write(keys, values), attention, output projection, RMSNorm, SwiGLU MLP. Attention for one token is
// kvq::decode_attention_reference; for a prefill chunk it is causal attention over the same cache reads
// (prefill_attention.hpp), each query seeing the tokens up to its own position, its products through BLAS.
#pragma once

#include <memory>

#include "runtime/backend.hpp"

namespace kvq::llama {

// kvq::Error(invalid_argument) for an unknown KV format or a head_dim the cache is not compiled for. The model
// must outlive the backend (weights are not copied).
std::unique_ptr<Backend> make_cpu_backend(const LlamaModel& model, const KvCacheOptions& options);

}  // namespace kvq::llama

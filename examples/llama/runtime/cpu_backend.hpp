// The CPU backend: the model on the host, its keys and values in a kvq::HostPagedKVCache, attention read back
// from that cache by kvq's host attention. So every token the model attends to has gone through the chosen
// quantization policy exactly as a GPU cache would store it.
//
// One forward() step: reserve the tokens in the cache once, then per layer: RMSNorm, q/k/v projections (BLAS),
// RoPE on the queries (kvq::apply_rope; the cache rotates the keys itself as it stores them, KeyPosition::post_rope),
// cache.write(keys, values), attention, output projection, RMSNorm, SwiGLU MLP. Attention for one token is
// kvq::decode_attention_reference; for a prefill chunk it is causal attention over the same cache reads
// (prefill_attention.hpp), each query seeing the tokens up to its own position, its products through BLAS.
//
// How a chunk sees the cache: the whole chunk is written first, then every query of the chunk attends to the cache
// as it stands after that write. Tokens whose storage does not depend on when later tokens arrive (sinks, and every
// token of a per-token preset without a window: fp16, int8, fp8-e4m3, q4_0, rot*) read exactly as in token-by-token
// decode. With an fp16 window (kivi-*) or per-channel key groups (nuq*: groups of 128 tokens wait in fp16 until
// complete), a group that the chunk completes is already quantized for the chunk's earlier queries, which in decode
// still read it in fp16. forward() (generation's prefill) accepts that; forward_logits() (scoring) does not: it
// cuts its tokens into steps that end before any flush an earlier query of the step would notice, so every scored
// token sees the cache exactly as token-by-token decode does (the attention arithmetic is float BLAS instead of the
// decode reference's double). A one-token step is decode itself (kvq::decode_attention_reference).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>

#include "runtime/backend.hpp"

namespace kvq::llama {

// kvq::Error(invalid_argument) for an unknown KV format or a head_dim the cache is not compiled for. The model
// must outlive the backend (weights are not copied).
std::unique_ptr<Backend> make_cpu_backend(const LlamaModel& model, const KvCacheOptions& options);

// What calibration (kvq_calibrate) sees of a layer in a step: `count` tokens from position `first`, queries
// [count][q_heads][head_dim] and keys and values [count][kv_heads][head_dim], all before RoPE, as the projections
// produce them (the values are what the cache stores; the keys are what it stores with KeyPosition::pre_rope).
using KvObserver = std::function<void(int layer, std::int64_t first, std::int64_t count, const float* queries,
                                      const float* keys, const float* values)>;

// The same backend, calling `observer` once per layer and step before the keys and values are written.
std::unique_ptr<Backend> make_cpu_backend(const LlamaModel& model, const KvCacheOptions& options, KvObserver observer);

}  // namespace kvq::llama

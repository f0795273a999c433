// The GPU backend: the same Backend as the CPU one (backend.hpp), on one CUDA device. Built only when the example
// is configured with CUDA and cuBLAS (KVQ_LLAMA_HAS_GPU); this header itself needs no CUDA, so main.cpp and the
// tests stay plain C++.
//
// One forward() step, all on one stream, nothing allocated: token ids up, embedding gather (fp16 -> fp32
// residual stream), then per layer: RMSNorm (-> fp16), one fused q/k/v product (cuBLAS, fp16 in, fp32 out and
// accumulate), RoPE on the queries (kvq's rope_channel and the cache's table) and the keys/values to fp16 for
// the cache (which rotates keys itself, KeyPosition::post_rope, as on the CPU), reserve/write into a
// kvq::cuda::PagedKVCache, attention (attend_chunk in gpu_backend.cuh: kvq's decode kernel for one token), the
// output product accumulated into the residual (cuBLAS beta = 1 is the residual add), RMSNorm, one fused
// gate/up product, SwiGLU (-> fp16), the down product accumulated into the residual; then the final RMSNorm of
// the last token, the LM head, and its fp32 logits down to the host.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "runtime/backend.hpp"
#include "runtime/gpu_memory.hpp"

namespace kvq::llama {

struct GpuOptions {
  int max_chunk_tokens = 256;        // the most tokens one forward() takes (the prefill chunk); sizes the buffers
  bool score_every_token = false;    // forward_logits() scores whole steps (kvq_eval): logits for every token of a
                                     // step (max_chunk_tokens x vocabulary fp32) instead of token-by-token decode
  std::int64_t memory_budget = 0;    // bytes; 0 = the device's free memory. Checked before anything is allocated.
  std::uint64_t synthetic_seed = 0;  // weights of make_synthetic_gpu_backend
};

// What a GPU backend reports beyond Backend: its memory plan and what it measured.
class GpuBackend : public Backend {
 public:
  [[nodiscard]] virtual const GpuMemoryPlan& memory_plan() const = 0;
  [[nodiscard]] virtual GpuMemoryUse memory_use() const = 0;
};

// True when a CUDA device can be used (the default for --backend).
bool gpu_available();

// The memory a GPU backend for this model, KV options and chunk size will take, computed without touching the
// device's memory (the KV cache exactly as kvq::cuda::PagedKVCache::required_memory counts it).
GpuMemoryPlan plan_gpu_memory(const LlamaConfig& config, const KvCacheOptions& kv, const GpuOptions& gpu);

// The model's float weights converted to fp16 on the device. kvq::Error: out_of_memory (with the breakdown) when
// the plan exceeds the budget or the device's free memory, invalid_argument for an unknown KV format or a head_dim
// the cache is not compiled for, cuda_error for a failed CUDA or cuBLAS call. The model may go after this returns.
std::unique_ptr<GpuBackend> make_gpu_backend(const LlamaModel& model, const KvCacheOptions& kv,
                                             const GpuOptions& gpu = {});

// Random fp16 weights of `config`'s exact shapes, generated on the device from gpu.synthetic_seed (nothing the
// size of the model is built on the host). For speed and memory measurements, not text.
std::unique_ptr<GpuBackend> make_synthetic_gpu_backend(const LlamaConfig& config, const KvCacheOptions& kv,
                                                       const GpuOptions& gpu = {});

}  // namespace kvq::llama

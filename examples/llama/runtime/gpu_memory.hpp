// What the GPU backend will allocate, computed before anything is (the budget check of --mem-budget), and what it
// measured while it ran. The activation buffers are laid out here, once, and the backend carves exactly this
// layout out of one allocation, so the plan and the allocation cannot drift apart (CUB's two-phase idea).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "kvq/cache/cache_state.hpp"
#include "model/llama_model.hpp"

namespace kvq::llama {

// The step buffers of one backend: byte offsets into one device allocation, each 256-byte aligned.
struct ActivationLayout {
  std::int64_t max_tokens = 0;   // tokens one forward() takes
  std::int64_t max_context = 0;  // tokens the sequence can hold
  std::int64_t logit_rows = 1;   // tokens of a step that get logits: 1 (generation) or max_tokens (scoring)
  // fp32: hidden [tokens][hidden] (residual stream), qkv [tokens][(q + 2 kv) * d], query [tokens][q][d],
  //       gate_up [tokens][2 ffn], logits [logit_rows][vocabulary]
  // fp16: normed [tokens][hidden], keys and values [tokens][kv][d], attention [tokens][q][d], mlp [tokens][ffn]
  // int32: token ids [tokens], the sequence slot [1], the chunk's start and end [2] (prefill attention)
  std::int64_t hidden = 0, qkv = 0, query = 0, gate_up = 0, logits = 0;
  std::int64_t normed = 0, keys = 0, values = 0, attention = 0, mlp = 0;
  std::int64_t token_ids = 0, sequence = 0, chunk_starts = 0;
  // Prefill attention (kvq::cuda::prefill_attention_async) reads the cache in tiles and needs no scratch, so
  // nothing here grows with the context.
  std::int64_t step_bytes = 0;
  [[nodiscard]] std::int64_t total_bytes() const { return step_bytes; }
};

// `max_tokens` per step, a sequence of `max_context` tokens, logits for `logit_rows` tokens of a step.
ActivationLayout activation_layout(const LlamaConfig& config, std::int64_t max_tokens, std::int64_t max_context,
                                   std::int64_t logit_rows = 1);

// The weights on the device, carved out of one allocation the same way: fp16 matrices, row-major [outputs][inputs]
// (q, k and v rows stacked into one matrix, gate and up into another, so each is one product), fp32 RMSNorm weights.
struct WeightLayout {
  struct Layer {
    std::int64_t attention_norm = 0, ffn_norm = 0;  // fp32 [hidden]
    std::int64_t qkv = 0;                           // [(q_heads + 2 kv_heads) d][hidden]
    std::int64_t output = 0;                        // [hidden][q_heads d]
    std::int64_t gate_up = 0;                       // [2 ffn][hidden]
    std::int64_t down = 0;                          // [hidden][ffn]
  };
  std::int64_t embedding = 0;  // [vocabulary][hidden]
  std::int64_t lm_head = 0;    // [vocabulary][hidden]; == embedding when tied
  std::int64_t output_norm = 0;
  std::vector<Layer> layers;
  std::int64_t total_bytes = 0;
};
WeightLayout weight_layout(const LlamaConfig& config);

// Bytes of one decode workspace that serves every plan kvq::cuda::plan_decode can make for one query token of
// this model: decode_plan.hpp's layout (fp32 partials, log-sum-exps, arrival counters) at decode_max_splits.
std::int64_t decode_workspace_bound(const LlamaConfig& config);

struct GpuMemoryPlan {
  std::int64_t weights = 0;
  CacheMemory kv;         // kvq::cuda::PagedKVCache::required_memory of the cache the backend builds
  std::string kv_format;  // "int8 x30" etc.
  ActivationLayout activations;
  std::int64_t decode_workspace = 0;  // split-KV partials, sized for the most splits any plan can take
  std::int64_t cublas_workspace = 0;  // given to cuBLAS with cublasSetWorkspace, so it allocates none of its own
  std::int64_t cuda_context = 0;      // kvq::PlanAssumptions::cuda_context_bytes: what the process holds beyond
                                      // its allocations (context, cuBLAS handle, kernel images; measured on an
                                      // H200); a run prints its own figure
  [[nodiscard]] std::int64_t allocated() const {  // what the backend itself allocates
    return weights + kv.total_bytes() + activations.total_bytes() + decode_workspace + cublas_workspace;
  }
  [[nodiscard]] std::int64_t total() const { return allocated() + cuda_context; }
  [[nodiscard]] std::string table() const;  // one line per part, then the total
};

// Measured by a running backend.
struct GpuMemoryUse {
  std::int64_t allocated = 0;      // the backend's own allocations (weights, cache, buffers), live now
  std::int64_t device_total = 0;   // cudaMemGetInfo total
  std::int64_t used_at_start = 0;  // device memory in use when the backend began, after its CUDA context and
                                   // cuBLAS handle existed and before its first allocation
  std::int64_t used_after_setup = 0;  // in use once the backend allocated everything, before its first step (the
                                     // rest of the peak comes during steps: kernel images loaded lazily, cuBLAS)
  std::int64_t peak_used = 0;      // the most device memory in use seen (cudaMemGetInfo after each step)
};

// "17179869184", "16GiB", "16 GB", "512MiB", "1.5GiB" -> bytes (GiB/MiB/KiB binary, GB/MB/KB decimal).
// kvq::Error(invalid_argument) for anything else.
std::int64_t parse_bytes(std::string_view text);
std::string format_bytes(std::int64_t bytes);  // "1.25 GiB"

}  // namespace kvq::llama

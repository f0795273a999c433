// The GPU backend's small kernels (gpu_kernels.cu): everything of a step that is not a matrix product (cuBLAS,
// gpu_blas.hpp) or cache attention (kvq). Each is one launch on `stream`, elementwise or one block per row, fp32
// arithmetic; fp16 only where a result feeds a matrix product or the cache. Launch errors become kvq::Error.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "kvq/core/float16.hpp"
#include "kvq/core/rope.hpp"

namespace kvq::llama::gpu {

// hidden[t] = embedding[ids[t]] (fp16 rows -> the fp32 residual stream).
void embed(const std::int32_t* ids, const f16* embedding, std::int64_t tokens, int width, float* hidden,
           cudaStream_t stream);

// out[t] = in[t] / rms(in[t]) * weight, as cpu_math's rms_norm (sum of squares in double), rounded to fp16.
void rms_norm(const float* in, const float* weight, std::int64_t tokens, int width, float epsilon, f16* out,
              cudaStream_t stream);

// Splits the fused q/k/v product qkv[t] = [q heads | kv heads | kv heads] x head_dim: queries get RoPE for their
// position first + t (kvq's rope_channel with the cache's table, so bit-identical to kvq::apply_rope), keys and
// values are rounded to fp16 as the cache takes them (it rotates keys itself, as the CPU backend relies on).
template <int HeadDim>
void split_qkv(const float* qkv, std::int64_t tokens, int q_heads, int kv_heads, std::int64_t first,
               const RopeTable<HeadDim>& rope, RopeStyle style, float* query, f16* keys, f16* values,
               cudaStream_t stream);

// out[t][i] = silu(gate_up[t][i]) * gate_up[t][ffn + i], rounded to fp16.
void swiglu(const float* gate_up, std::int64_t tokens, int ffn, f16* out, cudaStream_t stream);

// Seeded uniform values in [-scale, scale] (a counter-based hash of seed and index, so any size is generated on
// the device and the same seed gives the same tensor), and constant fills.
void fill_uniform(f16* out, std::int64_t count, std::uint64_t seed, float scale, cudaStream_t stream);
void fill_constant(float* out, std::int64_t count, float value, cudaStream_t stream);

}  // namespace kvq::llama::gpu

#include <algorithm>

#include "kvq/cuda/error.cuh"
#include "kvq/cuda/paged_cache.cuh"  // kvq::cuda::detail::rope_channel, the cache's own per-channel RoPE
#include "runtime/gpu_kernels.hpp"

namespace kvq::llama::gpu {
namespace {

constexpr int row_threads = 256;

int grid_for(std::int64_t items, int threads) {
  return static_cast<int>(std::clamp<std::int64_t>((items + threads - 1) / threads, 1, 65535 * 32));
}

// Block-wide sum; every thread gets the result. `shared` holds one value per warp.
template <class T>
__device__ T block_sum(T value, T* shared) {
  for (int offset = 16; offset > 0; offset /= 2) value += __shfl_xor_sync(0xffffffffu, value, offset);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  __syncthreads();  // `shared` may still be read by a previous call
  if (lane == 0) shared[warp] = value;
  __syncthreads();
  T total = 0;
  for (int w = 0; w < static_cast<int>(blockDim.x / 32); ++w) total += shared[w];
  return total;
}

__global__ void embed_kernel(const std::int32_t* ids, const f16* embedding, std::int64_t tokens, int width,
                             float* hidden) {
  const std::int64_t items = tokens * width;
  for (std::int64_t i = blockIdx.x * std::int64_t{blockDim.x} + threadIdx.x; i < items;
       i += std::int64_t{gridDim.x} * blockDim.x) {
    const std::int64_t t = i / width;
    hidden[i] = to_float(embedding[std::int64_t{ids[t]} * width + i % width]);
  }
}

__global__ void rms_norm_kernel(const float* in, const float* weight, int width, float epsilon, f16* out) {
  __shared__ double shared[row_threads / 32];
  const float* x = in + std::int64_t{blockIdx.x} * width;
  double squares = 0;
  for (int i = threadIdx.x; i < width; i += blockDim.x) squares += static_cast<double>(x[i]) * x[i];
  squares = block_sum(squares, shared);
  const auto scale = static_cast<float>(1.0 / sqrt(squares / width + epsilon));
  for (int i = threadIdx.x; i < width; i += blockDim.x)
    out[std::int64_t{blockIdx.x} * width + i] = to_f16(x[i] * scale * weight[i]);
}

template <int HeadDim>
__global__ void split_qkv_kernel(const float* qkv, std::int64_t tokens, int q_heads, int kv_heads, std::int64_t first,
                                 RopeTable<HeadDim> rope, RopeStyle style, float* query, f16* keys, f16* values) {
  const int row = (q_heads + 2 * kv_heads) * HeadDim;
  const std::int64_t items = tokens * row;
  for (std::int64_t i = blockIdx.x * std::int64_t{blockDim.x} + threadIdx.x; i < items;
       i += std::int64_t{gridDim.x} * blockDim.x) {
    const std::int64_t t = i / row;
    const int column = static_cast<int>(i % row), channel = column % HeadDim, head = column / HeadDim;
    const float x = qkv[i];
    if (head < q_heads) {
      const float partner = qkv[i - channel + kvq::cuda::detail::rope_partner<HeadDim>(channel, style)];
      const float rotated = kvq::cuda::detail::rope_channel<HeadDim>(x, partner, channel, first + t, rope, style);
      query[t * q_heads * HeadDim + column] = rotated;
    } else if (head < q_heads + kv_heads) {
      keys[(t * kv_heads + head - q_heads) * HeadDim + channel] = to_f16(x);
    } else {
      values[(t * kv_heads + head - q_heads - kv_heads) * HeadDim + channel] = to_f16(x);
    }
  }
}

__global__ void swiglu_kernel(const float* gate_up, std::int64_t tokens, int ffn, f16* out) {
  const std::int64_t items = tokens * ffn;
  for (std::int64_t i = blockIdx.x * std::int64_t{blockDim.x} + threadIdx.x; i < items;
       i += std::int64_t{gridDim.x} * blockDim.x) {
    const std::int64_t t = i / ffn, column = i % ffn;
    const float gate = gate_up[t * 2 * ffn + column], up = gate_up[t * 2 * ffn + ffn + column];
    out[i] = to_f16(gate / (1.0f + expf(-gate)) * up);
  }
}

__device__ std::uint64_t mix(std::uint64_t x) {  // splitmix64's finaliser
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

__global__ void fill_uniform_kernel(f16* out, std::int64_t count, std::uint64_t seed, float scale) {
  for (std::int64_t i = blockIdx.x * std::int64_t{blockDim.x} + threadIdx.x; i < count;
       i += std::int64_t{gridDim.x} * blockDim.x) {
    const auto bits = static_cast<std::uint32_t>(mix(seed ^ mix(static_cast<std::uint64_t>(i))) >> 40);  // 24 bits
    out[i] = to_f16(scale * (static_cast<float>(bits) * (2.0f / 16777216.0f) - 1.0f));
  }
}

__global__ void fill_constant_kernel(float* out, std::int64_t count, float value) {
  for (std::int64_t i = blockIdx.x * std::int64_t{blockDim.x} + threadIdx.x; i < count;
       i += std::int64_t{gridDim.x} * blockDim.x)
    out[i] = value;
}

}  // namespace

void embed(const std::int32_t* ids, const f16* embedding, std::int64_t tokens, int width, float* hidden,
           cudaStream_t stream) {
  embed_kernel<<<grid_for(tokens * width, 256), 256, 0, stream>>>(ids, embedding, tokens, width, hidden);
  cuda::check_launch("GPU backend: embedding");
}

void rms_norm(const float* in, const float* weight, std::int64_t tokens, int width, float epsilon, f16* out,
              cudaStream_t stream) {
  rms_norm_kernel<<<static_cast<unsigned>(tokens), row_threads, 0, stream>>>(in, weight, width, epsilon, out);
  cuda::check_launch("GPU backend: RMSNorm");
}

template <int HeadDim>
void split_qkv(const float* qkv, std::int64_t tokens, int q_heads, int kv_heads, std::int64_t first,
               const RopeTable<HeadDim>& rope, RopeStyle style, float* query, f16* keys, f16* values,
               cudaStream_t stream) {
  split_qkv_kernel<HeadDim><<<grid_for(tokens * (q_heads + 2 * kv_heads) * HeadDim, 256), 256, 0, stream>>>(
      qkv, tokens, q_heads, kv_heads, first, rope, style, query, keys, values);
  cuda::check_launch("GPU backend: q/k/v split and RoPE");
}
template void split_qkv<64>(const float*, std::int64_t, int, int, std::int64_t, const RopeTable<64>&, RopeStyle, float*,
                            f16*, f16*, cudaStream_t);
template void split_qkv<128>(const float*, std::int64_t, int, int, std::int64_t, const RopeTable<128>&, RopeStyle,
                             float*, f16*, f16*, cudaStream_t);

void swiglu(const float* gate_up, std::int64_t tokens, int ffn, f16* out, cudaStream_t stream) {
  swiglu_kernel<<<grid_for(tokens * ffn, 256), 256, 0, stream>>>(gate_up, tokens, ffn, out);
  cuda::check_launch("GPU backend: SwiGLU");
}

void fill_uniform(f16* out, std::int64_t count, std::uint64_t seed, float scale, cudaStream_t stream) {
  fill_uniform_kernel<<<grid_for(count, 256), 256, 0, stream>>>(out, count, seed, scale);
  cuda::check_launch("GPU backend: synthetic weights");
}

void fill_constant(float* out, std::int64_t count, float value, cudaStream_t stream) {
  fill_constant_kernel<<<grid_for(count, 256), 256, 0, stream>>>(out, count, value);
  cuda::check_launch("GPU backend: constant fill");
}

}  // namespace kvq::llama::gpu

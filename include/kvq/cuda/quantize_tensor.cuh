// Device quantization and dequantization of [tokens, heads, head_dim] tensors with any policy: the same
// quantize_group() the host reference runs, so codes and metadata agree bit for bit (tests/device).
//
// quantize: the staged quantize kernel (staged_quantize.cuh) over a TensorSource. No workspace is needed; the
// optional poisoned-group counter is the caller's device memory.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "kvq/core/element.hpp"
#include "kvq/cuda/error.cuh"
#include "kvq/cuda/staged_quantize.cuh"
#include "kvq/quant/concept.hpp"
#include "kvq/quant/tensor_layout.hpp"

namespace kvq::cuda {

namespace detail {

// A [tokens, heads, head_dim] tensor in the layout of quant/tensor_layout.hpp.
template <QuantizationPolicy P, TensorElement T>
struct TensorSource {
  const T* input;
  TensorShape shape;
  std::uint8_t* codes;
  std::uint8_t* meta;

  struct Cursor {
    const T* first_row;  // row 0 of the block; row r is first_row + r * heads * head_dim
    int rows;
    std::int64_t block;
  };
  __device__ std::int64_t blocks() const { return QuantizedTensorLayout<P>{shape}.blocks(); }
  __device__ Cursor cursor(std::int64_t block) const {
    const std::int64_t token = block / shape.heads * P::tokens_per_block;
    const int head = static_cast<int>(block % shape.heads);
    return {input + (token * shape.heads + head) * P::head_dim,
            QuantizedTensorLayout<P>{shape}.rows_in(block / shape.heads), block};
  }
  __device__ int rows(const Cursor& c) const { return c.rows; }
  __device__ float load(const Cursor& c, int row, int channel) const {
    return to_float(c.first_row[static_cast<std::int64_t>(row) * shape.heads * P::head_dim + channel]);
  }
  __device__ BlockRef destination(const Cursor& c) const { return QuantizedTensorLayout<P>::block(codes, meta, c.block); }
};


// Writes Count converted values; 8 half-precision values go out as one 16-byte store when the output allows.
template <TensorElement T, int Count>
__device__ __forceinline__ void store_values(T* destination, const float* values, bool aligned16) {
  if constexpr (sizeof(T) == 2 && Count % 8 == 0) {
    if (!aligned16) {
#pragma unroll
      for (int k = 0; k < Count; ++k) destination[k] = from_float<T>(values[k]);
      return;
    }
#pragma unroll
    for (int k = 0; k < Count; k += 8) {
      uint4 packed;
      std::uint32_t* words = reinterpret_cast<std::uint32_t*>(&packed);
#pragma unroll
      for (int j = 0; j < 4; ++j)
        words[j] = static_cast<std::uint32_t>(from_float<T>(values[k + 2 * j]).bits) |
                   (static_cast<std::uint32_t>(from_float<T>(values[k + 2 * j + 1]).bits) << 16);
      *reinterpret_cast<uint4*>(destination + k) = packed;
    }
  } else {
#pragma unroll
    for (int k = 0; k < Count; ++k) destination[k] = from_float<T>(values[k]);
  }
}

template <QuantizationPolicy P, TensorElement T, int Chunk>
__global__ void dequantize_kernel(const std::uint8_t* __restrict__ codes, const std::uint8_t* __restrict__ meta,
                                  TensorShape shape, T* __restrict__ output, typename P::Params params,
                                  Domain domain, bool output_aligned16) {
  const QuantizedTensorLayout<P> layout{shape};
  constexpr int chunks_per_row = P::head_dim / Chunk;
  constexpr int rows_per_block = P::tokens_per_block;
  const std::int64_t total = layout.blocks() * rows_per_block * chunks_per_row;
  for (std::int64_t item = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; item < total;
       item += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    // Item order (block, chunk, row): for multi-token blocks the lanes of a warp walk the rows of one chunk and
    // share its groups' words and scales.
    const int row = static_cast<int>(item % rows_per_block);
    const int chunk = static_cast<int>(item / rows_per_block % chunks_per_row);
    const std::int64_t block = item / (rows_per_block * chunks_per_row);
    const std::int64_t token = block / shape.heads * rows_per_block + row;
    if (token >= shape.tokens) continue;
    const int head = static_cast<int>(block % shape.heads);
    const ConstBlockRef block_ref = layout.block(codes, meta, block);
    float values[Chunk];
    if constexpr (Chunk == P::head_dim) {
      dequantize_row<P>(block_ref, row, values, params, domain);
    } else {
      P::dequantize(block_ref, row, chunk * Chunk, Chunk, values, params);
    }
    store_values<T, Chunk>(output + (token * shape.heads + head) * P::head_dim + chunk * Chunk, values,
                           output_aligned16);
  }
}

inline int grid_for(std::int64_t items, int threads) {
  const std::int64_t blocks = (items + threads - 1) / threads;
  return static_cast<int>(blocks < 65535 * 16 ? blocks : 65535 * 16);
}

}  // namespace detail

// Quantizes `input` (device memory, [tokens, heads, head_dim]) into `codes` and `meta` (device memory sized by
// QuantizedTensorLayout<P>). Non-finite inputs poison their group; if `poisoned_groups` (device memory) is not
// null, the number of poisoned groups is added to it. Asynchronous on `stream`.
template <QuantizationPolicy P, TensorElement T>
void quantize_tensor_async(const T* input, const TensorShape& shape, std::uint8_t* codes, std::uint8_t* meta,
                           const typename P::Params& params, unsigned long long* poisoned_groups,
                           cudaStream_t stream) {
  const QuantizedTensorLayout<P> layout{shape};
  layout.validate();
  if (layout.blocks() == 0) return;
  // Records leave the kernel as whole words (codes) and half-words (metadata).
  require(reinterpret_cast<std::uintptr_t>(codes) % 4 == 0 && reinterpret_cast<std::uintptr_t>(meta) % 2 == 0,
          ErrorCode::invalid_argument, "quantize_tensor_async: codes must be 4-byte and meta 2-byte aligned");
  detail::staged_quantize_kernel<P><<<detail::grid_for_tiles(layout.blocks(), detail::blocks_per_tile<P>),
                                      detail::quantize_threads<P>, 0, stream>>>(
      detail::TensorSource<P, T>{input, shape, codes, meta}, params, poisoned_groups);
  check_launch("kvq::cuda::quantize_tensor_async");
}

// Dequantizes into `output` (device memory, [tokens, heads, head_dim]). Asynchronous on `stream`.
template <QuantizationPolicy P, TensorElement T>
void dequantize_tensor_async(const std::uint8_t* codes, const std::uint8_t* meta, const TensorShape& shape, T* output,
                             const typename P::Params& params, Domain domain, cudaStream_t stream) {
  const QuantizedTensorLayout<P> layout{shape};
  layout.validate();
  if (shape.tokens == 0) return;
  constexpr int threads = 256;
  const bool aligned16 = reinterpret_cast<std::uintptr_t>(output) % 16 == 0;
  if constexpr (P::rotated) {
    if (domain == Domain::original) {  // undoing the rotation needs whole rows: one thread per row
      const std::int64_t items = layout.blocks() * P::tokens_per_block;
      detail::dequantize_kernel<P, T, P::head_dim>
          <<<detail::grid_for(items, threads), threads, 0, stream>>>(codes, meta, shape, output, params, domain,
                                                                     aligned16);
      check_launch("kvq::cuda::dequantize_tensor_async");
      return;
    }
  }
  constexpr int chunk = P::head_dim % 8 == 0 ? 8 : 4;
  const std::int64_t items = layout.blocks() * P::tokens_per_block * (P::head_dim / chunk);
  detail::dequantize_kernel<P, T, chunk>
      <<<detail::grid_for(items, threads), threads, 0, stream>>>(codes, meta, shape, output, params, domain,
                                                                     aligned16);
  check_launch("kvq::cuda::dequantize_tensor_async");
}

}  // namespace kvq::cuda

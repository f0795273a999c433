// Device quantization and dequantization of [tokens, heads, head_dim] tensors with any policy: the same
// quantize_group() the host reference runs, so codes and metadata agree bit for bit (tests/device).
//
// quantize: each CTA stages a tile of whole blocks in shared memory as floats (coalesced loads), runs the policy's
// block step (one thread per block), then one thread per (block, group); the records are staged in shared memory
// and leave as whole words. No workspace is needed; the optional poisoned-group counter is the caller's device
// memory.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "kvq/core/element.hpp"
#include "kvq/cuda/error.cuh"
#include "kvq/quant/concept.hpp"
#include "kvq/quant/tensor_layout.hpp"

namespace kvq::cuda {

namespace detail {

// Blocks staged per CTA: about 4096 floats (16 KiB of shared memory) per tile.
template <QuantizationPolicy P>
inline constexpr int blocks_per_tile = (P::tokens_per_block * P::head_dim) >= 4096
                                           ? 1
                                           : 4096 / (P::tokens_per_block * P::head_dim);
// One-token blocks are staged one float apart (stride head_dim + 1) and handed to consecutive lanes, so a warp's
// lanes read 32 different banks; multi-token blocks are contiguous and their groups (channels) go to consecutive
// lanes instead, which is conflict-free as it is.
template <QuantizationPolicy P>
inline constexpr int block_stride = P::tokens_per_block * P::head_dim + (P::tokens_per_block == 1 ? 1 : 0);
template <QuantizationPolicy P>
inline constexpr int tile_floats = blocks_per_tile<P> * block_stride<P>;
// Output records are staged in shared memory too, then leave as whole words: threads of a warp write to different
// blocks' records, which in global memory would be many partial sectors. An odd number of words per staged record
// keeps those lanes on different banks.
inline constexpr int staged_stride(int bytes) {
  const int words = (bytes + 3) / 4;
  return 4 * (words % 2 == 0 ? words + 1 : words);
}
template <QuantizationPolicy P>
inline constexpr int staged_code_stride = staged_stride(P::code_bytes_per_block);
template <QuantizationPolicy P>
inline constexpr int staged_meta_stride = P::meta_bytes_per_block == 0 ? 0 : staged_stride(P::meta_bytes_per_block);
template <QuantizationPolicy P>
inline constexpr int quantize_threads = [] {
  const int work = blocks_per_tile<P> * P::groups_per_block;
  const int rounded = (work + 31) / 32 * 32;
  return rounded > 256 ? 256 : rounded;
}();

// Copies `blocks` staged records of `bytes` each (stride `stride` in shared memory) to their destinations in
// global memory, whole words (or halves for 2-byte records) at a time.
template <class Destination>
__device__ __forceinline__ void copy_out(const std::uint8_t* staged, int blocks, int bytes, int stride,
                                         Destination destination) {
  if (bytes % 4 == 0) {
    const int words = bytes / 4;
    for (int k = threadIdx.x; k < blocks * words; k += blockDim.x)
      reinterpret_cast<std::uint32_t*>(destination(k / words))[k % words] =
          *reinterpret_cast<const std::uint32_t*>(staged + k / words * stride + k % words * 4);
  } else {
    const int halves = bytes / 2;
    for (int k = threadIdx.x; k < blocks * halves; k += blockDim.x)
      reinterpret_cast<std::uint16_t*>(destination(k / halves))[k % halves] =
          *reinterpret_cast<const std::uint16_t*>(staged + k / halves * stride + k % halves * 2);
  }
}

// Where the blocks of a staged quantization come from and go to. A Source provides, on the device:
//   Cursor cursor(std::int64_t block) const;         everything about one block that is costly to work out
//                                                     (index arithmetic, page look-ups), computed once per block
//   int rows(const Cursor&) const;                    rows holding tokens (the rest are coded as zero)
//   float load(const Cursor&, int row, int channel) const;   one input element, as the policy must see it
//   BlockRef destination(const Cursor&) const;        the block's records in global memory
// Cursors are trivially copyable; the kernel keeps one per staged block in shared memory.
template <QuantizationPolicy P, class Source>
__global__ void __launch_bounds__(quantize_threads<P>)
    staged_quantize_kernel(Source source, typename P::Params params, unsigned long long* __restrict__ poisoned_groups) {
  __shared__ float tile[tile_floats<P>];
  __shared__ __align__(16) std::uint8_t staged_codes[blocks_per_tile<P> * staged_code_stride<P>];
  __shared__ __align__(16) std::uint8_t staged_meta[blocks_per_tile<P> * staged_meta_stride<P> + 4];
  using Cursor = decltype(source.cursor(std::int64_t{0}));
  static_assert(std::is_trivially_copyable_v<Cursor>, "kvq: a staged-quantize cursor must be trivially copyable");
  __shared__ __align__(16) unsigned char cursor_storage[blocks_per_tile<P> * sizeof(Cursor)];
  Cursor* cursors = reinterpret_cast<Cursor*>(cursor_storage);
  const std::int64_t total_blocks = source.blocks();
  constexpr int block_floats = P::tokens_per_block * P::head_dim;
  constexpr int work_items = blocks_per_tile<P> * P::groups_per_block;
  constexpr bool one_token = P::tokens_per_block == 1;
  auto staged_block = [&](int local_block) {
    return BlockRef{staged_codes + local_block * staged_code_stride<P>, staged_meta + local_block * staged_meta_stride<P>};
  };
  int poisoned = 0;
  for (std::int64_t first = static_cast<std::int64_t>(blockIdx.x) * blocks_per_tile<P>; first < total_blocks;
       first += static_cast<std::int64_t>(gridDim.x) * blocks_per_tile<P>) {
    const int blocks_here = static_cast<int>(total_blocks - first < blocks_per_tile<P> ? total_blocks - first
                                                                                       : blocks_per_tile<P>);
    for (int local_block = threadIdx.x; local_block < blocks_here; local_block += blockDim.x)
      cursors[local_block] = source.cursor(first + local_block);
    __syncthreads();
    // Stage: element e of the tile is (block first + e / block_floats, row, channel); for contiguous inputs,
    // consecutive threads read consecutive elements. Unrolled so that several loads are in flight per thread: for
    // a handful of blocks (a decode step) this loop is the kernel's latency.
#pragma unroll 4
    for (int e = threadIdx.x; e < blocks_here * block_floats; e += blockDim.x) {
      const int local_block = e / block_floats;
      const int row = e % block_floats / P::head_dim;
      const int channel = e % P::head_dim;
      const Cursor& cursor = cursors[local_block];
      tile[local_block * block_stride<P> + e % block_floats] =
          row < source.rows(cursor) ? source.load(cursor, row, channel) : 0.0f;
    }
    __syncthreads();
    if constexpr (HasPrepareBlock<P>) {
      for (int local_block = threadIdx.x; local_block < blocks_here; local_block += blockDim.x)
        P::prepare_block(tile + local_block * block_stride<P>, source.rows(cursors[local_block]),
                         staged_block(local_block), params);
      __syncthreads();
    }
    for (int work = threadIdx.x; work < work_items; work += blockDim.x) {
      const int local_block = one_token ? work % blocks_per_tile<P> : work / P::groups_per_block;
      const int group = one_token ? work / blocks_per_tile<P> : work % P::groups_per_block;
      if (local_block >= blocks_here) continue;
      poisoned += P::quantize_group(tile + local_block * block_stride<P>, source.rows(cursors[local_block]), group,
                                    staged_block(local_block), params)
                      ? 0
                      : 1;
    }
    __syncthreads();
    copy_out(staged_codes, blocks_here, P::code_bytes_per_block, staged_code_stride<P>,
             [&](int b) { return source.destination(cursors[b]).codes; });
    if constexpr (P::meta_bytes_per_block > 0)
      copy_out(staged_meta, blocks_here, P::meta_bytes_per_block, staged_meta_stride<P>,
               [&](int b) { return source.destination(cursors[b]).meta; });
    __syncthreads();
  }
  if (poisoned != 0 && poisoned_groups != nullptr) atomicAdd(poisoned_groups, static_cast<unsigned long long>(poisoned));
}

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

inline int grid_for_tiles(std::int64_t blocks, int blocks_per_tile) {
  const std::int64_t tiles = (blocks + blocks_per_tile - 1) / blocks_per_tile;
  return static_cast<int>(tiles < 65535 * 16 ? tiles : 65535 * 16);
}

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

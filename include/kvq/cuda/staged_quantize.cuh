// The staged quantize kernel: the one device path by which kvq quantizes blocks, for tensors and for the cache.
// Each CTA stages a tile of whole blocks in shared memory as floats, runs the policy's block step (one thread per
// block), then one thread per (block, group); the records are staged in shared memory too and leave as whole
// words. It runs exactly the policy code the host reference runs, which is what makes device and host agree bit
// for bit.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <type_traits>
#include <utility>

#include "kvq/core/alignment.hpp"
#include "kvq/quant/concept.hpp"

namespace kvq::cuda::detail {

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
using CursorOf = decltype(std::declval<const Source&>().cursor(std::int64_t{0}));

// Shared memory one CTA needs: the float tile, the staged code and meta records, and the cursors (16-byte
// aligned pieces, in that order).
template <QuantizationPolicy P, class Source>
inline constexpr std::size_t staged_shared_bytes =
    static_cast<std::size_t>(align16(tile_floats<P> * 4) + align16(blocks_per_tile<P> * staged_code_stride<P>) +
                             align16(blocks_per_tile<P> * staged_meta_stride<P> + 4)) +
    align16(blocks_per_tile<P> * static_cast<std::int64_t>(sizeof(CursorOf<P, Source>)));

// The work of CTA `cta` of `ctas` CTAs working on `source`.
template <QuantizationPolicy P, class Source>
__device__ void staged_quantize_tiles(const Source& source, const typename P::Params& params, unsigned char* shared,
                                      std::int64_t cta, std::int64_t ctas, unsigned long long* poisoned_groups) {
  using Cursor = CursorOf<P, Source>;
  static_assert(std::is_trivially_copyable_v<Cursor>, "kvq: a staged-quantize cursor must be trivially copyable");
  float* tile = reinterpret_cast<float*>(shared);
  std::uint8_t* staged_codes = shared + align16(tile_floats<P> * 4);
  std::uint8_t* staged_meta = staged_codes + align16(blocks_per_tile<P> * staged_code_stride<P>);
  Cursor* cursors = reinterpret_cast<Cursor*>(staged_meta + align16(blocks_per_tile<P> * staged_meta_stride<P> + 4));
  const std::int64_t total_blocks = source.blocks();
  constexpr int block_floats = P::tokens_per_block * P::head_dim;
  constexpr int work_items = blocks_per_tile<P> * P::groups_per_block;
  constexpr bool one_token = P::tokens_per_block == 1;
  auto staged_block = [&](int local_block) {
    return BlockRef{staged_codes + local_block * staged_code_stride<P>, staged_meta + local_block * staged_meta_stride<P>};
  };
  int poisoned = 0;
  for (std::int64_t first = cta * blocks_per_tile<P>; first < total_blocks; first += ctas * blocks_per_tile<P>) {
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

// Quantizes every block of `source` with policy P.
template <QuantizationPolicy P, class Source>
__global__ void __launch_bounds__(quantize_threads<P>)
    staged_quantize_kernel(Source source, typename P::Params params, unsigned long long* __restrict__ poisoned_groups) {
  __shared__ __align__(16) unsigned char shared[staged_shared_bytes<P, Source>];
  staged_quantize_tiles<P>(source, params, shared, blockIdx.x, gridDim.x, poisoned_groups);
}

// Two quantizations in one launch (a cache layer's keys and values): the first `first_ctas` CTAs work on `first`,
// the rest on `second`. One launch instead of two is what a decode step, made of tiny launches, pays for.
template <QuantizationPolicy First, class FirstSource, QuantizationPolicy Second, class SecondSource>
__global__ void __launch_bounds__(quantize_threads<First> > quantize_threads<Second> ? quantize_threads<First>
                                                                                    : quantize_threads<Second>)
    staged_quantize_pair_kernel(FirstSource first, typename First::Params first_params, int first_ctas,
                                SecondSource second, typename Second::Params second_params,
                                unsigned long long* __restrict__ poisoned_groups) {
  constexpr std::size_t bytes = staged_shared_bytes<First, FirstSource> > staged_shared_bytes<Second, SecondSource>
                                    ? staged_shared_bytes<First, FirstSource>
                                    : staged_shared_bytes<Second, SecondSource>;
  __shared__ __align__(16) unsigned char shared[bytes];
  if (static_cast<int>(blockIdx.x) < first_ctas)
    staged_quantize_tiles<First>(first, first_params, shared, blockIdx.x, first_ctas, poisoned_groups);
  else
    staged_quantize_tiles<Second>(second, second_params, shared, blockIdx.x - first_ctas, gridDim.x - first_ctas,
                                  poisoned_groups);
}

inline int grid_for_tiles(std::int64_t blocks, int blocks_per_tile) {
  const std::int64_t tiles = (blocks + blocks_per_tile - 1) / blocks_per_tile;
  return static_cast<int>(tiles < 65535 * 16 ? tiles : 65535 * 16);
}

}  // namespace kvq::cuda::detail

// What the decode-attention kernels share: their arguments and the end of every thread block, which merges the
// block's per-warp softmax states, combines the splits of a (sequence, KV head) through the workspace and writes
// the output (see docs/attention.md).
#pragma once

#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <type_traits>

#include "kvq/attention/decode_plan.hpp"
#include "kvq/attention/importance.hpp"
#include "kvq/cache/cache_state.hpp"
#include "kvq/cache/layer_view.hpp"
#include "kvq/core/element.hpp"
#include "kvq/core/rope.hpp"
#include "kvq/cuda/error.cuh"
#include "kvq/cuda/mma_fragments.cuh"
#include "kvq/cuda/paged_cache.cuh"
#include "kvq/quant/rotation.hpp"

namespace kvq::cuda::detail {

template <class Tier, class Query, class Out>
struct DecodeArgs {
  CacheLayerView view;
  TierParams<Tier> params;
  RopeTable<Tier::KeyPolicy::head_dim> rope;
  RopeStyle style;
  const Query* query;            // [batch][q_heads][head_dim]
  Out* out;                      // [batch][q_heads][head_dim]
  const std::int32_t* sequences; // [batch] cache sequence slot of each query
  int q_heads, group, head_chunks, splits;
  float scale_log2;              // softmax scale * log2(e) (no soft cap), or softmax scale (soft cap)
  float soft_cap;
  float* partial;                // workspace, see DecodePlan
  float* lse;
  unsigned* counters;            // arrivals; with importance, departures follow at counters + groups
  ImportanceView importance;     // disabled: no bookkeeping
  float* logits;                 // importance: [batch][q_heads][logit_stride] log2-domain logits of the step
  std::int64_t logit_stride;
};

// Importance bookkeeping: a block's token logits, stored as the kernels score them (log2 domain, soft cap
// applied), to be turned into probabilities once the call's log-sum-exp is known (finish_decode_block). A kernel
// takes the row of each head it scores once (`logit_row`) and stores into it per token, so the hot loop carries
// no 64-bit index arithmetic.
template <class Args>
__device__ __forceinline__ float* logit_row(const Args& a, int b, int head) {
  return a.logits + (std::int64_t{b} * a.q_heads + head) * a.logit_stride;
}
__device__ __forceinline__ void store_logit(float* row, std::int64_t token, float logit) { __stcg(row + token, logit); }

// Launches a decode kernel; `cooperative` (importance with splits: the splits wait for each other) makes the
// launch fail rather than start a grid whose blocks cannot all be resident. Valid in CUDA-graph capture.
template <class Args>
void launch_decode_kernel(void (*kernel)(Args), const Args& args, dim3 grid, int threads, int shared_bytes,
                          bool cooperative, cudaStream_t stream) {
  if (!cooperative) {
    kernel<<<grid, threads, shared_bytes, stream>>>(args);
    return;
  }
  cudaLaunchConfig_t config{};
  config.gridDim = grid;
  config.blockDim = dim3(static_cast<unsigned>(threads));
  config.dynamicSmemBytes = static_cast<std::size_t>(shared_bytes);
  config.stream = stream;
  cudaLaunchAttribute attribute{};
  attribute.id = cudaLaunchAttributeCooperative;
  attribute.val.cooperative = 1;
  config.attrs = &attribute;
  config.numAttrs = 1;
  check(cudaLaunchKernelEx(&config, kernel, args), "decode attention: cooperative launch (importance bookkeeping)");
}

// A counter other blocks write, read with acquire semantics at GPU scope (what they published before their
// increment is visible after it).
__device__ __forceinline__ unsigned load_acquire(const unsigned* counter) {
  unsigned value;
  asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(value) : "l"(counter) : "memory");
  return value;
}

// The token range a block covers and whose importance it adds (finish_decode_block).
struct DecodeBlockRange {
  int sequence, kv_head;
  std::int64_t begin, end;
};

// Importance: adds the probabilities of a block's tokens [begin, end), 2^(logit - lse) summed over its heads, to
// the KV head's importance row (lse: the call's log2-sum-exp per head). The logit rows are 16-byte aligned
// (workspace alignment, logit_stride % 4 == 0), so a thread reads a quad of tokens as one float4 per head, and
// `unroll` quads are loaded before any is added: the adds could alias the logits as far as the compiler knows, so
// without this each quad's loads would wait for the previous quad's atomics (one L2 round trip per 4 tokens).
// 16 quad-heads in flight per thread (64 floats), whatever the group width, so that wide groups do not raise the
// kernel's register count.
template <int GroupWidth, int Threads, class Args>
__device__ __forceinline__ void add_importance(const Args& a, const float (&lse)[GroupWidth], int b, int first_head,
                                               int heads_here, const DecodeBlockRange& range) {
  constexpr int unroll = GroupWidth >= 16 ? 1 : 16 / GroupWidth;
  if (range.begin >= range.end) return;
  float* const row = a.importance.scores + range.sequence * a.importance.sequence_stride +
                     range.kv_head * a.importance.head_stride;
  const float* const logits = a.logits + (std::int64_t{b} * a.q_heads + first_head) * a.logit_stride;
  const std::int64_t first_quad = range.begin / 4, quads = (range.end + 3) / 4 - first_quad;
  for (std::int64_t base = threadIdx.x; base < quads; base += std::int64_t{Threads} * unroll) {
    float4 x[unroll][GroupWidth];
#pragma unroll
    for (int k = 0; k < unroll; ++k) {
      const std::int64_t quad = first_quad + base + std::int64_t{k} * Threads;
#pragma unroll
      for (int h = 0; h < GroupWidth; ++h)
        x[k][h] = h < heads_here && quad < first_quad + quads
                      ? __ldcg(reinterpret_cast<const float4*>(logits + h * a.logit_stride) + quad)
                      : make_float4(-INFINITY, -INFINITY, -INFINITY, -INFINITY);
    }
#pragma unroll
    for (int k = 0; k < unroll; ++k) {
      const std::int64_t token = (first_quad + base + std::int64_t{k} * Threads) * 4;
      float sum[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
      for (int h = 0; h < GroupWidth; ++h)
        if (h < heads_here) {
          sum[0] += exp2f(x[k][h].x - lse[h]), sum[1] += exp2f(x[k][h].y - lse[h]);
          sum[2] += exp2f(x[k][h].z - lse[h]), sum[3] += exp2f(x[k][h].w - lse[h]);
        }
#pragma unroll
      for (int e = 0; e < 4; ++e)  // one block per element unless the group is served in chunks
        if (token + e >= range.begin && token + e < range.end) atomicAdd(row + token + e, sum[e]);
    }
  }
}

// Block epilogue, called by all threads of the block after each warp w stored its state for every head h of the
// block in merge_max[w][h] (running max, log2 domain), merge_sum[w][h] (sum of exponentials) and merge_acc[w][h]
// (unnormalised output): block result per head, then (splits > 1) the fp32 partial and its log2-sum-exp to the
// workspace and, in the last block of the (sequence, KV head) to arrive, the combination of all splits in a fixed
// order; rotated values are rotated back; the output is written.
//
// With importance (a.importance enabled), every block also adds the probabilities of its tokens [begin, end) to the
// importance rows: the splits of the (sequence, KV head, chunk) wait for each other at the arrival counter (the
// launch is cooperative, so they are all resident), each computes the call's log-sum-exp from all splits', turns
// its stored logits into probabilities and adds them; the last block to depart combines the outputs as above.
template <class V, int D, int GroupWidth, int Warps, int Threads, class Args>
__device__ __forceinline__ void finish_decode_block(const Args& a, float (&merge_acc)[Warps][GroupWidth][D],
                                                    const float (&merge_max)[Warps][GroupWidth],
                                                    const float (&merge_sum)[Warps][GroupWidth], bool valid_sequence,
                                                    int b, int split, int first_head, int heads_here,
                                                    const DecodeBlockRange& range) {
  __shared__ float final_lse[GroupWidth];
  __shared__ bool last_block;
  const bool importance = a.importance.scores != nullptr && valid_sequence;
  // Block result per head: normalised output (into merge_acc[0]) and log2-sum-exp. A NaN sum stays NaN.
  for (int i = threadIdx.x; i < GroupWidth * D; i += Threads) {
    const int h = i / D, c = i % D;
    float top = -INFINITY;
#pragma unroll
    for (int w = 0; w < Warps; ++w) top = fmaxf(top, merge_max[w][h]);
    float sum = 0.0f, o = 0.0f;
#pragma unroll
    for (int w = 0; w < Warps; ++w) {
      const float f = merge_max[w][h] == -INFINITY ? 0.0f : exp2f(merge_max[w][h] - top);
      sum += merge_sum[w][h] * f;
      o += merge_acc[w][h][c] * f;
    }
    merge_acc[0][h][c] = sum == 0.0f ? 0.0f : o / sum;
    if (c == 0) final_lse[h] = sum == 0.0f ? -INFINITY : top + log2f(sum);
  }
  __syncthreads();
  if (importance && a.splits == 1) add_importance<GroupWidth, Threads>(a, final_lse, b, first_head, heads_here, range);

  if (a.splits > 1) {
    for (int i = threadIdx.x; i < heads_here * D; i += Threads) {
      const int h = i / D, c = i % D;
      const std::int64_t row = (std::int64_t{b} * a.q_heads + first_head + h) * a.splits + split;
      a.partial[row * D + c] = merge_acc[0][h][c];
      if (c == 0) a.lse[row] = final_lse[h];
    }
    // Publish the partial, then take a ticket; the block that arrives last combines every split.
    __threadfence();
    __syncthreads();
    const std::int64_t group_index = std::int64_t{b} * gridDim.y + blockIdx.y;
    unsigned* counter = a.counters + group_index;
    if (a.importance.scores != nullptr) {
      // Wait for every split (all resident: cooperative launch), then the call's log-sum-exp per head from the
      // splits' (in the same order as the combine, so every block gets the same value).
      unsigned* departures = a.counters + std::int64_t{gridDim.z} * gridDim.y + group_index;
      if (threadIdx.x == 0) {
        atomicAdd(counter, 1u);  // after the __threadfence above: the partial is visible first
        while (load_acquire(counter) < static_cast<unsigned>(a.splits)) __nanosleep(100);
      }
      __syncthreads();
      if (importance) {
        for (int h = threadIdx.x / 32; h < heads_here; h += Threads / 32) {
          const float* const lse = a.lse + (std::int64_t{b} * a.q_heads + first_head + h) * a.splits;
          float top = -INFINITY;
          for (int s = threadIdx.x % 32; s < a.splits; s += 32) top = fmaxf(top, __ldcg(lse + s));
#pragma unroll
          for (int mask = 16; mask > 0; mask /= 2) top = fmaxf(top, __shfl_xor_sync(0xFFFFFFFFu, top, mask));
          float sum = 0.0f;
          for (int s = threadIdx.x % 32; s < a.splits; s += 32) {
            const float l = __ldcg(lse + s);
            sum += l == -INFINITY ? 0.0f : exp2f(l - top);
          }
#pragma unroll
          for (int mask = 16; mask > 0; mask /= 2) sum += __shfl_xor_sync(0xFFFFFFFFu, sum, mask);
          if (threadIdx.x % 32 == 0) final_lse[h] = sum == 0.0f ? INFINITY : top + log2f(sum);  // no tokens: adds 0
        }
        __syncthreads();
        add_importance<GroupWidth, Threads>(a, final_lse, b, first_head, heads_here, range);
      }
      // Every block has read the log-sum-exps: the last to depart may overwrite them and resets both counters.
      __syncthreads();
      if (threadIdx.x == 0) last_block = atomicAdd(departures, 1u) == static_cast<unsigned>(a.splits - 1);
      __syncthreads();
      if (!last_block) return;
      if (threadIdx.x == 0) *departures = 0u;
    } else {
      if (threadIdx.x == 0) last_block = atomicAdd(counter, 1u) == static_cast<unsigned>(a.splits - 1);
      __syncthreads();
      if (!last_block) return;
    }
    __threadfence();
    // Combine in parallel (the last block is on the critical path of the whole call). One warp per head loads the
    // splits' log2-sum-exp in one round trip (at most decode_max_splits, 8 a lane) and turns them into normalised
    // weights, kept in shared memory (merge_acc[1..], free once the block result sits in merge_acc[0]) when they
    // fit, else written over the log-sum-exps (no other block reads them before the next call rewrites them);
    // then every thread sums four channels of one head over the splits, many loads in flight.
    constexpr int per_lane = decode_max_splits / 32;
    constexpr int scratch_floats = (Warps - 1) * GroupWidth * D;
    static_assert(Warps >= 2, "kvq: the split weights use the merge rows of warps 1..");
    const bool in_shared = heads_here * a.splits <= scratch_floats;
    const int lane = threadIdx.x % 32;
    for (int h = threadIdx.x / 32; h < heads_here; h += Threads / 32) {
      float* const lse = a.lse + (std::int64_t{b} * a.q_heads + first_head + h) * a.splits;
      float l[per_lane];
      float top = -INFINITY;
#pragma unroll
      for (int k = 0; k < per_lane; ++k) {
        const int s = lane + 32 * k;
        l[k] = s < a.splits ? __ldcg(lse + s) : -INFINITY;
        top = fmaxf(top, l[k]);
      }
#pragma unroll
      for (int mask = 16; mask > 0; mask /= 2) top = fmaxf(top, __shfl_xor_sync(0xFFFFFFFFu, top, mask));
      float sum = 0.0f;
#pragma unroll
      for (int k = 0; k < per_lane; ++k) {
        l[k] = l[k] == -INFINITY ? 0.0f : exp2f(l[k] - top);  // a NaN log-sum-exp (NaN data) stays NaN
        sum += l[k];
      }
#pragma unroll
      for (int mask = 16; mask > 0; mask /= 2) sum += __shfl_xor_sync(0xFFFFFFFFu, sum, mask);
      const float inverse = sum == 0.0f ? 0.0f : 1.0f / sum;
      float* const weights = in_shared ? &merge_acc[1][0][0] + h * a.splits : lse;
#pragma unroll
      for (int k = 0; k < per_lane; ++k)
        if (lane + 32 * k < a.splits) weights[lane + 32 * k] = l[k] * inverse;
    }
    __threadfence_block();
    __syncthreads();  // the weights (shared, or global writes of this block) are visible to all its threads
    static_assert(D % 4 == 0);
    for (int i = threadIdx.x; i < heads_here * (D / 4); i += Threads) {
      const int h = i / (D / 4), c = i % (D / 4) * 4;
      const std::int64_t row0 = (std::int64_t{b} * a.q_heads + first_head + h) * a.splits;
      const float* const shared_weights = &merge_acc[1][0][0] + h * a.splits;
      const float* const global_weights = a.lse + row0;
      const float4* partial = reinterpret_cast<const float4*>(a.partial + row0 * D + c);
      float4 o = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll 16
      for (int s = 0; s < a.splits; ++s) {
        const float w = in_shared ? shared_weights[s] : __ldcg(global_weights + s);
        const float4 x = __ldcg(partial + std::int64_t{s} * (D / 4));
        o.x += w * x.x, o.y += w * x.y, o.z += w * x.z, o.w += w * x.w;
      }
      merge_acc[0][h][c] = o.x, merge_acc[0][h][c + 1] = o.y, merge_acc[0][h][c + 2] = o.z, merge_acc[0][h][c + 3] = o.w;
    }
    if (threadIdx.x == 0) *counter = 0u;  // ready for the next call (and the next graph replay)
    __syncthreads();
  }

  // Rotated values were accumulated in the rotated domain: rotate the output back once (rows in shared memory).
  if constexpr (V::rotated) {
    float* rows = &merge_acc[0][0][0];
    for (int half = 1; half < D; half *= 2) {
      for (int i = threadIdx.x; i < GroupWidth * D / 2; i += Threads) {
        const int h = i / (D / 2), j = i % (D / 2);
        const int first = j / half * 2 * half + j % half;
        const float x = rows[h * D + first], y = rows[h * D + first + half];
        rows[h * D + first] = x + y;
        rows[h * D + first + half] = x - y;
      }
      __syncthreads();
    }
    for (int i = threadIdx.x; i < GroupWidth * D; i += Threads) {
      const int c = i % D;
      float x = rows[i] * inverse_sqrt_power_of_two<D>;
      if (rotation_sign_negative(a.params.value.seed, c)) x = -x;
      rows[i] = x;
    }
    __syncthreads();
  }
  for (int i = threadIdx.x; i < heads_here * D; i += Threads) {
    const int h = i / D, c = i % D;
    const float x = valid_sequence ? merge_acc[0][h][c] : NAN;
    a.out[(std::int64_t{b} * a.q_heads + first_head + h) * D + c] = from_float<std::remove_cvref_t<decltype(*a.out)>>(x);
  }
}

}  // namespace kvq::cuda::detail

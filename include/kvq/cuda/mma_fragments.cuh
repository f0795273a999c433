// Warp-level primitives of the tensor-core attention kernel (sm_80+; movmatrix needs PTX 7.8): one fp16 x fp16
// -> fp32 mma of shape m16n8k16 and one u8 x s8 -> s32 mma of shape m16n8k32, the 8x8 transpose that turns a score fragment into the operand of the next mma,
// the "magic number" conversion of packed codes to fp16, and the cp.async copies that stage page bytes in shared
// memory. Fragment layouts are PTX's (lane = 4 * group + thread_in_group):
//   A (16x16, row): a[0] = (row g,   cols 2t, 2t+1)   a[1] = (row g+8, cols 2t, 2t+1)
//                   a[2] = (row g,   cols 2t+8, 2t+9) a[3] = (row g+8, cols 2t+8, 2t+9)
//   B (16x8, col):  b[0] = (rows 2t, 2t+1, col g)     b[1] = (rows 2t+8, 2t+9, col g)
//   C (16x8, f32):  c[0], c[1] = (row g, cols 2t, 2t+1)   c[2], c[3] = (row g+8, cols 2t, 2t+1)
// Each 32-bit register holds two fp16 values, the lower column (or row, for B) in the low half.
#pragma once

#include <cuda_fp16.h>

#include <cstdint>

namespace kvq::cuda::detail {

// c += a * b
__device__ __forceinline__ void mma_16x8x16(float (&c)[4], const std::uint32_t (&a)[4], std::uint32_t b0,
                                            std::uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// c += a * b, integers: a 16x32 unsigned 8-bit codes, b 32x8 signed 8-bit, c 32-bit (exact). Fragment layouts as
// above with four 8-bit values per register: a[0] = (row g, cols 4t..4t+3), a[1] = (row g+8, cols 4t..4t+3),
// a[2], a[3] the same for cols 16+4t..16+4t+3; b[0] = (rows 4t..4t+3, col g), b[1] = (rows 16+4t.., col g).
__device__ __forceinline__ void mma_16x8x32_u8s8(int (&c)[4], const std::uint32_t (&a)[4], std::uint32_t b0,
                                                 std::uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k32.row.col.s32.u8.s8.s32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+r"(c[0]), "+r"(c[1]), "+r"(c[2]), "+r"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Transpose of an 8x8 fp16 matrix held one row pair per lane (row g, cols 2t, 2t+1): lane (g, t) receives
// rows 2t, 2t+1 of column g, i.e. (transposed row g, cols 2t, 2t+1).
__device__ __forceinline__ std::uint32_t transpose_8x8(std::uint32_t x) {
  std::uint32_t y;
  asm volatile("movmatrix.sync.aligned.m8n8.trans.b16 %0, %1;\n" : "=r"(y) : "r"(x));
  return y;
}

inline constexpr float log2_e = 1.4426950408889634f;  // e^x = 2^(x log2 e)

// 2^x in one MUFU.EX2 (relative error ~2^-22; results below 2^-126 flush to 0, -inf gives 0): exp2f adds a
// range check and two multiplies around it to keep denormal results, which softmax weights do not need.
__device__ __forceinline__ float exp2_approx(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

__device__ __forceinline__ std::uint32_t half2_bits(__half2 h) { return *reinterpret_cast<std::uint32_t*>(&h); }
__device__ __forceinline__ __half2 bits_half2(std::uint32_t u) { return *reinterpret_cast<__half2*>(&u); }

// (low, high) floats -> one register of two fp16, round to nearest.
__device__ __forceinline__ std::uint32_t pack_half2(float low, float high) {
  return half2_bits(__floats2half2_rn(low, high));
}

// fp16 bits of an integer |n| < 2048, or of 2^-k: compile-time constants (cuda_fp16's conversions are inline
// assembly, which the compiler cannot fold, so a constant built with them costs an instruction at every use).
__host__ __device__ constexpr std::uint32_t half_bits_of_integer(int n) {
  if (n == 0) return 0;
  const std::uint32_t sign = n < 0 ? 0x8000u : 0u;
  const int magnitude = n < 0 ? -n : n;
  int exponent = 0;
  while ((magnitude >> (exponent + 1)) != 0) ++exponent;
  const std::uint32_t mantissa = (static_cast<std::uint32_t>(magnitude) << (10 - exponent)) & 0x3FFu;
  return sign | static_cast<std::uint32_t>(exponent + 15) << 10 | mantissa;
}
__host__ __device__ constexpr std::uint32_t half_bits_of_inverse_power_of_two(int k) { return static_cast<std::uint32_t>(15 - k) << 10; }
__host__ __device__ constexpr std::uint32_t both_halves(std::uint32_t bits) { return bits | bits << 16; }
static_assert(half_bits_of_integer(1024) == 0x6400u && half_bits_of_integer(1032) == 0x6408u &&
              half_bits_of_integer(-264) == 0xDC20u && half_bits_of_integer(1) == 0x3C00u &&
              half_bits_of_inverse_power_of_two(4) == 0x2C00u);

// fp16 pair from 16-bit fields: `(x & mask) | 0x6400` is 1024 + code * multiplier for codes of up to 10 bits
// (the "magic number" conversion); `fma(v, 1/multiplier, -(1024/multiplier + offset))` then gives code - offset
// exactly, since every intermediate is a small integer or a power-of-two multiple of one.
// (x & mask) | bits in one LOP3: written in C++ the compiler emits two, since each takes only one immediate.
template <std::uint32_t Mask, std::uint32_t Bits>
__device__ __forceinline__ std::uint32_t and_or(std::uint32_t x) {
  std::uint32_t y;
  asm("lop3.b32 %0, %1, %2, %3, 0xEA;\n" : "=r"(y) : "r"(x), "n"(Mask), "n"(Bits));
  return y;
}

template <std::uint32_t Mask, int Multiplier, int Offset>
__device__ __forceinline__ __half2 magic_codes(std::uint32_t x) {
  const std::uint32_t biased = and_or<Mask | (Mask << 16), 0x64006400u>(x);
  if constexpr (Multiplier == 1) {
    constexpr std::uint32_t bias = both_halves(half_bits_of_integer(1024 + Offset));
    return __hsub2(bits_half2(biased), bits_half2(bias));
  } else {
    constexpr int log2_multiplier = Multiplier == 4 ? 2 : Multiplier == 16 ? 4 : Multiplier == 64 ? 6 : -1;
    static_assert(log2_multiplier > 0, "kvq: magic_codes multipliers are 4, 16 and 64");
    constexpr std::uint32_t scale = both_halves(half_bits_of_inverse_power_of_two(log2_multiplier));
    constexpr std::uint32_t bias = both_halves(half_bits_of_integer(-(1024 / Multiplier + Offset)));
    return __hfma2(bits_half2(biased), bits_half2(scale), bits_half2(bias));
  }
}

}  // namespace kvq::cuda::detail

namespace kvq::cuda::detail {

// Asynchronous 16-byte global -> shared copies (cp.async, sm_80+), completed per thread in commit groups.
__device__ __forceinline__ void copy_async_16(void* shared, const void* global) {
  const unsigned address = static_cast<unsigned>(__cvta_generic_to_shared(shared));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(address), "l"(global) : "memory");
}
__device__ __forceinline__ void commit_async_copies() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
// Waits until at most `Pending` of this thread's commit groups are still in flight.
template <int Pending>
__device__ __forceinline__ void wait_async_copies() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(Pending) : "memory");
}

// ldmatrix: four 8x8 fp16 matrices from shared memory; lanes 8i..8i+7 give the row addresses (16-byte aligned) of
// matrix i, and lane (g, t) receives (row g, cols 2t, 2t+1) of matrix i in r[i] (`_trans`: of its transpose).
__device__ __forceinline__ void load_matrices_x4(std::uint32_t (&r)[4], const void* shared_row) {
  const unsigned address = static_cast<unsigned>(__cvta_generic_to_shared(shared_row));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(address));
}
__device__ __forceinline__ void load_matrices_x4_trans(std::uint32_t (&r)[4], const void* shared_row) {
  const unsigned address = static_cast<unsigned>(__cvta_generic_to_shared(shared_row));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(address));
}

}  // namespace kvq::cuda::detail

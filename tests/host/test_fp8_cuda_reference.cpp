// kvq's software conversions against the CUDA toolkit's own host implementations (cuda_fp8.h, cuda_fp16.h,
// cuda_bf16.h), which model what the hardware converters do. Needs the CUDA headers, not a GPU.
#include <doctest/doctest.h>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include <cstring>
#include <random>

#include "kvq/core/float16.hpp"
#include "kvq/core/float8.hpp"

TEST_CASE("software fp8/fp16/bf16 encoders give the CUDA toolkit's bits") {
  std::mt19937 rng(std::random_device{}());
  auto check = [](float x) {
    if (x != x) return;  // NaN: kvq never converts NaN (poisoned groups store a canonical NaN scale instead)
    REQUIRE(kvq::float_to_fp8<kvq::Fp8Format::e4m3>(x) == __nv_cvt_float_to_fp8(x, __NV_SATFINITE, __NV_E4M3));
    REQUIRE(kvq::float_to_fp8<kvq::Fp8Format::e5m2>(x) == __nv_cvt_float_to_fp8(x, __NV_SATFINITE, __NV_E5M2));
    const __half h = __float2half_rn(x);
    std::uint16_t hb;
    std::memcpy(&hb, &h, 2);
    REQUIRE(kvq::to_f16(x).bits == hb);
    const __nv_bfloat16 b = __float2bfloat16_rn(x);
    std::uint16_t bb;
    std::memcpy(&bb, &b, 2);
    REQUIRE(kvq::to_bf16(x).bits == bb);
  };
  // Every value near the fp8 range at fine spacing, then random bit patterns.
  for (std::uint32_t bits = 0x30000000u; bits < 0x48000000u; bits += 0x1001u) {
    float x;
    std::memcpy(&x, &bits, 4);
    check(x);
    check(-x);
  }
  for (int i = 0; i < 2000000; ++i) {
    const std::uint32_t bits = rng();
    float x;
    std::memcpy(&x, &bits, 4);
    check(x);
  }
  for (int code = 0; code < 256; ++code) {
    const __half_raw e4 = __nv_cvt_fp8_to_halfraw(static_cast<__nv_fp8_storage_t>(code), __NV_E4M3);
    const float reference = __half2float(__half(e4));
    const float ours = kvq::fp8_to_float<kvq::Fp8Format::e4m3>(static_cast<std::uint8_t>(code));
    if (reference != reference) {
      REQUIRE(ours != ours);
    } else {
      REQUIRE(ours == reference);
    }
    const __half_raw e5 = __nv_cvt_fp8_to_halfraw(static_cast<__nv_fp8_storage_t>(code), __NV_E5M2);
    const float reference5 = __half2float(__half(e5));
    const float ours5 = kvq::fp8_to_float<kvq::Fp8Format::e5m2>(static_cast<std::uint8_t>(code));
    if (reference5 != reference5) {
      REQUIRE(ours5 != ours5);
    } else {
      REQUIRE(ours5 == reference5);
    }
  }
}

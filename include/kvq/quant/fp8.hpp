// FP8 (E4M3 or E5M2) codes with one scale per token and head: x_hat = fp8(x / scale) * scale, where
// scale = max|x| / max_finite(format), rounded up into `scale_type` so no code saturates.
// Block: one token; codes: head_dim bytes (byte c = channel c, 4-byte aligned words of the 8-bit packing); meta: one scale.
// Error bound for finite input: relative 2^-(mantissa_bits+1) for normal codes, absolute
// scale * 2^(min_normal_exponent - mantissa_bits - 1) in the subnormal range.
#pragma once

#include <cmath>
#include <cstdint>

#include "kvq/core/float8.hpp"
#include "kvq/core/float_ops.hpp"
#include "kvq/core/macros.hpp"
#include "kvq/core/scale_storage.hpp"
#include "kvq/quant/concept.hpp"
#include "kvq/quant/uniform.hpp"

namespace kvq {

struct Fp8Config {
  Fp8Format format = Fp8Format::e4m3;
  int head_dim = 128;
  ScaleType scale_type = ScaleType::f16;
};

template <Fp8Config Config>
struct Fp8Policy {
  static_assert(Config.head_dim > 0 && Config.head_dim % 4 == 0, "kvq: Fp8Policy head_dim must be a multiple of 4");
  static_assert(Config.head_dim <= 1024, "kvq: Fp8Policy head_dim must be at most 1024");
  using Format = Fp8Traits<Config.format>;
  using Scale = ScaleStorage<Config.scale_type>;
  using Params = NoParams;

  static constexpr Fp8Config config = Config;
  static constexpr int head_dim = Config.head_dim;
  static constexpr int tokens_per_block = 1;
  // One scale per row, computed in prepare_block; the codes are then written in 32-channel slices, one per thread.
  static constexpr int slice_width = Config.head_dim % 32 == 0 ? 32 : Config.head_dim;
  static constexpr int groups_per_block = head_dim / slice_width;
  static constexpr int code_bytes_per_block = head_dim;
  static constexpr int meta_bytes_per_block = Scale::bytes;
  static constexpr bool rotated = false;
  static constexpr double bits_per_element = bits_per_element_of<code_bytes_per_block, meta_bytes_per_block, head_dim>;

  KVQ_HOST_DEVICE static void prepare_block(float* tile, int, BlockRef out, const Params&) {
    float magnitude = 0.0f;
    bool finite = true;
    for (int c = 0; c < head_dim; ++c) {
      finite = finite && detail::is_finite(tile[c]);
      magnitude = fmaxf(magnitude, fabsf(tile[c]));
    }
    typename Scale::type scale = Scale::round_up(detail::div_rn(magnitude, Format::max_finite));
    if (!finite || !detail::is_finite(Scale::decode(scale))) scale = Scale::nan();
    store_field(out.meta, 0, scale);
  }

  KVQ_HOST_DEVICE static bool quantize_group(float* tile, int, int slice, BlockRef out, const Params&) {
    const float scale = Scale::decode(load_field<typename Scale::type>(out.meta, 0));
    const bool finite = scale == scale;
    const float inverse = finite && scale > 0.0f ? detail::div_rn(1.0f, scale) : 0.0f;
    for (int c = slice * slice_width; c < (slice + 1) * slice_width; ++c)
      out.codes[c] = finite ? float_to_fp8<Config.format>(detail::mul_rn(tile[c], inverse)) : std::uint8_t{0};
    return finite || slice != 0;  // a poisoned row is reported once
  }

  KVQ_HOST_DEVICE static void dequantize(ConstBlockRef in, int, int channel_begin, int count, float* out,
                                         const Params&) {
    const float scale = Scale::decode(load_field<typename Scale::type>(in.meta, 0));
    for (int k = 0; k < count; ++k)
      out[k] = detail::mul_rn(fp8_to_float<Config.format>(in.codes[channel_begin + k]), scale);
  }
};

}  // namespace kvq

// Uniform integer quantization (KIVI, llama.cpp q4_0/q4_1 style), 2/3/4/8 bits.
//   asymmetric: x_hat = code * scale + zero, code in [0, 2^b - 1]; zero is the group minimum rounded down
//   symmetric:  x_hat = (code - 2^(b-1)) * scale, code - 2^(b-1) in [-(2^(b-1) - 1), 2^(b-1) - 1]
// Metadata per group: scale (and zero for asymmetric) in `scale_type`. Block meta layout:
//   scales[groups_per_block], then zeros[groups_per_block] (asymmetric only).
// Error bound for finite input: |x - x_hat| <= scale/2 (plus float rounding, see docs/policies.md).
#pragma once

#include <cmath>
#include <cstdint>

#include "kvq/core/float_ops.hpp"
#include "kvq/core/macros.hpp"
#include "kvq/core/scale_storage.hpp"
#include "kvq/quant/concept.hpp"
#include "kvq/quant/group_geometry.hpp"

namespace kvq {

struct UniformConfig {
  int bits = 4;
  int group_size = 32;
  int head_dim = 128;
  Axis axis = Axis::per_token;
  bool symmetric = false;
  ScaleType scale_type = ScaleType::f16;
};

struct NoParams {};

template <UniformConfig Config>
struct UniformPolicy {
  static_assert(Config.bits == 2 || Config.bits == 3 || Config.bits == 4 || Config.bits == 8,
                "kvq: UniformPolicy bits must be 2, 3, 4 or 8");
  using Geometry = GroupGeometry<Config.head_dim, Config.group_size, Config.axis, Config.bits>;
  using Scale = ScaleStorage<Config.scale_type>;
  using Params = NoParams;

  static constexpr UniformConfig config = Config;
  static constexpr int bits = Config.bits;
  static constexpr bool symmetric = Config.symmetric;
  static constexpr int head_dim = Config.head_dim;
  static constexpr int tokens_per_block = Geometry::tokens_per_block;
  static constexpr int groups_per_block = Geometry::groups_per_block;
  static constexpr int code_bytes_per_block = Geometry::code_bytes_per_block;
  static constexpr int meta_bytes_per_block = groups_per_block * Scale::bytes * (symmetric ? 1 : 2);
  static constexpr bool rotated = false;
  static constexpr double bits_per_element =
      bits_per_element_of<code_bytes_per_block, meta_bytes_per_block, Geometry::elements_per_block>;

  // Largest code (asymmetric) or largest magnitude (symmetric).
  static constexpr int levels = (1 << bits) - 1;
  static constexpr int symmetric_max = (1 << (bits - 1)) - 1;
  static constexpr int symmetric_offset = 1 << (bits - 1);

  KVQ_HOST_DEVICE static bool quantize_group(float* tile, int rows, int group, BlockRef out, const Params&) {
    float low = INFINITY, high = -INFINITY, magnitude = 0.0f;
    bool finite = true;
    for (int i = 0; i < Config.group_size; ++i) {
      const int row = Geometry::row_of(group, i);
      if (row >= rows) break;
      const float x = tile[row * head_dim + Geometry::channel_of(group, i)];
      finite = finite && detail::is_finite(x);
      low = fminf(low, x);
      high = fmaxf(high, x);
      magnitude = fmaxf(magnitude, fabsf(x));
    }
    std::uint8_t codes[Config.group_size] = {};
    typename Scale::type scale, zero{};
    float scale_value = 0.0f, zero_value = 0.0f;
    if (finite) {
      if constexpr (symmetric) {
        scale = Scale::round_up(detail::div_rn(magnitude, static_cast<float>(symmetric_max)));
      } else {
        zero = Scale::round_down(low);
        zero_value = Scale::decode(zero);
        scale = Scale::round_up(detail::div_rn(detail::sub_rn(high, zero_value), static_cast<float>(levels)));
      }
      scale_value = Scale::decode(scale);
      finite = detail::is_finite(scale_value) && detail::is_finite(zero_value);  // overflow of the storage type
    }
    if (finite) {
      const float inverse = scale_value > 0.0f ? detail::div_rn(1.0f, scale_value) : 0.0f;
      for (int i = 0; i < Config.group_size; ++i) {
        const int row = Geometry::row_of(group, i);
        if (row >= rows) break;
        const float x = tile[row * head_dim + Geometry::channel_of(group, i)];
        if constexpr (symmetric) {
          const float q = rintf(detail::mul_rn(x, inverse));
          const float clamped = fminf(fmaxf(q, -static_cast<float>(symmetric_max)), static_cast<float>(symmetric_max));
          codes[i] = static_cast<std::uint8_t>(static_cast<int>(clamped) + symmetric_offset);
        } else {
          const float q = rintf(detail::mul_rn(detail::sub_rn(x, zero_value), inverse));
          codes[i] = static_cast<std::uint8_t>(fminf(fmaxf(q, 0.0f), static_cast<float>(levels)));
        }
      }
    } else {
      scale = Scale::nan();
      zero = Scale::nan();
    }
    Geometry::store_codes(out.codes, group, codes);
    store_field(out.meta, group, scale);
    if constexpr (!symmetric) store_field(out.meta, groups_per_block + group, zero);
    return finite;
  }

  KVQ_HOST_DEVICE static void dequantize(ConstBlockRef in, int row, int channel_begin, int count, float* out,
                                         const Params&) {
    for (int k = 0; k < count; ++k) {
      const int channel = channel_begin + k;
      const int group = Geometry::group_of(row, channel);
      const float code = static_cast<float>(Geometry::load_code(in.codes, group, Geometry::index_of(row, channel)));
      const float scale = Scale::decode(load_field<typename Scale::type>(in.meta, group));
      if constexpr (symmetric) {
        out[k] = detail::mul_rn(code - static_cast<float>(symmetric_offset), scale);
      } else {
        const float zero = Scale::decode(load_field<typename Scale::type>(in.meta, groups_per_block + group));
        out[k] = detail::fma_rn(code, scale, zero);
      }
    }
  }
};

}  // namespace kvq

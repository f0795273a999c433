// Uniform integer quantization (KIVI, llama.cpp q4_0/q4_1 style), 2/3/4/8 bits.
//   asymmetric: x_hat = code * scale + zero, code in [0, 2^b - 1]; zero is the group minimum rounded down
//   symmetric:  x_hat = (code - 2^(b-1)) * scale, code - 2^(b-1) in [-(2^(b-1) - 1), 2^(b-1) - 1]
// Metadata per group: scale (and zero for asymmetric) in `scale_type`. Block meta layout:
//   scales[quantization_groups], then zeros[quantization_groups] (asymmetric only).
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
  // Per-token groups wider than one 32-code unit get their scales in prepare_block and are then encoded one unit
  // per thread; otherwise a work unit is a whole quantization group.
  static constexpr bool scales_in_prepare = Config.axis == Axis::per_token && Config.group_size > codes_per_unit;
  static constexpr int quantization_groups = Geometry::groups_per_block;
  static constexpr int units_per_group = Config.group_size / codes_per_unit;
  static constexpr int groups_per_block = scales_in_prepare ? head_dim / codes_per_unit : quantization_groups;
  static constexpr int code_bytes_per_block = Geometry::code_bytes_per_block;
  static constexpr int meta_bytes_per_block = quantization_groups * Scale::bytes * (symmetric ? 1 : 2);
  static constexpr bool rotated = false;
  static constexpr double bits_per_element =
      bits_per_element_of<code_bytes_per_block, meta_bytes_per_block, Geometry::elements_per_block>;

  // Largest code (asymmetric) or largest magnitude (symmetric).
  static constexpr int levels = (1 << bits) - 1;
  static constexpr int symmetric_max = (1 << (bits - 1)) - 1;
  static constexpr int symmetric_offset = 1 << (bits - 1);

  struct GroupScale {
    float scale, zero;
    bool finite;
  };

  // Statistics of one quantization group -> its stored scale and zero point (NaN if poisoned).
  KVQ_HOST_DEVICE static GroupScale compute_scale(const float* tile, int rows, int group, BlockRef out) {
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
    typename Scale::type scale = Scale::nan(), zero{};
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
    if (!finite) scale = zero = Scale::nan();
    store_field(out.meta, group, scale);
    if constexpr (!symmetric) store_field(out.meta, quantization_groups + group, zero);
    return {scale_value, zero_value, finite};
  }

  KVQ_HOST_DEVICE static GroupScale load_scale(const std::uint8_t* meta, int group) {
    const float scale = Scale::decode(load_field<typename Scale::type>(meta, group));
    const float zero = symmetric ? 0.0f : Scale::decode(load_field<typename Scale::type>(meta, quantization_groups + group));
    return {scale, zero, scale == scale};
  }

  // Codes of group elements [first, first + count) (zero for missing rows or a poisoned group).
  KVQ_HOST_DEVICE static void encode(const float* tile, int rows, int group, int first, int count, GroupScale s,
                                     std::uint8_t* codes) {
    const float inverse = s.finite && s.scale > 0.0f ? detail::div_rn(1.0f, s.scale) : 0.0f;
    for (int k = 0; k < count; ++k) {
      const int i = first + k;
      const int row = Geometry::row_of(group, i);
      codes[k] = 0;
      if (row >= rows || !s.finite) continue;
      const float x = tile[row * head_dim + Geometry::channel_of(group, i)];
      if constexpr (symmetric) {
        const float q = rintf(detail::mul_rn(x, inverse));
        const float clamped = fminf(fmaxf(q, -static_cast<float>(symmetric_max)), static_cast<float>(symmetric_max));
        codes[k] = static_cast<std::uint8_t>(static_cast<int>(clamped) + symmetric_offset);
      } else {
        const float q = rintf(detail::mul_rn(detail::sub_rn(x, s.zero), inverse));
        codes[k] = static_cast<std::uint8_t>(fminf(fmaxf(q, 0.0f), static_cast<float>(levels)));
      }
    }
  }

  KVQ_HOST_DEVICE static void prepare_block(float* tile, int rows, BlockRef out, const Params&)
    requires scales_in_prepare
  {
    for (int group = 0; group < quantization_groups; ++group) compute_scale(tile, rows, group, out);
  }

  KVQ_HOST_DEVICE static bool quantize_group(float* tile, int rows, int unit, BlockRef out, const Params&) {
    if constexpr (scales_in_prepare) {
      const int group = unit / units_per_group;
      const int first = unit % units_per_group * codes_per_unit;
      const GroupScale s = load_scale(out.meta, group);
      std::uint8_t codes[codes_per_unit];
      encode(tile, rows, group, first, codes_per_unit, s, codes);
      PackedUnit<bits>::pack(codes, out.codes + group * Geometry::code_bytes_per_group +
                                        first / codes_per_unit * PackedUnit<bits>::bytes);
      return s.finite || first != 0;
    } else {
      const GroupScale s = compute_scale(tile, rows, unit, out);
      std::uint8_t codes[Config.group_size];
      encode(tile, rows, unit, 0, Config.group_size, s, codes);
      Geometry::store_codes(out.codes, unit, codes);
      return s.finite;
    }
  }

  KVQ_HOST_DEVICE static void dequantize(ConstBlockRef in, int row, int channel_begin, int count, float* out,
                                         const Params&) {
    for (int k = 0; k < count; ++k) {
      const int channel = channel_begin + k;
      const int group = Geometry::group_of(row, channel);
      const float code = static_cast<float>(Geometry::load_code(in.codes, group, Geometry::index_of(row, channel)));
      const GroupScale s = load_scale(in.meta, group);
      if constexpr (symmetric) {
        out[k] = detail::mul_rn(code - static_cast<float>(symmetric_offset), s.scale);
      } else {
        out[k] = detail::fma_rn(code, s.scale, s.zero);
      }
    }
  }
};

}  // namespace kvq

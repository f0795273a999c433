// Dense-and-sparse quantization (KVQuant): up to `capacity` outliers per token are kept exactly in fp16 with
// their channel index; they are set to zero in the dense part, which goes through the inner policy.
// Outliers are either
//   - thresholds:          values outside per-channel [lower, upper] (Params::lower/upper, head_dim floats each,
//                          e.g. calibrated percentiles), most-exceeding first, or
//   - largest_magnitude:   the `capacity` largest |x| of the token (a fixed top fraction of the vector).
// Ties go to the lower channel. Non-finite values are never outliers; they poison the inner group holding them.
// Block meta layout: inner meta, then per row r < tokens_per_block: channels[capacity] (uint16, 0xFFFF = empty)
// and values[capacity] (fp16), rows one after another.
#pragma once

#include <cmath>
#include <cstdint>

#include "kvq/core/float16.hpp"
#include "kvq/core/float_ops.hpp"
#include "kvq/core/macros.hpp"
#include "kvq/core/scale_storage.hpp"
#include "kvq/quant/concept.hpp"

namespace kvq {

enum class OutlierSelection { thresholds, largest_magnitude };

struct OutlierConfig {
  int capacity = 1;
  OutlierSelection selection = OutlierSelection::largest_magnitude;
};

template <class InnerParams>
struct OutlierParams {
  InnerParams inner{};
  const float* lower = nullptr;  // thresholds only: head_dim floats
  const float* upper = nullptr;  // thresholds only: head_dim floats
};

template <QuantizationPolicy Inner, OutlierConfig Config>
struct OutlierPolicy {
  static_assert(Config.capacity >= 1 && Config.capacity <= Inner::head_dim,
                "kvq: outlier capacity must be between 1 and head_dim");
  static_assert(Inner::head_dim <= 0xFFFF, "kvq: outlier channel indices are 16-bit");
  static_assert(!Inner::rotated,
                "kvq: outliers are kept in the original domain; compose as RotatedPolicy<OutlierPolicy<...>>");
  using Params = OutlierParams<typename Inner::Params>;
  using InnerPolicy = Inner;

  static constexpr int capacity = Config.capacity;
  static constexpr int head_dim = Inner::head_dim;
  static constexpr int tokens_per_block = Inner::tokens_per_block;
  static constexpr int groups_per_block = Inner::groups_per_block;  // selection happens in prepare_block
  static constexpr int code_bytes_per_block = Inner::code_bytes_per_block;
  static constexpr int outlier_bytes_per_row = capacity * (2 + 2);
  static constexpr int meta_bytes_per_block = Inner::meta_bytes_per_block + tokens_per_block * outlier_bytes_per_row;
  static constexpr bool rotated = false;
  static constexpr double bits_per_element =
      bits_per_element_of<code_bytes_per_block, meta_bytes_per_block, tokens_per_block * head_dim>;
  static constexpr std::uint16_t empty_slot = 0xFFFF;

  KVQ_HOST_DEVICE static std::uint8_t* row_slots(std::uint8_t* meta, int row) {
    return meta + Inner::meta_bytes_per_block + row * outlier_bytes_per_row;
  }
  KVQ_HOST_DEVICE static const std::uint8_t* row_slots(const std::uint8_t* meta, int row) {
    return meta + Inner::meta_bytes_per_block + row * outlier_bytes_per_row;
  }

  // How far x lies outside what the dense part should hold; <= 0 means "not an outlier".
  KVQ_HOST_DEVICE static float excess(float x, int channel, const Params& params) {
    if (!detail::is_finite(x)) return 0.0f;
    if constexpr (Config.selection == OutlierSelection::largest_magnitude) {
      return fabsf(x);
    } else {
      return fmaxf(detail::sub_rn(params.lower[channel], x), detail::sub_rn(x, params.upper[channel]));
    }
  }

  KVQ_HOST_DEVICE static void prepare_block(float* tile, int rows, BlockRef out, const Params& params) {
    for (int row = 0; row < tokens_per_block; ++row) {
      std::uint8_t* slots = row_slots(out.meta, row);
      float* x = tile + row * head_dim;
      std::uint32_t taken[(head_dim + 31) / 32] = {};
      for (int slot = 0; slot < capacity; ++slot) {
        int best = -1;
        float best_excess = 0.0f;
        if (row < rows) {
          for (int c = 0; c < head_dim; ++c) {
            if (taken[c / 32] & (1u << (c % 32))) continue;
            const float e = excess(x[c], c, params);
            if (e > best_excess) {
              best_excess = e;
              best = c;
            }
          }
        }
        std::uint16_t channel = empty_slot;
        f16 value{0};
        if (best >= 0) {
          taken[best / 32] |= 1u << (best % 32);
          channel = static_cast<std::uint16_t>(best);
          value = to_f16(x[best]);
          x[best] = 0.0f;
        }
        store_field(slots, slot, channel);
        store_field(slots + 2 * capacity, slot, value);
      }
    }
    kvq::prepare_block<Inner>(tile, rows, out, params.inner);
  }

  KVQ_HOST_DEVICE static bool quantize_group(float* tile, int rows, int group, BlockRef out, const Params& params) {
    return Inner::quantize_group(tile, rows, group, out, params.inner);
  }

  KVQ_HOST_DEVICE static void dequantize(ConstBlockRef in, int row, int channel_begin, int count, float* out,
                                         const Params& params) {
    Inner::dequantize(in, row, channel_begin, count, out, params.inner);
    const std::uint8_t* slots = row_slots(in.meta, row);
    for (int slot = 0; slot < capacity; ++slot) {
      const int channel = load_field<std::uint16_t>(slots, slot);
      if (channel != empty_slot && channel >= channel_begin && channel < channel_begin + count)
        out[channel - channel_begin] = to_float(load_field<f16>(slots + 2 * capacity, slot));
    }
  }
};

}  // namespace kvq

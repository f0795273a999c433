// Unquantized fp16 storage as a policy: the baseline every quantized format is measured against, and a way to
// keep chosen layers (or keys only) at full precision in a tiered cache. Codes are the fp16 bits of each channel;
// there is no metadata. Finite values beyond fp16's range saturate to +-65504, as the cache's fp16 rows do; a
// 32-channel slice holding NaN or Inf is poisoned (stored as NaN) like a quantization group of the other policies.
#pragma once

#include <cstdint>
#include <cstring>

#include "kvq/core/float16.hpp"
#include "kvq/core/float_ops.hpp"
#include "kvq/core/macros.hpp"
#include "kvq/quant/concept.hpp"
#include "kvq/quant/uniform.hpp"

namespace kvq {

template <int HeadDim>
struct Fp16Policy {
  static_assert(HeadDim > 0 && HeadDim % 32 == 0, "kvq: Fp16Policy head_dim must be a positive multiple of 32");
  using Params = NoParams;

  static constexpr int head_dim = HeadDim;
  static constexpr int tokens_per_block = 1;
  static constexpr int slice_width = 32;
  static constexpr int groups_per_block = HeadDim / slice_width;
  static constexpr int code_bytes_per_block = 2 * HeadDim;
  static constexpr int meta_bytes_per_block = 0;
  static constexpr bool rotated = false;
  static constexpr double bits_per_element = 16.0;

  KVQ_HOST_DEVICE static bool quantize_group(float* tile, int, int slice, BlockRef out, const Params&) {
    bool finite = true;
    for (int c = slice * slice_width; c < (slice + 1) * slice_width; ++c) finite = finite && detail::is_finite(tile[c]);
    for (int c = slice * slice_width; c < (slice + 1) * slice_width; ++c) {
      const f16 h = finite ? to_f16_saturating(tile[c]) : f16{0x7E00};
      memcpy(out.codes + 2 * c, &h.bits, 2);
    }
    return finite;
  }

  KVQ_HOST_DEVICE static void dequantize(ConstBlockRef in, int, int channel_begin, int count, float* out,
                                         const Params&) {
    for (int k = 0; k < count; ++k) {
      f16 h;
      memcpy(&h.bits, in.codes + 2 * (channel_begin + k), 2);
      out[k] = to_float(h);
    }
  }
};

}  // namespace kvq

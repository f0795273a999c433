// Non-uniform codebook quantization (KVQuant "nuq"): each element is replaced by the index of its nearest
// centroid among 2^bits centroids supplied as data (Params::centroids, ascending, one set per layer or one per
// channel). With `normalize` (the KVQuant form) each group is first mapped to [-1, 1] by an offset (midrange) and
// a scale (half-range), and the centroids live in that normalised domain:
//   u = (x - offset) / scale, code = argmin_k |u - c_k| (ties: lower k), x_hat = c_code * scale + offset
// Without `normalize` the centroids are in the value domain and there is no metadata.
// Block meta layout (normalize): scales[groups_per_block], then offsets[groups_per_block].
#pragma once

#include <cmath>
#include <cstdint>

#include "kvq/core/float_ops.hpp"
#include "kvq/core/macros.hpp"
#include "kvq/core/scale_storage.hpp"
#include "kvq/quant/concept.hpp"
#include "kvq/quant/group_geometry.hpp"

namespace kvq {

struct CodebookConfig {
  int bits = 4;
  int group_size = 32;
  int head_dim = 128;
  Axis axis = Axis::per_token;
  bool normalize = true;
  bool per_channel_codebook = false;  // one centroid set per channel instead of one per layer
  ScaleType scale_type = ScaleType::f16;
};

struct CodebookParams {
  // [per_channel_codebook ? head_dim : 1][2^bits] floats, ascending within each set.
  const float* centroids = nullptr;
};

template <CodebookConfig Config>
struct CodebookPolicy {
  using Geometry = GroupGeometry<Config.head_dim, Config.group_size, Config.axis, Config.bits>;
  using Scale = ScaleStorage<Config.scale_type>;
  using Params = CodebookParams;

  static constexpr CodebookConfig config = Config;
  static constexpr int bits = Config.bits;
  static constexpr int centroid_count = 1 << bits;
  static constexpr int centroid_sets = Config.per_channel_codebook ? Config.head_dim : 1;
  static constexpr int head_dim = Config.head_dim;
  static constexpr int tokens_per_block = Geometry::tokens_per_block;
  static constexpr int groups_per_block = Geometry::groups_per_block;
  static constexpr int code_bytes_per_block = Geometry::code_bytes_per_block;
  static constexpr int meta_bytes_per_block = Config.normalize ? 2 * groups_per_block * Scale::bytes : 0;
  static constexpr bool rotated = false;
  static constexpr double bits_per_element =
      bits_per_element_of<code_bytes_per_block, meta_bytes_per_block, Geometry::elements_per_block>;

  KVQ_HOST_DEVICE static const float* centroids_for(const Params& params, int channel) {
    return params.centroids + (Config.per_channel_codebook ? channel * centroid_count : 0);
  }

  KVQ_HOST_DEVICE static std::uint8_t nearest(const float* centroids, float u) {
    int best = 0;
    float best_distance = fabsf(detail::sub_rn(u, centroids[0]));
    for (int k = 1; k < centroid_count; ++k) {
      const float distance = fabsf(detail::sub_rn(u, centroids[k]));
      if (distance < best_distance) {
        best_distance = distance;
        best = k;
      }
    }
    return static_cast<std::uint8_t>(best);
  }

  KVQ_HOST_DEVICE static bool quantize_group(float* tile, int rows, int group, BlockRef out, const Params& params) {
    float low = INFINITY, high = -INFINITY;
    bool finite = true;
    for (int i = 0; i < Config.group_size; ++i) {
      const int row = Geometry::row_of(group, i);
      if (row >= rows) break;
      const float x = tile[row * head_dim + Geometry::channel_of(group, i)];
      finite = finite && detail::is_finite(x);
      low = fminf(low, x);
      high = fmaxf(high, x);
    }
    typename Scale::type scale{}, offset{};
    float scale_value = 1.0f, offset_value = 0.0f;
    if constexpr (Config.normalize) {
      if (finite) {
        offset = Scale::nearest(detail::mul_rn(detail::add_rn(high, low), 0.5f));
        offset_value = Scale::decode(offset);
        scale = Scale::round_up(fmaxf(detail::sub_rn(high, offset_value), detail::sub_rn(offset_value, low)));
        scale_value = Scale::decode(scale);
        finite = detail::is_finite(offset_value) && detail::is_finite(scale_value);
      }
      if (!finite) scale = offset = Scale::nan();
    }
    std::uint8_t codes[Config.group_size] = {};
    if (finite) {
      const float inverse = scale_value > 0.0f ? detail::div_rn(1.0f, scale_value) : 0.0f;
      for (int i = 0; i < Config.group_size; ++i) {
        const int row = Geometry::row_of(group, i);
        if (row >= rows) break;
        const int channel = Geometry::channel_of(group, i);
        const float x = tile[row * head_dim + channel];
        const float u = Config.normalize ? detail::mul_rn(detail::sub_rn(x, offset_value), inverse) : x;
        codes[i] = nearest(centroids_for(params, channel), u);
      }
    }
    Geometry::store_codes(out.codes, group, codes);
    if constexpr (Config.normalize) {
      store_field(out.meta, group, scale);
      store_field(out.meta, groups_per_block + group, offset);
    }
    // Without metadata a non-finite input cannot be recorded; it is reported, and its code is centroid 0.
    return finite;
  }

  KVQ_HOST_DEVICE static void dequantize(ConstBlockRef in, int row, int channel_begin, int count, float* out,
                                         const Params& params) {
    for (int k = 0; k < count; ++k) {
      const int channel = channel_begin + k;
      const int group = Geometry::group_of(row, channel);
      const float centroid =
          centroids_for(params, channel)[Geometry::load_code(in.codes, group, Geometry::index_of(row, channel))];
      if constexpr (Config.normalize) {
        const float scale = Scale::decode(load_field<typename Scale::type>(in.meta, group));
        const float offset = Scale::decode(load_field<typename Scale::type>(in.meta, groups_per_block + group));
        out[k] = detail::fma_rn(centroid, scale, offset);
      } else {
        out[k] = centroid;
      }
    }
  }
};

}  // namespace kvq

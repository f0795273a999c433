// Rotation before quantization (QuaRot / TurboQuant idea): each token vector is multiplied by the orthogonal
// matrix R = H * diag(s) / sqrt(head_dim), H the Walsh-Hadamard matrix and s fixed pseudo-random signs drawn
// from Params::seed. Rotation spreads an outlier channel over all channels, so the inner policy sees flat,
// near-Gaussian groups. Stored values (and dequantize()) are in the ROTATED domain:
//   keys:    q . k = (R q) . (R k): rotate the query once with rotate_vector() and attend in the rotated domain;
//   values:  sum_i p_i v_i = R^T (sum_i p_i R v_i): attend in the rotated domain, then unrotate the output once.
// RotatedPolicy::unrotate() and kvq::dequantize_row(..., Domain::original) give the original domain.
#pragma once

#include <cstdint>

#include "kvq/core/float_ops.hpp"
#include "kvq/core/macros.hpp"
#include "kvq/quant/concept.hpp"

namespace kvq {

// Sign of channel c for a seed: one bit of a well-mixed 32-bit hash (the "lowbias32" integer hash).
KVQ_HOST_DEVICE KVQ_INLINE bool rotation_sign_negative(std::uint32_t seed, int channel) noexcept {
  std::uint32_t h = seed * 0x9E3779B9u + static_cast<std::uint32_t>(channel);
  h ^= h >> 16;
  h *= 0x7FEB352Du;
  h ^= h >> 15;
  h *= 0x846CA68Bu;
  h ^= h >> 16;
  return (h & 1u) != 0;
}

template <int N>
inline constexpr bool is_power_of_two = N > 0 && (N & (N - 1)) == 0;

// 1/sqrt(N) for a power of two N, as the nearest float.
template <int N>
inline constexpr float inverse_sqrt_power_of_two = [] {
  int log2 = 0;
  while ((1 << log2) < N) ++log2;
  float value = 1.0f;
  for (int i = 0; i < log2 / 2; ++i) value *= 0.5f;
  return log2 % 2 ? value * 0.70710678118654752440f : value;
}();

// Unnormalised in-place fast Walsh-Hadamard transform; each butterfly is one rounded add and one rounded
// subtract, so the result is the same bits wherever the same stages run.
template <int N>
KVQ_HOST_DEVICE KVQ_INLINE void fast_walsh_hadamard(float* x) noexcept {
  static_assert(is_power_of_two<N>, "kvq: the Walsh-Hadamard transform needs a power-of-two length");
  for (int half = 1; half < N; half *= 2)
    for (int start = 0; start < N; start += 2 * half)
      for (int j = start; j < start + half; ++j) {
        const float a = x[j], b = x[j + half];
        x[j] = detail::add_rn(a, b);
        x[j + half] = detail::sub_rn(a, b);
      }
}

// x <- H diag(s) x / sqrt(N)
template <int N>
KVQ_HOST_DEVICE KVQ_INLINE void rotate_vector(float* x, std::uint32_t seed) noexcept {
  for (int c = 0; c < N; ++c)
    if (rotation_sign_negative(seed, c)) x[c] = -x[c];
  fast_walsh_hadamard<N>(x);
  for (int c = 0; c < N; ++c) x[c] = detail::mul_rn(x[c], inverse_sqrt_power_of_two<N>);
}

// x <- diag(s) H x / sqrt(N), the inverse of rotate_vector (H is symmetric and H H = N I).
template <int N>
KVQ_HOST_DEVICE KVQ_INLINE void unrotate_vector(float* x, std::uint32_t seed) noexcept {
  fast_walsh_hadamard<N>(x);
  for (int c = 0; c < N; ++c) {
    x[c] = detail::mul_rn(x[c], inverse_sqrt_power_of_two<N>);
    if (rotation_sign_negative(seed, c)) x[c] = -x[c];
  }
}

template <class InnerParams>
struct RotationParams {
  InnerParams inner{};
  std::uint32_t seed = 0x6B7A5EEDu;
};

template <QuantizationPolicy Inner>
struct RotatedPolicy {
  static_assert(!Inner::rotated, "kvq: a policy is rotated at most once");
  static_assert(is_power_of_two<Inner::head_dim>, "kvq: RotatedPolicy needs a power-of-two head_dim");
  using Params = RotationParams<typename Inner::Params>;
  using InnerPolicy = Inner;

  static constexpr int head_dim = Inner::head_dim;
  static constexpr int tokens_per_block = Inner::tokens_per_block;
  static constexpr int groups_per_block = Inner::groups_per_block;  // rows are rotated in prepare_block
  static constexpr int code_bytes_per_block = Inner::code_bytes_per_block;
  static constexpr int meta_bytes_per_block = Inner::meta_bytes_per_block;
  static constexpr bool rotated = true;
  static constexpr double bits_per_element = Inner::bits_per_element;

  KVQ_HOST_DEVICE static void prepare_block(float* tile, int rows, BlockRef out, const Params& params) {
    for (int row = 0; row < rows; ++row) rotate_vector<head_dim>(tile + row * head_dim, params.seed);
    kvq::prepare_block<Inner>(tile, rows, out, params.inner);
  }

  KVQ_HOST_DEVICE static bool quantize_group(float* tile, int rows, int group, BlockRef out, const Params& params) {
    return Inner::quantize_group(tile, rows, group, out, params.inner);
  }

  KVQ_HOST_DEVICE static void dequantize(ConstBlockRef in, int row, int channel_begin, int count, float* out,
                                         const Params& params) {
    Inner::dequantize(in, row, channel_begin, count, out, params.inner);
  }

  // Maps one dequantized row (head_dim floats) back to the original domain.
  KVQ_HOST_DEVICE static void unrotate(float* row, const Params& params) {
    unrotate_vector<head_dim>(row, params.seed);
  }
};

}  // namespace kvq

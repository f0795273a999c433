// Shared by the host and device tests: the policies under test, fresh random inputs with heavy-tailed outlier
// channels, parameter data (codebooks, thresholds, seeds) and the error-bound oracles derived from each
// policy's math. Nothing here calls the library's quantizer: the oracles recompute what the stored metadata must
// be from the input alone.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "kvq/kvq.hpp"

namespace kvq::testing {

// ---- policies under test ---------------------------------------------------------------------------------------
using Int8Token = UniformPolicy<UniformConfig{.bits = 8, .group_size = 128, .head_dim = 128}>;
using Int4Token = UniformPolicy<UniformConfig{.bits = 4, .group_size = 32, .head_dim = 128}>;
using Int4TokenSymBf16 =
    UniformPolicy<UniformConfig{.bits = 4, .group_size = 64, .head_dim = 64, .symmetric = true, .scale_type = ScaleType::bf16}>;
using Int3TokenSym = UniformPolicy<UniformConfig{.bits = 3, .group_size = 32, .head_dim = 128, .symmetric = true}>;
using Int3Channel = UniformPolicy<UniformConfig{.bits = 3, .group_size = 32, .head_dim = 64, .axis = Axis::per_channel}>;
using Int2Channel = UniformPolicy<UniformConfig{.bits = 2, .group_size = 32, .head_dim = 128, .axis = Axis::per_channel}>;
using Int2TokenF32 =
    UniformPolicy<UniformConfig{.bits = 2, .group_size = 128, .head_dim = 128, .scale_type = ScaleType::f32}>;
using Fp8E4m3 = Fp8Policy<Fp8Config{.format = Fp8Format::e4m3, .head_dim = 128}>;
using Fp8E5m2F32 = Fp8Policy<Fp8Config{.format = Fp8Format::e5m2, .head_dim = 64, .scale_type = ScaleType::f32}>;
using Nuq4Token = CodebookPolicy<CodebookConfig{.bits = 4, .group_size = 32, .head_dim = 128}>;
using Nuq3ChannelPerChannelBook = CodebookPolicy<CodebookConfig{
    .bits = 3, .group_size = 32, .head_dim = 64, .axis = Axis::per_channel, .per_channel_codebook = true}>;
using Nuq2Raw = CodebookPolicy<CodebookConfig{.bits = 2, .group_size = 64, .head_dim = 64, .normalize = false}>;
using OutliersInt4 =
    OutlierPolicy<Int4Token, OutlierConfig{.capacity = 2, .selection = OutlierSelection::largest_magnitude}>;
using OutliersThresholdInt3Channel =
    OutlierPolicy<Int3Channel, OutlierConfig{.capacity = 1, .selection = OutlierSelection::thresholds}>;
using RotatedInt4 = RotatedPolicy<Int4Token>;
using RotatedOutliersNuq3 = RotatedPolicy<
    OutlierPolicy<CodebookPolicy<CodebookConfig{.bits = 3, .group_size = 32, .head_dim = 64}>, OutlierConfig{.capacity = 1}>>;

#define KVQ_TEST_POLICIES                                                                                      \
  kvq::testing::Int8Token, kvq::testing::Int4Token, kvq::testing::Int4TokenSymBf16, kvq::testing::Int3TokenSym, \
      kvq::testing::Int3Channel, kvq::testing::Int2Channel, kvq::testing::Int2TokenF32, kvq::testing::Fp8E4m3,  \
      kvq::testing::Fp8E5m2F32, kvq::testing::Nuq4Token, kvq::testing::Nuq3ChannelPerChannelBook,               \
      kvq::testing::Nuq2Raw, kvq::testing::OutliersInt4, kvq::testing::OutliersThresholdInt3Channel,            \
      kvq::testing::RotatedInt4, kvq::testing::RotatedOutliersNuq3

// RoPE of Llama-3.1-8B (config.json: rope_theta 500000, rope_scaling llama3 with these factors).
inline constexpr RopeConfig llama31_8b_rope{.theta = 500000.0f,
                                            .style = RopeStyle::half_split,
                                            .scaling = RopeScaling::llama3,
                                            .factor = 8.0f,
                                            .low_freq_factor = 1.0f,
                                            .high_freq_factor = 4.0f,
                                            .original_max_position = 8192};

// ---- random inputs ---------------------------------------------------------------------------------------------
inline std::uint32_t fresh_seed() { return std::random_device{}(); }

// fp16 activations like real K/V: N(0,1) per channel with a per-channel offset, two heavy-tailed outlier channels
// (Student-t with 3 degrees of freedom, x20) and an occasional large-magnitude token.
inline std::vector<f16> make_input(const TensorShape& shape, std::uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::student_t_distribution<float> heavy(3.0f);
  std::uniform_int_distribution<int> channel_pick(0, shape.head_dim - 1);
  const int outlier_a = channel_pick(rng), outlier_b = channel_pick(rng);
  std::vector<float> offset(shape.head_dim);
  for (float& o : offset) o = 0.3f * normal(rng);
  std::vector<f16> data(static_cast<std::size_t>(shape.elements()));
  std::size_t i = 0;
  for (std::int64_t t = 0; t < shape.tokens; ++t) {
    const float token_scale = (rng() % 17 == 0) ? 8.0f : 1.0f;
    for (int h = 0; h < shape.heads; ++h)
      for (int c = 0; c < shape.head_dim; ++c) {
        float x = (c == outlier_a || c == outlier_b) ? 20.0f * heavy(rng) : normal(rng) + offset[c];
        data[i++] = to_f16(fminf(fmaxf(x * token_scale, -60000.0f), 60000.0f));
      }
  }
  return data;
}

// ---- parameter data --------------------------------------------------------------------------------------------
// Builds P::Params from arrays generated deterministically from `seed`; `Source::add(std::vector<float>)` returns
// the pointer the policy will read (host memory for host tests, device memory for device tests).
template <class P>
struct ParamsBuilder;

template <class P>
  requires std::same_as<typename P::Params, NoParams>
struct ParamsBuilder<P> {
  template <class Source>
  static NoParams build(Source&, std::uint32_t) { return {}; }
};

template <class P>
  requires std::same_as<typename P::Params, CodebookParams>
struct ParamsBuilder<P> {
  // Sorted centroids: normalised codebooks spread over [-1, 1] (ends inside, so the bound's edge terms matter);
  // raw codebooks over the data range of N(0,1).
  static std::vector<float> centroids(std::uint32_t seed) {
    std::mt19937 rng(seed);
    const float spread = P::config.normalize ? 0.95f : 2.5f;
    std::uniform_real_distribution<float> jitter(-0.3f, 0.3f);
    std::vector<float> all;
    for (int set = 0; set < P::centroid_sets; ++set) {
      std::vector<float> book(P::centroid_count);
      for (int k = 0; k < P::centroid_count; ++k) {
        const float even = -spread + 2.0f * spread * (k + 0.5f + jitter(rng)) / P::centroid_count;
        book[k] = even;
      }
      std::sort(book.begin(), book.end());
      all.insert(all.end(), book.begin(), book.end());
    }
    return all;
  }
  template <class Source>
  static CodebookParams build(Source& source, std::uint32_t seed) {
    return CodebookParams{source.add(centroids(seed))};
  }
};

template <class P>
  requires requires { typename P::InnerPolicy; } && std::same_as<typename P::Params, OutlierParams<typename P::InnerPolicy::Params>>
struct ParamsBuilder<P> {
  template <class Source>
  static typename P::Params build(Source& source, std::uint32_t seed) {
    typename P::Params params;
    params.inner = ParamsBuilder<typename P::InnerPolicy>::build(source, seed + 1);
    std::mt19937 rng(seed);
    std::uniform_real_distribution<float> width(1.5f, 3.0f);
    std::vector<float> lower(P::head_dim), upper(P::head_dim);
    for (int c = 0; c < P::head_dim; ++c) {
      lower[c] = -width(rng);
      upper[c] = width(rng);
    }
    params.lower = source.add(lower);
    params.upper = source.add(upper);
    return params;
  }
};

template <class P>
  requires requires { typename P::InnerPolicy; } && std::same_as<typename P::Params, RotationParams<typename P::InnerPolicy::Params>>
struct ParamsBuilder<P> {
  template <class Source>
  static typename P::Params build(Source& source, std::uint32_t seed) {
    typename P::Params params;
    params.inner = ParamsBuilder<typename P::InnerPolicy>::build(source, seed + 1);
    params.seed = seed * 2654435761u + 12345u;
    return params;
  }
};

struct HostArrays {
  std::vector<std::vector<float>> arrays;
  const float* add(std::vector<float> values) {
    arrays.push_back(std::move(values));
    return arrays.back().data();
  }
};

// ---- error-bound oracles ---------------------------------------------------------------------------------------
// 2^-24: unit round-off of float. The oracles allow a few of these per operation the quantizer performs.
inline constexpr double float_unit = 1.0 / 16777216.0;

struct BoundFailure {
  std::string what;
};

// Relative width of one step of the scale storage type (how far rounding a scale up may move it).
template <ScaleType Type>
inline constexpr double scale_step = Type == ScaleType::f16 ? 1.0 / 1024 : Type == ScaleType::bf16 ? 1.0 / 128 : 4 * float_unit;
// Smallest positive value of the scale storage type (a scale rounded up from ~0 may land there).
template <ScaleType Type>
inline constexpr double scale_floor = Type == ScaleType::f16 ? 5.960464477539063e-08 : Type == ScaleType::bf16 ? 9.2e-41 : 1.4e-45;

template <class P>
struct BoundOracle;

// Gathers the valid elements of one group of a uniform/codebook geometry from a block tile.
template <class Geometry>
std::vector<std::pair<int, int>> group_elements(int rows, int group) {
  std::vector<std::pair<int, int>> out;
  for (int i = 0; i < Geometry::group_size; ++i)
    if (Geometry::row_of(group, i) < rows) out.emplace_back(Geometry::row_of(group, i), Geometry::channel_of(group, i));
  return out;
}

template <UniformConfig Config>
struct BoundOracle<UniformPolicy<Config>> {
  using P = UniformPolicy<Config>;
  static void check(const float* tile, int rows, ConstBlockRef block, const NoParams& params, std::vector<BoundFailure>& failures) {
    for (int group = 0; group < P::quantization_groups; ++group) {
      const auto elements = group_elements<typename P::Geometry>(rows, group);
      double low = INFINITY, high = -INFINITY, magnitude = 0;
      for (auto [r, c] : elements) {
        const double x = tile[r * P::head_dim + c];
        low = std::min(low, x), high = std::max(high, x), magnitude = std::max(magnitude, std::fabs(x));
      }
      const double scale = P::Scale::decode(load_field<typename P::Scale::type>(block.meta, group));
      const double zero = P::symmetric ? 0.0 : P::Scale::decode(load_field<typename P::Scale::type>(block.meta, P::quantization_groups + group));
      const double needed = P::symmetric ? magnitude / P::symmetric_max : (high - zero) / P::levels;
      // The stored scale is the smallest that covers the group, up to one step of its storage type.
      if (!(scale >= needed * (1 - 4 * float_unit) && scale <= needed * (1 + scale_step<Config.scale_type>) + scale_floor<Config.scale_type>))
        failures.push_back({"group " + std::to_string(group) + ": scale " + std::to_string(scale) + " for needed " + std::to_string(needed)});
      if (!P::symmetric && !(zero <= low && zero >= low - std::fabs(low) * scale_step<Config.scale_type> - scale_floor<Config.scale_type>))
        failures.push_back({"group " + std::to_string(group) + ": zero " + std::to_string(zero) + " for minimum " + std::to_string(low)});
      for (auto [r, c] : elements) {
        float value;
        P::dequantize(block, r, c, 1, &value, params);
        const double x = tile[r * P::head_dim + c];
        const double tolerance = scale * (0.5 + 1e-4) + 4 * float_unit * (std::fabs(x) + std::fabs(zero) + std::fabs(value));
        if (!(std::fabs(x - value) <= tolerance))
          failures.push_back({"row " + std::to_string(r) + " channel " + std::to_string(c) + ": x=" + std::to_string(x) +
                              " x_hat=" + std::to_string(value) + " tolerance " + std::to_string(tolerance)});
      }
    }
  }
};

template <Fp8Config Config>
struct BoundOracle<Fp8Policy<Config>> {
  using P = Fp8Policy<Config>;
  static void check(const float* tile, int, ConstBlockRef block, const NoParams& params, std::vector<BoundFailure>& failures) {
    double magnitude = 0;
    for (int c = 0; c < P::head_dim; ++c) magnitude = std::max(magnitude, std::fabs(double(tile[c])));
    const double scale = P::Scale::decode(load_field<typename P::Scale::type>(block.meta, 0));
    const double needed = magnitude / P::Format::max_finite;
    if (!(scale >= needed * (1 - 4 * float_unit) && scale <= needed * (1 + scale_step<Config.scale_type>) + scale_floor<Config.scale_type>))
      failures.push_back({"scale " + std::to_string(scale) + " for needed " + std::to_string(needed)});
    const double relative = std::ldexp(1.0, -(P::Format::mantissa_bits + 1));
    const double absolute = scale * std::ldexp(1.0, P::Format::min_normal_exponent - P::Format::mantissa_bits - 1);
    for (int c = 0; c < P::head_dim; ++c) {
      float value;
      P::dequantize(block, 0, c, 1, &value, params);
      const double x = tile[c];
      const double tolerance = (std::fabs(x) * relative + absolute) * (1 + 1e-6) + 4 * float_unit * std::fabs(x);
      if (!(std::fabs(x - value) <= tolerance))
        failures.push_back({"channel " + std::to_string(c) + ": x=" + std::to_string(x) + " x_hat=" + std::to_string(value)});
    }
  }
};

template <CodebookConfig Config>
struct BoundOracle<CodebookPolicy<Config>> {
  using P = CodebookPolicy<Config>;
  // Largest distance from any point of [-1, 1] (normalised) or the value itself (raw) to its nearest centroid.
  static double worst_gap(const float* book) {
    double worst = std::max(double(book[0]) + 1.0, 1.0 - double(book[P::centroid_count - 1]));
    for (int k = 1; k < P::centroid_count; ++k) worst = std::max(worst, (double(book[k]) - book[k - 1]) / 2);
    return worst;
  }
  static void check(const float* tile, int rows, ConstBlockRef block, const CodebookParams& params, std::vector<BoundFailure>& failures) {
    for (int group = 0; group < P::groups_per_block; ++group) {
      const auto elements = group_elements<typename P::Geometry>(rows, group);
      double low = INFINITY, high = -INFINITY;
      for (auto [r, c] : elements) low = std::min(low, double(tile[r * P::head_dim + c])), high = std::max(high, double(tile[r * P::head_dim + c]));
      double scale = 1, offset = 0;
      if constexpr (Config.normalize) {
        scale = P::Scale::decode(load_field<typename P::Scale::type>(block.meta, group));
        offset = P::Scale::decode(load_field<typename P::Scale::type>(block.meta, P::groups_per_block + group));
        const double needed = std::max(high - offset, offset - low);
        if (!(scale >= needed * (1 - 4 * float_unit) && scale <= needed * (1 + scale_step<Config.scale_type>) + scale_floor<Config.scale_type>))
          failures.push_back({"group " + std::to_string(group) + ": scale " + std::to_string(scale) + " for radius " + std::to_string(needed)});
        if (!(std::fabs(offset - (high + low) / 2) <= std::fabs(high + low) / 2 * scale_step<Config.scale_type> + scale_floor<Config.scale_type>))
          failures.push_back({"group " + std::to_string(group) + ": offset " + std::to_string(offset)});
      }
      for (auto [r, c] : elements) {
        const float* book = P::centroids_for(params, c);
        const double x = tile[r * P::head_dim + c];
        float value;
        P::dequantize(block, r, c, 1, &value, params);
        double tolerance;
        if constexpr (Config.normalize) {
          tolerance = scale * (worst_gap(book) + 1e-5) + 4 * float_unit * (std::fabs(x) + std::fabs(offset) + std::fabs(value));
        } else {  // raw: exactly the nearest centroid
          double best = INFINITY;
          for (int k = 0; k < P::centroid_count; ++k) best = std::min(best, std::fabs(x - book[k]));
          tolerance = best + 2 * float_unit * std::fabs(x);
        }
        if (!(std::fabs(x - value) <= tolerance))
          failures.push_back({"row " + std::to_string(r) + " channel " + std::to_string(c) + ": x=" + std::to_string(x) +
                              " x_hat=" + std::to_string(value) + " tolerance " + std::to_string(tolerance)});
      }
    }
  }
};

template <QuantizationPolicy Inner, OutlierConfig Config>
struct BoundOracle<OutlierPolicy<Inner, Config>> {
  using P = OutlierPolicy<Inner, Config>;
  static void check(const float* tile, int rows, ConstBlockRef block, const typename P::Params& params,
                    std::vector<BoundFailure>& failures) {
    std::vector<float> dense(tile, tile + P::tokens_per_block * P::head_dim);
    for (int r = 0; r < rows; ++r) {
      const std::uint8_t* slots = P::row_slots(block.meta, r);
      // Expected outliers: the `capacity` largest excesses (ties: lower channel), finite values only.
      std::vector<std::pair<double, int>> ranked;
      for (int c = 0; c < P::head_dim; ++c) {
        const double e = P::excess(tile[r * P::head_dim + c], c, params);
        if (e > 0) ranked.emplace_back(-e, c);
      }
      std::sort(ranked.begin(), ranked.end());
      for (int slot = 0; slot < P::capacity; ++slot) {
        const int channel = load_field<std::uint16_t>(slots, slot);
        const int expected = slot < static_cast<int>(ranked.size()) ? ranked[slot].second : P::empty_slot;
        if (channel != expected)
          failures.push_back({"row " + std::to_string(r) + " slot " + std::to_string(slot) + ": channel " +
                              std::to_string(channel) + " expected " + std::to_string(expected)});
        if (channel == P::empty_slot || channel >= P::head_dim) continue;
        float value;
        P::dequantize(block, r, channel, 1, &value, params);
        if (value != to_float(to_f16(tile[r * P::head_dim + channel])))
          failures.push_back({"row " + std::to_string(r) + ": outlier at channel " + std::to_string(channel) + " not exact"});
        dense[r * P::head_dim + channel] = 0.0f;
      }
    }
    // The dense part obeys the inner policy's bound; outlier channels are overwritten, so check them as zeros.
    std::vector<BoundFailure> inner;
    BoundOracle<Inner>::check(dense.data(), rows, block, params.inner, inner);
    for (auto& f : inner) failures.push_back({"dense part: " + f.what});
  }
};

template <QuantizationPolicy Inner>
struct BoundOracle<RotatedPolicy<Inner>> {
  using P = RotatedPolicy<Inner>;
  static void check(const float* tile, int rows, ConstBlockRef block, const typename P::Params& params,
                    std::vector<BoundFailure>& failures) {
    // The rotation itself is checked against an explicit Hadamard product in test_numeric.cpp.
    std::vector<float> rotated(tile, tile + P::tokens_per_block * P::head_dim);
    for (int r = 0; r < rows; ++r) rotate_vector<P::head_dim>(rotated.data() + r * P::head_dim, params.seed);
    for (int r = 0; r < rows; ++r) {
      double norm = 0, rotated_norm = 0;
      for (int c = 0; c < P::head_dim; ++c) norm += double(tile[r * P::head_dim + c]) * tile[r * P::head_dim + c],
                                             rotated_norm += double(rotated[r * P::head_dim + c]) * rotated[r * P::head_dim + c];
      if (std::fabs(std::sqrt(norm) - std::sqrt(rotated_norm)) > 1e-5 * std::sqrt(norm) + 1e-30)
        failures.push_back({"rotation is not norm-preserving in row " + std::to_string(r)});
    }
    std::vector<BoundFailure> inner;
    BoundOracle<Inner>::check(rotated.data(), rows, block, params.inner, inner);
    for (auto& f : inner) failures.push_back({"rotated domain: " + f.what});
  }
};

}  // namespace kvq::testing

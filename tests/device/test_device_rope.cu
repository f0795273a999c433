// GPU tests for RoPE (include/kvq/core/rope.hpp): sincos_exact and apply_rope / apply_inverse_rope on the device
// give exactly the bits of the host reference, so keys rotated on either side are interchangeable. Accuracy is the
// host tests' job (tests/host/test_rope.cpp); here only equality of bits is checked.
#include <doctest/doctest.h>

#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "../support/policy_fixtures.hpp"
#include "kvq/core/rope.hpp"
#include "../support/device_buffer.cuh"
#include "kvq/cuda/error.cuh"

using namespace kvq;
using kvq::testing::DeviceBuffer;

namespace {

template <class T>
std::size_t first_differing_element(const std::vector<T>& a, const std::vector<T>& b) {
  for (std::size_t i = 0; i < a.size(); ++i)
    if (std::memcmp(&a[i], &b[i], sizeof(T)) != 0) return i;
  return a.size();
}

__global__ void sincos_kernel(const double* angles, std::size_t count, double* sines, double* cosines) {
  for (std::size_t i = blockIdx.x * static_cast<std::size_t>(blockDim.x) + threadIdx.x; i < count;
       i += static_cast<std::size_t>(gridDim.x) * blockDim.x)
    sincos_exact(angles[i], &sines[i], &cosines[i]);
}

// One thread per head vector: the table travels by value in the kernel's parameters, as a consumer would pass it.
template <int HeadDim>
__global__ void rope_kernel(float* vectors, const std::int64_t* positions, int count, RopeTable<HeadDim> table,
                            RopeStyle style, bool inverse) {
  const int vector = blockIdx.x * blockDim.x + threadIdx.x;
  if (vector >= count) return;
  float x[HeadDim];
  for (int c = 0; c < HeadDim; ++c) x[c] = vectors[static_cast<std::size_t>(vector) * HeadDim + c];
  if (inverse)
    apply_inverse_rope<HeadDim>(x, positions[vector], table, style);
  else
    apply_rope<HeadDim>(x, positions[vector], table, style);
  for (int c = 0; c < HeadDim; ++c) vectors[static_cast<std::size_t>(vector) * HeadDim + c] = x[c];
}

template <int HeadDim>
void check_rope_matches_host(const RopeConfig& config, RopeStyle style, bool inverse, std::uint32_t seed) {
  CAPTURE(HeadDim);
  CAPTURE(config.theta);
  CAPTURE(static_cast<int>(config.scaling));
  CAPTURE(static_cast<int>(style));
  CAPTURE(inverse);
  const auto table = make_rope_table<HeadDim>(config);
  constexpr int count = 8192;
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::uniform_real_distribution<float> decade(-3.0f, 3.0f);
  std::uniform_int_distribution<std::int64_t> random_position(0, std::int64_t{1} << 20);
  std::vector<std::int64_t> positions(count);
  for (auto& position : positions) position = random_position(rng);
  // The edges: the first token, the end of Llama-3's training context, the top of the range, a negative position.
  positions[0] = 0;
  positions[1] = 8191;
  positions[2] = std::int64_t{1} << 20;
  positions[3] = -1;
  std::vector<float> vectors(static_cast<std::size_t>(count) * HeadDim);
  for (int v = 0; v < count; ++v) {
    const float scale = std::pow(10.0f, decade(rng));
    for (int c = 0; c < HeadDim; ++c) vectors[static_cast<std::size_t>(v) * HeadDim + c] = normal(rng) * scale;
  }

  std::vector<float> expected = vectors;
  for (int v = 0; v < count; ++v) {
    float* x = expected.data() + static_cast<std::size_t>(v) * HeadDim;
    if (inverse)
      apply_inverse_rope<HeadDim>(x, positions[v], table, style);
    else
      apply_rope<HeadDim>(x, positions[v], table, style);
  }

  DeviceBuffer<float> device_vectors(vectors);
  DeviceBuffer<std::int64_t> device_positions(positions);
  rope_kernel<HeadDim><<<(count + 127) / 128, 128>>>(device_vectors.get(), device_positions.get(), count, table,
                                                     style, inverse);
  cuda::check_launch("rope_kernel");
  cuda::check(cudaDeviceSynchronize(), "rope_kernel");
  const auto got = device_vectors.download();
  const std::size_t first = first_differing_element(got, expected);
  INFO("first differing float " << first << " (vector " << first / HeadDim << ", channel " << first % HeadDim
                                << ")");
  CHECK(std::memcmp(got.data(), expected.data(), got.size() * sizeof(float)) == 0);
}

}  // namespace

TEST_CASE("device sincos_exact is bit-identical to the host") {
  const std::uint32_t seed = testing::fresh_seed();
  INFO("seed " << seed);
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> rope_range(0.0, 2e6), negative(-2e6, 0.0), small(-4.0, 4.0),
      huge(-0x1p50, 0x1p50), exponent(-1000.0, 0.0);
  std::vector<double> angles;
  for (int i = 0; i < 1'000'000; ++i) {
    switch (i % 8) {
      case 0: angles.push_back(negative(rng)); break;
      case 1: angles.push_back(small(rng)); break;
      case 2: angles.push_back(huge(rng)); break;
      case 3: angles.push_back(std::exp2(exponent(rng))); break;
      case 4:  // next to a multiple of pi/2, where the reduction cancels
        angles.push_back(static_cast<double>(static_cast<long double>(rng() % 1'273'239) *
                                             (3.14159265358979323846264338327950288L / 2)));
        break;
      default: angles.push_back(rope_range(rng)); break;
    }
  }
  for (double special : {0.0, -0.0, 0x1p50, -0x1p50, 0x1p50 * (1 + 0x1p-52), 1e300,
                         std::numeric_limits<double>::infinity(), -std::numeric_limits<double>::infinity(),
                         std::numeric_limits<double>::quiet_NaN(), std::numeric_limits<double>::denorm_min()})
    angles.push_back(special);

  std::vector<double> expected_sines(angles.size()), expected_cosines(angles.size());
  for (std::size_t i = 0; i < angles.size(); ++i) sincos_exact(angles[i], &expected_sines[i], &expected_cosines[i]);

  DeviceBuffer<double> device_angles(angles);
  DeviceBuffer<double> sines(angles.size(), 0xFF), cosines(angles.size(), 0xFF);
  sincos_kernel<<<132 * 8, 256>>>(device_angles.get(), angles.size(), sines.get(), cosines.get());
  cuda::check_launch("sincos_kernel");
  cuda::check(cudaDeviceSynchronize(), "sincos_kernel");
  const auto got_sines = sines.download(), got_cosines = cosines.download();
  const std::size_t first_sine = first_differing_element(got_sines, expected_sines);
  const std::size_t first_cosine = first_differing_element(got_cosines, expected_cosines);
  INFO("first differing sine at angle index " << first_sine << ", cosine at " << first_cosine);
  CHECK(first_sine == angles.size());
  CHECK(first_cosine == angles.size());
}

TEST_CASE("device apply_rope and apply_inverse_rope are bit-identical to the host") {
  const std::uint32_t seed = testing::fresh_seed();
  INFO("seed " << seed);
  const RopeConfig llama3_unscaled{};
  const RopeConfig llama31_8b = testing::llama31_8b_rope;
  RopeConfig llama2{};
  llama2.theta = 10000.0f;
  std::uint32_t case_seed = seed;
  for (RopeStyle style : {RopeStyle::half_split, RopeStyle::interleaved})
    for (bool inverse : {false, true}) {
      check_rope_matches_host<128>(llama31_8b, style, inverse, ++case_seed);
      check_rope_matches_host<128>(llama3_unscaled, style, inverse, ++case_seed);
      check_rope_matches_host<64>(llama2, style, inverse, ++case_seed);
    }
}

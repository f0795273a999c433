// GPU tests: the device kernels produce exactly the bytes of the host reference (codes, metadata, poisoned
// counts) and the same dequantized values, for every built-in policy; the hardware converters agree with kvq's
// software converters on every float.
#include <doctest/doctest.h>

#include <cuda_runtime.h>

#include <cstring>
#include <memory>
#include <vector>

#include "../support/policy_fixtures.hpp"
#include "../support/device_buffer.cuh"
#include "kvq/cuda/kvq.cuh"

using namespace kvq;
using namespace kvq::testing;

namespace {


template <class T>
bool same_bytes(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0);
}

template <class T>
std::size_t first_difference(const std::vector<T>& a, const std::vector<T>& b) {
  const auto* x = reinterpret_cast<const unsigned char*>(a.data());
  const auto* y = reinterpret_cast<const unsigned char*>(b.data());
  for (std::size_t i = 0; i < a.size() * sizeof(T); ++i)
    if (x[i] != y[i]) return i;
  return static_cast<std::size_t>(-1);
}

template <class P, class Element>
void check_device_matches_host(std::int64_t tokens, int heads, std::uint32_t seed, bool inject_non_finite) {
  CAPTURE(tokens);
  CAPTURE(heads);
  INFO("seed " << seed);
  const TensorShape shape{tokens, heads, P::head_dim};
  const QuantizedTensorLayout<P> layout{shape};
  auto input16 = make_input(shape, seed);
  if (inject_non_finite && tokens > 3) {
    input16[(3 * heads + heads - 1) * P::head_dim + 7] = to_f16(NAN);
    input16[(1 * heads) * P::head_dim + 1] = to_f16(INFINITY);
  }
  std::vector<Element> input(input16.size());
  for (std::size_t i = 0; i < input.size(); ++i) input[i] = from_float<Element>(to_float(input16[i]));

  HostArrays host_arrays;
  DeviceArrays device_arrays;
  const auto host_params = ParamsBuilder<P>::build(host_arrays, seed);
  const auto device_params = ParamsBuilder<P>::build(device_arrays, seed);

  std::vector<std::uint8_t> codes(layout.code_bytes()), meta(layout.meta_bytes());
  const auto report = quantize_tensor<P, Element>(input, shape, codes, meta, host_params, NonFinitePolicy::poison);

  DeviceBuffer<Element> device_input(input);
  DeviceBuffer<std::uint8_t> device_codes(codes.size(), 0xCD), device_meta(meta.size(), 0xCD);
  DeviceBuffer<unsigned long long> poisoned(1, 0);
  cuda::quantize_tensor_async<P, Element>(device_input.get(), shape, device_codes.get(), device_meta.get(),
                                          device_params, poisoned.get(), nullptr);
  cuda::check(cudaDeviceSynchronize(), "quantize");
  const auto gpu_codes = device_codes.download(), gpu_meta = device_meta.download();
  INFO("first differing code byte " << first_difference(gpu_codes, codes) << ", meta byte "
                                     << first_difference(gpu_meta, meta));
  CHECK(same_bytes(gpu_codes, codes));
  CHECK(same_bytes(gpu_meta, meta));
  CHECK(poisoned.download()[0] == static_cast<unsigned long long>(report.poisoned_groups));
  if (inject_non_finite && tokens > 3) CHECK(report.poisoned_groups > 0);

  for (Domain domain : {Domain::stored, Domain::original}) {
    std::vector<f16> expected(shape.elements());
    dequantize_tensor<P, f16>(codes, meta, shape, expected, host_params, domain);
    DeviceBuffer<f16> output(expected.size(), 0xFF);  // poisoned: 0xFFFF is a NaN, unwritten elements show
    cuda::dequantize_tensor_async<P, f16>(device_codes.get(), device_meta.get(), shape, output.get(), device_params,
                                          domain, nullptr);
    cuda::check(cudaDeviceSynchronize(), "dequantize");
    const auto got = output.download();
    INFO("domain " << (domain == Domain::stored ? "stored" : "original") << ", first differing byte "
                   << first_difference(got, expected));
    CHECK(same_bytes(got, expected));
    // An output that is not 16-byte aligned (one element into a buffer) takes the scalar store path.
    DeviceBuffer<f16> shifted(expected.size() + 1, 0xFF);
    cuda::dequantize_tensor_async<P, f16>(device_codes.get(), device_meta.get(), shape, shifted.get() + 1,
                                          device_params, domain, nullptr);
    cuda::check(cudaDeviceSynchronize(), "dequantize unaligned");
    auto got_shifted = shifted.download();
    CHECK(got_shifted[0].bits == 0xFFFF);
    got_shifted.erase(got_shifted.begin());
    CHECK(same_bytes(got_shifted, expected));
  }
}

}  // namespace

TEST_CASE_TEMPLATE("device quantize/dequantize is bit-identical to the host reference", P, KVQ_TEST_POLICIES) {
  const std::uint32_t seed = fresh_seed();
  // 1 token, around a per-channel block (32), a page-like 4099 and 8 KV heads as in Llama-3.
  for (std::int64_t tokens : {1, 31, 33, 4099}) check_device_matches_host<P, f16>(tokens, 8, seed + tokens, false);
  check_device_matches_host<P, bf16>(257, 3, seed ^ 0x5555u, false);
  check_device_matches_host<P, float>(65, 2, seed ^ 0x7777u, false);
  check_device_matches_host<P, f16>(100, 4, seed ^ 0x9999u, true);  // NaN/Inf: same poisoned groups
}

TEST_CASE("empty tensors launch nothing and report nothing") {
  using P = Int4Token;
  DeviceBuffer<unsigned long long> poisoned(1, 0);
  cuda::quantize_tensor_async<P, f16>(nullptr, TensorShape{0, 8, 128}, nullptr, nullptr, {}, poisoned.get(), nullptr);
  cuda::dequantize_tensor_async<P, f16>(nullptr, nullptr, TensorShape{0, 8, 128}, nullptr, {}, Domain::original, nullptr);
  cuda::check(cudaDeviceSynchronize(), "sync");
  CHECK(poisoned.download()[0] == 0);
  auto wrong_head_dim = [] {
    cuda::quantize_tensor_async<P, f16>(nullptr, TensorShape{4, 8, 64}, nullptr, nullptr, {}, nullptr, nullptr);
  };
  CHECK_THROWS_AS(wrong_head_dim(), Error);
}

namespace {
// Converts every 32-bit pattern [begin, begin + count) with the hardware path and kvq's software path.
__global__ void compare_converters(std::uint64_t begin, std::uint64_t count, unsigned long long* mismatches) {
  unsigned long long local[4] = {0, 0, 0, 0};
  for (std::uint64_t i = blockIdx.x * static_cast<std::uint64_t>(blockDim.x) + threadIdx.x; i < count;
       i += static_cast<std::uint64_t>(gridDim.x) * blockDim.x) {
    const std::uint32_t bits = static_cast<std::uint32_t>(begin + i);
    const float x = __uint_as_float(bits);
    if (x != x) continue;  // NaN: never converted by kvq's quantizers
    local[0] += float_to_fp8<Fp8Format::e4m3>(x) != detail::float_to_fp8_software<Fp8Format::e4m3>(x);
    local[1] += float_to_fp8<Fp8Format::e5m2>(x) != detail::float_to_fp8_software<Fp8Format::e5m2>(x);
    local[2] += to_f16(x).bits != detail::float_to_f16_bits_software(x);
    local[3] += to_bf16(x).bits != detail::float_to_bf16_bits_software(x);
  }
  for (int k = 0; k < 4; ++k)
    if (local[k]) atomicAdd(&mismatches[k], local[k]);
}
}  // namespace

TEST_CASE("hardware fp8/fp16/bf16 conversion equals kvq's software conversion on all 2^32 floats") {
  DeviceBuffer<unsigned long long> mismatches(4, 0);
  compare_converters<<<132 * 16, 256>>>(0, std::uint64_t{1} << 32, mismatches.get());
  cuda::check_launch("compare_converters");
  cuda::check(cudaDeviceSynchronize(), "compare_converters");
  const auto counts = mismatches.download();
  CHECK(counts[0] == 0);
  CHECK(counts[1] == 0);
  CHECK(counts[2] == 0);
  CHECK(counts[3] == 0);
}

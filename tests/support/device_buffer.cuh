// Device memory for the GPU tests: filled with a chosen byte (0xFF is a NaN in every float type, so an element a
// kernel failed to write cannot match), or uploaded from a host vector; downloaded back for comparisons.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <memory>
#include <vector>

#include "kvq/cuda/error.cuh"

namespace kvq::testing {

template <class T>
class DeviceBuffer {
 public:
  DeviceBuffer(std::size_t count, int fill_byte) : count_(count) {
    kvq::cuda::check(cudaMalloc(&data_, count * sizeof(T) + 16), "cudaMalloc");  // never zero bytes
    kvq::cuda::check(cudaMemset(data_, fill_byte, count * sizeof(T) + 16), "cudaMemset");
  }
  explicit DeviceBuffer(const std::vector<T>& host) : DeviceBuffer(host.size(), 0) {
    if (!host.empty())
      kvq::cuda::check(cudaMemcpy(data_, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice), "upload");
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  ~DeviceBuffer() { cudaFree(data_); }

  [[nodiscard]] T* get() const { return data_; }
  [[nodiscard]] std::vector<T> download() const {
    std::vector<T> host(count_);
    if (count_ > 0) kvq::cuda::check(cudaMemcpy(host.data(), data_, count_ * sizeof(T), cudaMemcpyDeviceToHost), "download");
    return host;
  }

 private:
  T* data_ = nullptr;
  std::size_t count_;
};

// Parameter arrays (codebooks, thresholds) in device memory, for ParamsBuilder: built from the same seed as the
// host arrays, so host and device policies read the same values.
struct DeviceArrays {
  std::vector<std::unique_ptr<DeviceBuffer<float>>> buffers;
  const float* add(const std::vector<float>& values) {
    buffers.push_back(std::make_unique<DeviceBuffer<float>>(values));
    return buffers.back()->get();
  }
};

}  // namespace kvq::testing

// The seam between the GPU backend's entry points (gpu_backend.cu) and its compile-time instances: the backends
// of head_dim 64 and 128 are compiled in their own files (gpu_backend_64.cu, gpu_backend_128.cu), so that the
// two nvcc runs share the work and each instantiates one head_dim's presets.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <functional>
#include <memory>

#include "runtime/gpu_backend.hpp"

namespace kvq::llama::gpu {

// Fills the weights laid out by weight_layout() at `base` (gpu_weights.hpp).
using WeightFill = std::function<void(const WeightLayout& layout, std::uint8_t* base, cudaStream_t stream)>;

// kvq::Error(out_of_memory) with the breakdown when the plan exceeds `budget` (0: no budget of its own) or the
// backend's allocations exceed the device's free memory.
void check_memory_budget(const GpuMemoryPlan& plan, std::int64_t budget);

// Defined in gpu_backend.cuh, instantiated for 64 and 128 only.
template <int HeadDim>
std::unique_ptr<GpuBackend> make_backend_at(const LlamaConfig& config, const KvCacheOptions& kv, const GpuOptions& gpu,
                                            const WeightFill& fill);
template <int HeadDim>
GpuMemoryPlan plan_memory_at(const LlamaConfig& config, const KvCacheOptions& kv, const GpuOptions& gpu);

}  // namespace kvq::llama::gpu

// The GPU backend's entry points (gpu_backend.hpp): the head_dim dispatch onto gpu_backend_64.cu and
// gpu_backend_128.cu, the memory check, and the two weight sources.
#include <string>

#include "kvq/cache/presets.hpp"
#include "kvq/cuda/error.cuh"
#include "runtime/gpu_backend.hpp"
#include "runtime/gpu_backend_at.hpp"
#include "runtime/gpu_weights.hpp"

namespace kvq::llama {

bool gpu_available() {
  int count = 0;
  const cudaError_t status = cudaGetDeviceCount(&count);
  if (status != cudaSuccess) {
    cudaGetLastError();  // no driver or no device: not an error here, the answer is no
    return false;
  }
  return count > 0;
}

namespace gpu {

void check_memory_budget(const GpuMemoryPlan& plan, std::int64_t budget) {
  if (budget > 0 && plan.total() > budget)
    throw Error(ErrorCode::out_of_memory, "the GPU backend needs " + format_bytes(plan.total()) + " (" +
                                              std::to_string(plan.total()) + " bytes) but --mem-budget is " +
                                              format_bytes(budget) + " (" + std::to_string(budget) + " bytes):\n" +
                                              plan.table());
  std::size_t free_bytes = 0, total_bytes = 0;
  cuda::check(cudaMemGetInfo(&free_bytes, &total_bytes), "cudaMemGetInfo");
  if (plan.allocated() > static_cast<std::int64_t>(free_bytes))
    throw Error(ErrorCode::out_of_memory,
                "the GPU backend would allocate " + format_bytes(plan.allocated()) + " but the device has " +
                    format_bytes(static_cast<std::int64_t>(free_bytes)) + " free (of " +
                    format_bytes(static_cast<std::int64_t>(total_bytes)) + "):\n" + plan.table());
}

}  // namespace gpu

GpuMemoryPlan plan_gpu_memory(const LlamaConfig& config, const KvCacheOptions& kv, const GpuOptions& options) {
  return visit_preset_head_dim(config.head_dim,
                               [&]<int HeadDim>() { return gpu::plan_memory_at<HeadDim>(config, kv, options); });
}

std::unique_ptr<GpuBackend> make_gpu_backend(const LlamaModel& model, const KvCacheOptions& kv,
                                             const GpuOptions& options) {
  require_host_only_schemes_absent(kv);
  const gpu::WeightFill fill = [&](const WeightLayout& layout, std::uint8_t* base, cudaStream_t stream) {
    gpu::upload_weights(model, layout, base, stream);
  };
  return visit_preset_head_dim(model.config.head_dim, [&]<int HeadDim>() {
    return gpu::make_backend_at<HeadDim>(model.config, kv, options, fill);
  });
}

std::unique_ptr<GpuBackend> make_synthetic_gpu_backend(const LlamaConfig& config, const KvCacheOptions& kv,
                                                       const GpuOptions& options) {
  require_host_only_schemes_absent(kv);
  const gpu::WeightFill fill = [&](const WeightLayout& layout, std::uint8_t* base, cudaStream_t stream) {
    gpu::synthetic_weights(config, options.synthetic_seed, layout, base, stream);
  };
  return visit_preset_head_dim(config.head_dim,
                               [&]<int HeadDim>() { return gpu::make_backend_at<HeadDim>(config, kv, options, fill); });
}

}  // namespace kvq::llama

// The GPU backends of head_dim 64: every kvq preset at 64 (gpu_backend_at.hpp says why the head_dims are split).
#include "runtime/gpu_backend.cuh"

namespace kvq::llama::gpu {

template std::unique_ptr<GpuBackend> make_backend_at<64>(const LlamaConfig&, const KvCacheOptions&, const GpuOptions&,
                                                         const WeightFill&);
template GpuMemoryPlan plan_memory_at<64>(const LlamaConfig&, const KvCacheOptions&, const GpuOptions&);

}  // namespace kvq::llama::gpu

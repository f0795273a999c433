// The GPU backends of head_dim 128: every kvq preset at 128 (gpu_backend_at.hpp says why the head_dims are split).
#include "runtime/gpu_backend.cuh"

namespace kvq::llama::gpu {

template std::unique_ptr<GpuBackend> make_backend_at<128>(const LlamaConfig&, const KvCacheOptions&, const GpuOptions&,
                                                          const WeightFill&);
template GpuMemoryPlan plan_memory_at<128>(const LlamaConfig&, const KvCacheOptions&, const GpuOptions&);

}  // namespace kvq::llama::gpu

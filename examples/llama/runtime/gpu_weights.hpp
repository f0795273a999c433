// Filling the GPU backend's weights (gpu_memory.hpp's WeightLayout, at `base` in device memory): a loaded model's
// float weights rounded to fp16, or seeded random fp16 weights generated on the device.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "model/llama_model.hpp"
#include "runtime/gpu_memory.hpp"

namespace kvq::llama::gpu {

// Synchronous: returns when the copies are done (the model may go then).
void upload_weights(const LlamaModel& model, const WeightLayout& layout, std::uint8_t* base, cudaStream_t stream);

// Matrices uniform in +-sqrt(3 / inputs) (unit variance out for unit variance in), the embedding in +-1, RMSNorm
// weights 1: activations of a plausible size at every depth. Asynchronous on `stream`.
void synthetic_weights(const LlamaConfig& config, std::uint64_t seed, const WeightLayout& layout, std::uint8_t* base,
                       cudaStream_t stream);

}  // namespace kvq::llama::gpu

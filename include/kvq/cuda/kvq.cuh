// Umbrella header for kvq with its device kernels (needs nvcc / CUDA 13).
#pragma once

#include "kvq/cuda/decode_attention.cuh"
#include "kvq/cuda/dequantize_range.cuh"
#include "kvq/cuda/error.cuh"
#include "kvq/cuda/paged_cache.cuh"
#include "kvq/cuda/prefill_attention.cuh"
#include "kvq/cuda/quantize_tensor.cuh"
#include "kvq/kvq.hpp"

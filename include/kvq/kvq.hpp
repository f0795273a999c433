// Umbrella header for kvq's host-compilable parts. Device kernels: #include <kvq/cuda/kvq.cuh>. Not included:
// kvq/planner/hf_config.hpp, which needs nlohmann/json.
#pragma once

#include "kvq/attention/decode_plan.hpp"
#include "kvq/attention/importance.hpp"
#include "kvq/attention/prefill_shape.hpp"
#include "kvq/cache/cache_config.hpp"
#include "kvq/cache/host_paged_cache.hpp"
#include "kvq/cache/layer_tiers.hpp"
#include "kvq/cache/page_layout.hpp"
#include "kvq/cache/presets.hpp"
#include "kvq/cache/sequence_table.hpp"
#include "kvq/cache/token_address.hpp"
#include "kvq/core/element.hpp"
#include "kvq/core/error.hpp"
#include "kvq/core/float16.hpp"
#include "kvq/core/float8.hpp"
#include "kvq/core/rope.hpp"
#include "kvq/core/scale_storage.hpp"
#include "kvq/host/decode_attention.hpp"
#include "kvq/host/prefill_attention.hpp"
#include "kvq/host/quantize_tensor.hpp"
#include "kvq/planner/memory_plan.hpp"
#include "kvq/planner/model_presets.hpp"
#include "kvq/planner/model_shape.hpp"
#include "kvq/quant/codebook.hpp"
#include "kvq/quant/concept.hpp"
#include "kvq/quant/fp16.hpp"
#include "kvq/quant/fp8.hpp"
#include "kvq/quant/gaussian_codebook.hpp"
#include "kvq/quant/outliers.hpp"
#include "kvq/quant/packing.hpp"
#include "kvq/quant/rotation.hpp"
#include "kvq/quant/tensor_layout.hpp"
#include "kvq/quant/uniform.hpp"
#include "kvq/version.hpp"

namespace kvq {
// Built-in policies must satisfy the concept they document.
static_assert(QuantizationPolicy<UniformPolicy<UniformConfig{}>>);
static_assert(QuantizationPolicy<Fp8Policy<Fp8Config{}>>);
static_assert(QuantizationPolicy<Fp16Policy<128>>);
static_assert(QuantizationPolicy<CodebookPolicy<CodebookConfig{}>>);
static_assert(QuantizationPolicy<OutlierPolicy<UniformPolicy<UniformConfig{}>, OutlierConfig{}>>);
static_assert(QuantizationPolicy<RotatedPolicy<UniformPolicy<UniformConfig{}>>>);
}  // namespace kvq

// The memory planner: what a model with a kvq KV preset needs on one GPU, part by part, and the largest context
// that fits. Analytical, host-only, no GPU queried. Every assumption is a named field or stated below; the
// KV cache part is not a formula but the cache's own accounting (CacheState::storage_memory on the config the
// cache would be built with), so the planner and the allocator cannot drift apart.
//
//   weights     16-bit embeddings, output projection (unless tied) and RMSNorm weights; the seven projections of
//               every layer in the chosen type. int8/int4: symmetric codes plus one fp16 scale per group of
//               `weight_group_size` input features (rounded up per row): 8 + 16/128 = 8.125 and 4 + 16/128 =
//               4.125 bits per weight at the default 128.
//   KV cache    pages for every sequence at its full context (the cache's default pool), fp16 sinks and window,
//               and the device cache's page table, lengths, quantized counts and plan entries.
//   workspace   the larger of a prefill step (one sequence, `prefill_chunk_tokens` tokens) and a decode step
//               (one token for each of `batch` sequences), each the sum of its buffers, none reused, as kvq's
//               reference engine (examples/llama, GPU backend) lays them out: products accumulate and come out of
//               cuBLAS in fp32, their 16-bit inputs are separate buffers.
//                 hidden states   fp32 residual stream + its fp16 RMSNorm output: tokens x hidden x (4 + 2)
//                 projections     the fused q/k/v product (fp32), the rotated queries (fp32), the keys and
//                                 values handed to the cache (fp16), the attention output (fp16)
//                 MLP             the fused gate/up product (fp32) and the SwiGLU output (fp16):
//                                 tokens x intermediate x (2 x 4 + 2)
//                 logits          fp32 x vocab for the rows that are scored: a prefill chunk's last token
//                                 (generation; `prefill_logits`), or every token (scoring a text, as kvq_eval
//                                 does: 1 GiB for a 2048-token chunk of a 128K vocabulary); decode: one per sequence
//                 attention       prefill: none (kvq::cuda::prefill_attention_async reads the pages in tiles
//                                 through shared memory and takes no workspace, whatever the context);
//                                 decode: the split-KV partials of plan_decode(), the decode kernel's own query
//               An engine with 16-bit activations throughout needs about half of the non-logit part.
//   library     the matrix library's workspace (`library_workspace_bytes`, 32 MiB: what the reference engine gives
//               cuBLAS with cublasSetWorkspace, NVIDIA's advice for Hopper)
//   budgets     `kept_tokens` (token eviction, kvq/cache/eviction.hpp): the cache holds at most that many tokens of
//               each sequence, so pages, decode workspace and the prefill's K/V read are sized for
//               min(context, kept_tokens); kv_bits_per_element() is what those bytes cost per element of the
//               WHOLE context, and kept_tokens_for_bits() turns a bits-per-element budget into a token budget
//               (e.g. int8 keeping half of the tokens costs what 4.25-bit storage of all of them would);
//               `promoted_fraction` (per-token precision tiers, kvq/cache/promoted_tokens.hpp): int8 copies of that
//               fraction of the quantized tokens per layer and KV head, records and token indices, and the fp16
//               window widened to `promotion_window_tokens` (the observation period) if the preset's is shorter
//   CUDA context  a stated constant (`cuda_context_bytes`): what a process holds on the device beyond its own
//               allocations (driver, context, cuBLAS handle, kernel images, allocation rounding). The default,
//               630 MiB, is the larger of what the reference example held on an H200 (CUDA 13.0, driver 580)
//               beyond its allocations in 256-token runs, rounded up: 0.59 GiB (Llama-3.2-1B), 0.61 GiB
//               (Llama-3-8B), of which 527 MiB before its first allocation. Rounded up, so that a plan that says
//               "fits" errs on the safe side. Other GPUs and drivers differ; measure yours (kvq_llama prints it).
//
// The naive estimate is the founding notes' formula, kept beside the plan so that the GQA correction is visible:
// weights + 2 * layers * QUERY heads * head_dim * bits/8 * tokens, nothing else. Llama-3 stores only its 8 KV
// heads, so for the 8B model (32 query heads) the naive KV is 4x too big.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <optional>
#include <string>
#include <string_view>

#include "kvq/attention/decode_plan.hpp"
#include "kvq/cache/cache_config.hpp"
#include "kvq/cache/cache_state.hpp"
#include "kvq/cache/layer_view.hpp"
#include "kvq/cache/presets.hpp"
#include "kvq/cache/promoted_tokens.hpp"
#include "kvq/core/error.hpp"
#include "kvq/planner/model_shape.hpp"

namespace kvq {

inline constexpr std::int64_t mebibyte = std::int64_t{1} << 20;
inline constexpr std::int64_t gibibyte = std::int64_t{1} << 30;

enum class WeightType { fp16, bf16, int8, int4 };

[[nodiscard]] constexpr std::string_view to_string(WeightType type) noexcept {
  switch (type) {
    case WeightType::fp16: return "fp16";
    case WeightType::bf16: return "bf16";
    case WeightType::int8: return "int8";
    case WeightType::int4: return "int4";
  }
  return "?";
}

[[nodiscard]] inline WeightType parse_weight_type(std::string_view name) {
  for (WeightType type : {WeightType::fp16, WeightType::bf16, WeightType::int8, WeightType::int4})
    if (name == to_string(type)) return type;
  throw Error(ErrorCode::invalid_argument, "unknown weight type \"" + std::string(name) + "\"; known: fp16, bf16, int8, int4");
}

// Which tokens of a prefill chunk get logits (the LM head's output, fp32 x vocab each).
enum class PrefillLogits {
  last_token,   // generation: only the next token after the prompt is sampled
  every_token,  // scoring a text (perplexity, KL divergence): every position's next-token distribution
};

struct PlanAssumptions {
  int prefill_chunk_tokens = 2048;
  PrefillLogits prefill_logits = PrefillLogits::last_token;
  std::int64_t library_workspace_bytes = 32 * mebibyte;  // cuBLAS's (cublasSetWorkspace)
  int page_tokens = 256;                          // the cache's page size; a multiple of the preset's flush unit
  int weight_group_size = 128;                    // int8/int4 weights: input features per fp16 scale
  int sm_count = 132;                             // H100 SXM; sizes the decode split-KV workspace
  std::int64_t cuda_context_bytes = 630 * mebibyte;
};

struct PlanRequest {
  ModelShape model;
  WeightType weights = WeightType::bf16;
  std::string kv_preset = "fp16";
  int batch = 1;              // sequences, each at `context` tokens
  std::int64_t context = 0;   // tokens per sequence
  PlanAssumptions assumptions{};
  std::optional<std::int64_t> weight_bytes{};  // exact bytes when known (e.g. a GGUF file's tensors): replaces the estimate
  std::optional<std::int64_t> kept_tokens{};   // eviction budget: tokens the cache keeps per sequence (none: all)
  std::optional<double> promoted_fraction{};   // int8 copies of this fraction of the quantized tokens (none: 0)
  int promotion_window_tokens = 32;            // the fp16 window promotion needs, at least

  // Tokens the cache holds per sequence at the full context.
  [[nodiscard]] std::int64_t held_tokens() const { return kept_tokens ? std::min(context, *kept_tokens) : context; }
};

struct WeightBytes {
  ParameterCount parameters;
  std::int64_t embedding = 0, output = 0, norms = 0;
  std::int64_t linear = 0;         // the projections, scales included
  std::int64_t linear_scales = 0;  // of which int8/int4 group scales
  std::optional<std::int64_t> exact{};  // PlanRequest::weight_bytes, when given
  [[nodiscard]] std::int64_t total() const { return exact ? *exact : embedding + output + norms + linear; }
};

struct KVCacheBytes {
  CacheConfig config;        // the cache the plan is for: every sequence at its full context
  CacheMemory storage;       // CacheState::storage_memory(config): pages, sinks, windows
  std::int64_t bookkeeping = 0;  // device cache: page table, lengths, quantized counts, plan entries
  std::int64_t outliers = 0;     // of storage.pool_bytes: the fp16 outlier slots of the pages
  double bytes_per_token_head = 0;  // one quantized token of one KV head, keys and values (policy records)
  std::int64_t promoted = 0;        // int8 copies of promoted tokens (PlanRequest::promoted_fraction)
  [[nodiscard]] std::int64_t total() const { return storage.total_bytes() + bookkeeping + promoted; }
};

struct StepWorkspace {
  std::int64_t tokens = 0;  // query tokens of the step
  std::int64_t hidden_states = 0, projections = 0, mlp = 0, logits = 0, attention = 0;
  [[nodiscard]] std::int64_t total() const { return hidden_states + projections + mlp + logits + attention; }
};

struct MemoryPlan {
  PresetInfo preset;
  WeightBytes weights;
  KVCacheBytes kv;
  StepWorkspace prefill, decode;
  std::int64_t library_workspace = 0;  // PlanAssumptions::library_workspace_bytes
  std::int64_t cuda_context = 0;
  [[nodiscard]] std::int64_t workspace() const { return std::max(prefill.total(), decode.total()); }
  [[nodiscard]] std::int64_t total() const {
    return weights.total() + kv.total() + workspace() + library_workspace + cuda_context;
  }
};

// What the planner refuses: beyond these the inputs are typos, not hardware.
struct PlanLimits {
  static constexpr int max_batch = 1 << 16;
  static constexpr int max_chunk = 1 << 20;
  static constexpr int max_page_tokens = 1 << 16;
  static constexpr int max_sm_count = 4096;
  static constexpr std::int64_t max_cuda_context = std::int64_t{1} << 40;
  static constexpr std::int64_t max_gpu_bytes = std::int64_t{1} << 50;  // 1 PiB
  // fp16-sized KV beyond this (an exabyte) is refused before any byte count can overflow; no context near it
  // fits max_gpu_bytes, even at 2 bits.
  static constexpr double max_fp16_kv_bytes = 1152921504606846976.0;  // 2^60
};

namespace detail {

// Bytes of one projection matrix stored as `type`.
inline std::int64_t linear_bytes(const LinearMatrix& m, WeightType type, int group_size, std::int64_t& scales) {
  const std::int64_t elements = m.inputs * m.outputs;
  const std::int64_t groups = (m.inputs + group_size - 1) / group_size * m.outputs;
  switch (type) {
    case WeightType::fp16:
    case WeightType::bf16: return m.count * elements * 2;
    case WeightType::int8: scales += m.count * groups * 2; return m.count * (elements + groups * 2);
    case WeightType::int4: scales += m.count * groups * 2; return m.count * ((elements + 1) / 2 + groups * 2);
  }
  return 0;
}

template <class P>
constexpr int outlier_bytes_per_row() {
  if constexpr (requires { P::outlier_bytes_per_row; }) {
    return P::outlier_bytes_per_row;
  } else if constexpr (requires { typename P::InnerPolicy; }) {
    return outlier_bytes_per_row<typename P::InnerPolicy>();
  } else {
    return 0;
  }
}

// The largest context per sequence the planner sizes for this model, batch and page size: the cache's 32-bit page
// ids, the decode kernel's 2^31 tokens, and the fp16-sized KV guard.
inline std::int64_t max_plannable_context(const ModelShape& m, int batch, int page_tokens, int sink_tokens) {
  const std::int64_t page_table = sink_tokens + std::int64_t{std::numeric_limits<std::int32_t>::max() / batch} * page_tokens;
  const double fp16_bytes_per_token = 4.0 * m.layers * m.kv_heads * m.head_dim * batch;
  const auto guard = static_cast<std::int64_t>(std::min(9.0e18, PlanLimits::max_fp16_kv_bytes / fp16_bytes_per_token));
  return std::max<std::int64_t>(1, std::min({ModelLimits::max_context, page_table, guard}));
}

inline void validate_plan_request(const PlanRequest& r) {
  validate_model_shape(r.model, "model " + r.model.name);
  const std::string where = "memory plan";
  require_in_range(r.batch, 1, PlanLimits::max_batch, where, "batch");
  require_in_range(r.context, 1, ModelLimits::max_context, where, "context");
  require_in_range(r.assumptions.prefill_chunk_tokens, 1, PlanLimits::max_chunk, where, "prefill chunk tokens");
  require_in_range(r.assumptions.page_tokens, 1, PlanLimits::max_page_tokens, where, "page tokens");
  require_in_range(r.assumptions.weight_group_size, 1, ModelLimits::max_hidden, where, "weight group size");
  require_in_range(r.assumptions.sm_count, 1, PlanLimits::max_sm_count, where, "SM count");
  require_in_range(r.assumptions.cuda_context_bytes, 0, PlanLimits::max_cuda_context, where, "CUDA context bytes");
  require_in_range(r.assumptions.library_workspace_bytes, 0, PlanLimits::max_cuda_context, where, "library workspace bytes");
  if (r.weight_bytes) require_in_range(*r.weight_bytes, 0, PlanLimits::max_gpu_bytes, where, "weight bytes");
  if (r.kept_tokens) require_in_range(*r.kept_tokens, 1, ModelLimits::max_context, where, "kept tokens (eviction budget)");
  if (r.promoted_fraction)
    require(*r.promoted_fraction >= 0 && *r.promoted_fraction <= 1, ErrorCode::invalid_argument,
            "memory plan: promoted fraction must be in [0, 1], got " + std::to_string(*r.promoted_fraction));
  require_in_range(r.promotion_window_tokens, 1, PlanLimits::max_chunk, where, "promotion window tokens");
}

template <KVPreset P>
KVCacheBytes kv_cache_bytes(const PlanRequest& r) {
  using Key = typename P::Tier::KeyPolicy;
  using Value = typename P::Tier::ValuePolicy;
  const std::int64_t limit = max_plannable_context(r.model, r.batch, r.assumptions.page_tokens, P::settings.sink_tokens);
  require(r.context <= limit, ErrorCode::invalid_argument,
          "memory plan: context " + std::to_string(r.context) + " x batch " + std::to_string(r.batch) +
              " is beyond what the cache can address for this model (at most " + std::to_string(limit) +
              " tokens per sequence: 2^31 pages, 2^31 tokens, or an exabyte of fp16 KV)");
  KVCacheBytes kv;
  CacheConfig base;
  base.layers = r.model.layers;
  base.kv_heads = r.model.kv_heads;
  base.max_sequences = r.batch;
  base.max_tokens_per_sequence = r.held_tokens();
  base.page_tokens = r.assumptions.page_tokens;
  kv.config = P::settings.applied_to(base);
  const double promoted = r.promoted_fraction.value_or(0.0);
  if (promoted > 0) kv.config.window_tokens = std::max(kv.config.window_tokens, r.promotion_window_tokens);
  kv.storage = CacheState<PresetTiers<P>>::storage_memory(kv.config);
  // As kvq::cuda::PagedKVCache::required_memory counts them (the same function).
  kv.bookkeeping = device_cache_bookkeeping_bytes(kv.config);
  const std::int64_t page_token_slots = std::int64_t{kv.storage.pool_pages} * kv.config.page_tokens;
  kv.outliers = std::int64_t{r.model.layers} * page_token_slots * r.model.kv_heads *
                (outlier_bytes_per_row<Key>() + outlier_bytes_per_row<Value>());
  kv.bytes_per_token_head = kv_bytes_per_token_head<typename P::Tier>();  // what plan_decode is given
  if (promoted > 0) {
    const SequenceGeometry geometry{kv.config.sink_tokens, kv.config.window_tokens, PresetTiers<P>::flush_tokens,
                                    kv.config.page_tokens, r.held_tokens()};
    const auto copies = static_cast<std::int64_t>(std::floor(promoted * static_cast<double>(geometry.quantized_after(r.held_tokens(), 0))));
    kv.promoted = std::int64_t{r.model.layers} * r.model.kv_heads * r.batch * copies *
                  PromotedTokens<typename presets::Int8<P::Tier::KeyPolicy::head_dim>::Tier>::copy_bytes;
  }
  return kv;
}

// Activations of one forward step over `tokens` query tokens of which `scored` get logits, attention workspace
// excluded (the buffers of the header comment).
inline StepWorkspace step_activations(const ModelShape& m, std::int64_t tokens, std::int64_t scored) {
  StepWorkspace w;
  w.tokens = tokens;
  const std::int64_t q = std::int64_t{m.query_heads} * m.head_dim, kv = std::int64_t{m.kv_heads} * m.head_dim;
  w.hidden_states = tokens * m.hidden * (4 + 2);
  w.projections = tokens * ((q + 2 * kv) * 4 + q * 4 + 2 * kv * 2 + q * 2);
  w.mlp = tokens * m.intermediate * (2 * 4 + 2);
  w.logits = scored * m.vocab * 4;
  return w;
}

}  // namespace detail

[[nodiscard]] inline WeightBytes weight_bytes(const ModelShape& m, WeightType type, int group_size) {
  WeightBytes w;
  w.parameters = parameter_count(m);
  w.embedding = w.parameters.embedding * 2;
  w.output = w.parameters.output * 2;
  w.norms = w.parameters.norms * 2;
  for (const LinearMatrix& matrix : linear_matrices(m)) w.linear += detail::linear_bytes(matrix, type, group_size, w.linear_scales);
  return w;
}

// Throws kvq::Error(invalid_argument) naming the field for impossible or absurd inputs, an unknown preset, or a
// head_dim no preset is built for.
[[nodiscard]] inline MemoryPlan plan_memory(const PlanRequest& r) {
  detail::validate_plan_request(r);
  MemoryPlan plan;
  plan.preset = preset_info(r.kv_preset, r.model.head_dim);
  plan.weights = weight_bytes(r.model, r.weights, r.assumptions.weight_group_size);
  plan.weights.exact = r.weight_bytes;
  plan.kv = visit_preset(r.kv_preset, r.model.head_dim, [&]<class P>() { return detail::kv_cache_bytes<P>(r); });

  const std::int64_t chunk = std::min<std::int64_t>(r.assumptions.prefill_chunk_tokens, r.context);
  plan.prefill = detail::step_activations(r.model, chunk,
                                          r.assumptions.prefill_logits == PrefillLogits::every_token ? chunk : 1);
  plan.prefill.attention = 0;  // prefill_attention_async: no workspace (tiles in shared memory)

  plan.decode = detail::step_activations(r.model, r.batch, r.batch);
  const DecodePlan decode = plan_decode({r.batch, r.model.query_heads, r.model.kv_heads, r.model.head_dim}, r.held_tokens(),
                                        plan.kv.bytes_per_token_head, r.assumptions.sm_count);
  plan.decode.attention = decode.workspace_bytes;

  plan.library_workspace = r.assumptions.library_workspace_bytes;
  plan.cuda_context = r.assumptions.cuda_context_bytes;
  return plan;
}

// KV bits per element of the whole context: the cache's storage (pages, sinks, window, promoted copies; no bookkeeping) over every
// key and value element of batch x context tokens, kept or evicted. Without an eviction budget this is the
// preset's effective bits plus page padding.
[[nodiscard]] inline double kv_bits_per_element(const PlanRequest& r) {
  const MemoryPlan plan = plan_memory(r);
  const double elements = 2.0 * r.batch * static_cast<double>(r.context) * r.model.layers * r.model.kv_heads * r.model.head_dim;
  return static_cast<double>(plan.kv.storage.total_bytes() + plan.kv.promoted) * 8.0 / elements;
}

// Bytes of one promoted int8 copy (kvq/cache/promoted_tokens.hpp) of one token of one KV head: key and value
// records and the token index.
[[nodiscard]] inline std::int64_t promoted_copy_bytes(int head_dim) {
  return visit_preset_head_dim(head_dim, [&]<int HeadDim>() {
    return PromotedTokens<typename presets::Int8<HeadDim>::Tier>::copy_bytes;
  });
}

// What int8 copies of `fraction` of `quantized` tokens add to one KV head, summed over its tokens, in bits per
// key/value element (divide by the tokens for the average).
[[nodiscard]] inline double promoted_bits_per_token_element(double fraction, std::int64_t quantized, int head_dim) {
  const double copies = std::floor(fraction * static_cast<double>(quantized));
  return copies * static_cast<double>(promoted_copy_bytes(head_dim)) * 8.0 / (2.0 * head_dim);
}

// The largest eviction budget (tokens kept per sequence, at most the context) whose KV storage costs at most
// `bits` per element of the whole context; 0 if not even one kept token fits (the fp16 sinks and window of a
// preset cost something at any budget). Binary search: the storage never shrinks as the budget grows.
[[nodiscard]] inline std::int64_t kept_tokens_for_bits(PlanRequest r, double bits) {
  require(bits > 0 && bits <= 64, ErrorCode::invalid_argument,
          "kept tokens for a bits-per-element budget: bits must be in (0, 64], got " + std::to_string(bits));
  auto fits = [&](std::int64_t kept) {
    r.kept_tokens = kept;
    return kv_bits_per_element(r) <= bits;
  };
  if (!fits(1)) return 0;
  if (fits(r.context)) return r.context;
  std::int64_t low = 1, high = r.context;  // fits(low), !fits(high)
  while (high - low > 1) {
    const std::int64_t middle = low + (high - low) / 2;
    (fits(middle) ? low : high) = middle;
  }
  return low;
}

struct LargestContext {
  std::int64_t tokens = 0;        // the largest context per sequence that fits; 0: not even one token does
  std::int64_t search_limit = 0;  // the largest context searched; tokens == search_limit means "this or more"
};

// Binary search for the largest context whose plan_memory(...).total() is at most `gpu_bytes`. Correct because
// the total never decreases with the context (pages, window and workspace all grow or stay).
[[nodiscard]] inline LargestContext largest_context(PlanRequest r, std::int64_t gpu_bytes) {
  detail::require_in_range(gpu_bytes, 1, PlanLimits::max_gpu_bytes, "largest context", "GPU bytes");
  r.context = 1;
  detail::validate_plan_request(r);
  const PresetSettings settings =
      visit_preset(r.kv_preset, r.model.head_dim, [&]<class P>() { return PresetSettings{P::settings}; });
  LargestContext result;
  result.search_limit =
      detail::max_plannable_context(r.model, r.batch, r.assumptions.page_tokens, settings.sink_tokens);
  auto fits = [&](std::int64_t context) {
    r.context = context;
    return plan_memory(r).total() <= gpu_bytes;
  };
  if (!fits(1)) return result;
  if (fits(result.search_limit)) {
    result.tokens = result.search_limit;
    return result;
  }
  std::int64_t low = 1, high = result.search_limit;  // fits(low), !fits(high)
  while (high - low > 1) {
    const std::int64_t middle = low + (high - low) / 2;
    (fits(middle) ? low : high) = middle;
  }
  result.tokens = low;
  return result;
}

struct NaiveEstimate {
  std::int64_t kv_bytes = 0;         // 2 * layers * query_heads * head_dim * bits/8 * context * batch
  std::int64_t total_bytes = 0;      // weights + kv_bytes, nothing else
  std::int64_t largest_context = 0;  // for the GPU given; 0 if the weights alone do not fit
};

// The founding notes' formula (query heads for KV heads, no workspace, no context, no sinks/window/padding) at the
// preset's mean bits per element, for comparison with plan_memory.
[[nodiscard]] inline NaiveEstimate naive_estimate(const PlanRequest& r, std::int64_t gpu_bytes) {
  const MemoryPlan plan = plan_memory(r);
  detail::require_in_range(gpu_bytes, 1, PlanLimits::max_gpu_bytes, "naive estimate", "GPU bytes");
  const double per_token = 2.0 * r.model.layers * r.model.query_heads * r.model.head_dim * plan.preset.mean_bits() / 8.0 * r.batch;
  NaiveEstimate naive;
  naive.kv_bytes = std::llround(per_token * static_cast<double>(r.context));
  naive.total_bytes = plan.weights.total() + naive.kv_bytes;
  const double room = static_cast<double>(gpu_bytes - plan.weights.total());
  naive.largest_context =
      room <= 0 ? 0 : static_cast<std::int64_t>(std::min(std::floor(room / per_token), static_cast<double>(ModelLimits::max_context)));
  return naive;
}

}  // namespace kvq

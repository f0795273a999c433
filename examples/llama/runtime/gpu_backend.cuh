// The GPU backend for one KV preset and head_dim (gpu_backend.hpp describes a step). Included by
// gpu_backend_64.cu and gpu_backend_128.cu only, each instantiating the presets of its head_dim.
//
// Attention: attend_chunk() is the one place that computes it. One query token takes
// kvq::cuda::decode_attention_async; a chunk of several takes kvq::cuda::prefill_attention_async, which reads the
// cache in tiles (no fp16 copy of the context, no score matrix: the step buffers do not grow with the context).
// The chunk is read back from the cache as stored, as the CPU backend's prefill does (runtime/prefill_attention.hpp),
// so the two backends attend to the same tokens.
#pragma once

#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <memory>
#include <set>
#include <span>
#include <string>
#include <vector>

#include "kvq/cuda/decode_attention.cuh"
#include "kvq/cuda/error.cuh"
#include "kvq/cuda/paged_cache.cuh"
#include "kvq/cuda/prefill_attention.cuh"
#include "kvq/planner/memory_plan.hpp"
#include "runtime/gpu_backend.hpp"
#include "runtime/gpu_backend_at.hpp"
#include "runtime/calibrated_params.hpp"
#include "runtime/gpu_blas.hpp"
#include "runtime/exact_step.hpp"
#include "runtime/gpu_kernels.hpp"
#include "runtime/kv_presets.hpp"

namespace kvq::llama::gpu {

// The backend's own device allocations, counted (the "allocated" of the memory report), freed together.
class DeviceMemory {
 public:
  DeviceMemory() = default;
  DeviceMemory(const DeviceMemory&) = delete;
  DeviceMemory& operator=(const DeviceMemory&) = delete;
  ~DeviceMemory() {
    for (void* block : blocks_) cudaFree(block);
  }
  std::uint8_t* allocate(std::int64_t bytes, const char* what) {
    if (bytes == 0) return nullptr;
    void* block = nullptr;
    const cudaError_t status = cudaMalloc(&block, static_cast<std::size_t>(bytes));
    if (status != cudaSuccess) {
      cudaGetLastError();  // clear the allocation error
      throw Error(ErrorCode::out_of_memory, "GPU backend: cudaMalloc of " + std::to_string(bytes) + " bytes for " +
                                                what + " failed: " + cudaGetErrorString(status));
    }
    blocks_.push_back(block);
    bytes_ += bytes;
    return static_cast<std::uint8_t*>(block);
  }
  [[nodiscard]] std::int64_t bytes() const { return bytes_; }

 private:
  std::vector<void*> blocks_;
  std::int64_t bytes_ = 0;
};

// A policy's parameters with their host arrays (the nuq codebooks of Preset::default_params()) copied to device
// memory, which the device cache's kernels read.
template <class Policy>
void params_to_device(typename Policy::Params& params, DeviceMemory& memory) {
  if constexpr (requires { params.centroids; }) {
    if (params.centroids != nullptr) {
      const std::int64_t bytes = std::int64_t{Policy::centroid_sets} * Policy::centroid_count * 4;
      std::uint8_t* device = memory.allocate(bytes, "a codebook");
      cuda::check(cudaMemcpy(device, params.centroids, static_cast<std::size_t>(bytes), cudaMemcpyHostToDevice),
                  "GPU backend: upload codebook");
      params.centroids = reinterpret_cast<const float*>(device);
    }
  }
  if constexpr (requires { params.lower; }) {
    require(params.lower == nullptr && params.upper == nullptr, ErrorCode::invalid_argument,
            "GPU backend: outlier thresholds in a preset's parameters are not uploaded; use largest_magnitude");
  }
  if constexpr (requires { typename Policy::InnerPolicy; })
    params_to_device<typename Policy::InnerPolicy>(params.inner, memory);
}

// cuBLAS's advice for Hopper, 32 MiB; the planner counts the same figure.
inline constexpr std::int64_t cublas_workspace_bytes = PlanAssumptions{}.library_workspace_bytes;

template <KVPreset Preset, class Tiers>
GpuMemoryPlan gpu_memory_plan(const LlamaConfig& c, const CacheConfig& cache, const GpuOptions& gpu) {
  GpuMemoryPlan plan;
  plan.weights = weight_layout(c).total_bytes;
  plan.kv = cuda::PagedKVCache<Tiers>::required_memory(cache);
  plan.kv_format = kv_cache_format<Preset>(cache.layer_tier, cache.page_tokens, cache.kv_heads).format;
  plan.activations = activation_layout(c, gpu.max_chunk_tokens, cache.max_tokens_per_sequence,
                                       gpu.score_every_token ? gpu.max_chunk_tokens : 1);
  // One decode workspace per tier in use: plans of different tiers lay their counters out differently.
  const std::set<int> tiers(cache.layer_tier.begin(), cache.layer_tier.end());
  plan.decode_workspace = static_cast<std::int64_t>(tiers.size()) * decode_workspace_bound(c);
  plan.cublas_workspace = cublas_workspace_bytes;
  plan.cuda_context = PlanAssumptions{}.cuda_context_bytes;
  return plan;
}

class Stream {
 public:
  Stream() { cuda::check(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), "GPU backend: create stream"); }
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;
  ~Stream() { cudaStreamDestroy(stream_); }
  [[nodiscard]] cudaStream_t get() const { return stream_; }

 private:
  cudaStream_t stream_ = nullptr;
};

template <class T>
class PinnedBuffer {  // page-locked host memory, so the per-step copies are truly asynchronous
 public:
  explicit PinnedBuffer(std::int64_t count) {
    cuda::check(cudaMallocHost(reinterpret_cast<void**>(&data_), static_cast<std::size_t>(count) * sizeof(T)),
                "GPU backend: cudaMallocHost");
  }
  PinnedBuffer(const PinnedBuffer&) = delete;
  PinnedBuffer& operator=(const PinnedBuffer&) = delete;
  ~PinnedBuffer() { cudaFreeHost(data_); }
  [[nodiscard]] T* get() const { return data_; }

 private:
  T* data_ = nullptr;
};

inline std::int64_t device_used_bytes(std::int64_t* total = nullptr) {
  std::size_t free_bytes = 0, total_bytes = 0;
  cuda::check(cudaMemGetInfo(&free_bytes, &total_bytes), "cudaMemGetInfo");
  if (total != nullptr) *total = static_cast<std::int64_t>(total_bytes);
  return static_cast<std::int64_t>(total_bytes - free_bytes);
}

template <KVPreset Preset, class Tiers>
class GpuBackendImpl final : public GpuBackend {
 public:
  static constexpr int head_dim = Tiers::head_dim;

  GpuBackendImpl(const LlamaConfig& config, const CacheConfig& cache_config, const GpuMemoryPlan& plan,
                 const WeightFill& fill, const KvCalibration* calibration)
      : config_(config),
        plan_(plan),
        used_at_start_(device_used_bytes(&device_total_)),
        cache_(cache_config, std::numeric_limits<std::int64_t>::max()),
        host_ids_(plan.activations.max_tokens + 2),
        host_logits_(std::int64_t{config.vocabulary} * plan.activations.logit_rows) {
    peak_used_ = used_at_start_;
    const cudaStream_t stream = stream_.get();
    // The preset's layers get its calibration-free parameters (codebooks, rotation seed), or the calibrated
    // codebooks of their layer (the CPU backend's, calibrated_params.hpp): checked against the model first.
    const TierParams<typename Preset::Tier> defaults = Preset::default_params();
    std::vector<TierParams<typename Preset::Tier>> layer_params(static_cast<std::size_t>(config_.layers), defaults);
    if (calibration != nullptr)
      for (int layer = 0; layer < config_.layers; ++layer)
        if (cache_.tier(layer) == tier_of<Preset>(LayerFormat::preset))
          layer_params[static_cast<std::size_t>(layer)] = calibrated_params<Preset>(defaults, *calibration, layer, config_);
    // Weights, one allocation laid out by weight_layout().
    layout_ = weight_layout(config_);
    weights_ = memory_.allocate(layout_.total_bytes, "the weights");
    fill(layout_, weights_, stream);
    // Step buffers, one allocation laid out by activation_layout().
    const ActivationLayout& a = plan_.activations;
    buffers_ = memory_.allocate(a.total_bytes(), "the step buffers");
    cuda::check(cudaMemsetAsync(buffers_ + a.sequence, 0, 4, stream), "GPU backend: sequence slot");  // slot 0
    std::uint8_t* blas_workspace = memory_.allocate(plan_.cublas_workspace, "the cuBLAS workspace");
    blas_ = std::make_unique<Blas>(stream, blas_workspace, plan_.cublas_workspace);

    // The layers' parameters in device memory: the defaults' codebooks once, calibrated ones per layer.
    TierParams<typename Preset::Tier> shared = defaults;
    if (calibration == nullptr) {
      params_to_device<typename Preset::Tier::KeyPolicy>(shared.key, memory_);
      params_to_device<typename Preset::Tier::ValuePolicy>(shared.value, memory_);
    }
    for (int layer = 0; layer < config_.layers; ++layer)
      if (cache_.tier(layer) == tier_of<Preset>(LayerFormat::preset)) {
        TierParams<typename Preset::Tier> params = shared;
        if (calibration != nullptr) {
          params = layer_params[static_cast<std::size_t>(layer)];
          params_to_device<typename Preset::Tier::KeyPolicy>(params.key, memory_);
          params_to_device<typename Preset::Tier::ValuePolicy>(params.value, memory_);
        }
        cache_.template set_params<typename Preset::Tier>(layer, params.key, params.value);
      }

    // Decode plans (one per layer; the layers of a tier share theirs) and one workspace per tier, cleared once.
    const std::int64_t bound = decode_workspace_bound(config_);
    workspaces_.assign(Tiers::count, nullptr);
    for (int layer = 0; layer < config_.layers; ++layer) {
      const DecodePlan decode = cuda::plan_decode<float, f16>(
          cache_, layer, DecodeShape{1, config_.q_heads, config_.kv_heads, head_dim}, a.max_context);
      require(decode.workspace_bytes <= bound, ErrorCode::invalid_argument,
              "GPU backend: the decode plan of layer " + std::to_string(layer) + " needs " +
                  std::to_string(decode.workspace_bytes) + " workspace bytes, above the " + std::to_string(bound) +
                  " allocated");
      std::uint8_t*& workspace = workspaces_[static_cast<std::size_t>(cache_.tier(layer))];
      if (workspace == nullptr) {
        workspace = memory_.allocate(bound, "a decode workspace");
        cuda::check(cudaMemsetAsync(workspace, 0, static_cast<std::size_t>(bound), stream),
                    "GPU backend: clear decode workspace");
      }
      decode_plans_.push_back(decode);
    }
    // The whole device, not the stream: the codebook copies went through the legacy stream.
    cuda::check(cudaDeviceSynchronize(), "GPU backend: set-up");
    used_after_setup_ = device_used_bytes();
    sample_memory();
  }

  [[nodiscard]] std::string name() const override {
    cudaDeviceProp properties{};
    int device = 0;
    cuda::check(cudaGetDevice(&device), "cudaGetDevice");
    cuda::check(cudaGetDeviceProperties(&properties, device), "cudaGetDeviceProperties");
    return std::string("gpu (") + properties.name +
           "; cuBLAS fp16 products, fp32 accumulation; kvq::cuda::PagedKVCache; kvq decode and prefill "
           "attention)";
  }
  [[nodiscard]] std::int64_t position() const override { return cache_.sequences().sequence(0).length; }

  [[nodiscard]] KvCacheReport kv_cache() const override {
    std::vector<int> layer_tier;
    for (int layer = 0; layer < config_.layers; ++layer) layer_tier.push_back(cache_.tier(layer));
    KvCacheReport report = kv_cache_format<Preset>(layer_tier, cache_.config().page_tokens, cache_.config().kv_heads);
    report.allocated_bytes = cache_.allocated_bytes();
    report.tokens = position();
    return report;
  }

  void reset() override {
    cache_.reset(0, stream_.get());
    cuda::check(cudaStreamSynchronize(stream_.get()), "GPU backend: reset");
  }

  [[nodiscard]] const GpuMemoryPlan& memory_plan() const override { return plan_; }
  [[nodiscard]] GpuMemoryUse memory_use() const override {
    return {memory_.bytes() + cache_.allocated_bytes(), device_total_, used_at_start_, used_after_setup_, peak_used_};
  }

  std::span<const float> forward(std::span<const TokenId> tokens) override {
    const std::int64_t count = run_step(tokens);
    score(count - 1, 1);
    cuda::check(cudaStreamSynchronize(stream_.get()), "GPU backend: forward");
    sample_memory();
    return {host_logits_.get(), static_cast<std::size_t>(config_.vocabulary)};
  }

  // With GpuOptions::score_every_token, steps cut where decode semantics need it (runtime/exact_step.hpp), each
  // scored whole: every query of a step sees the cache exactly as in token-by-token decode, at the speed of chunks
  // (the prefill kernel reads the step's tokens as the cache stores them, like decode; a one-token step is decode).
  // Without it, Backend's token-by-token default.
  void forward_logits(std::span<const TokenId> tokens, std::span<float> logits) override {
    const std::int64_t rows = plan_.activations.logit_rows;
    if (rows == 1) {
      Backend::forward_logits(tokens, logits);
      return;
    }
    const auto vocabulary = static_cast<std::size_t>(config_.vocabulary);
    require(logits.size() == tokens.size() * vocabulary, ErrorCode::invalid_argument,
            "forward_logits: the output must hold tokens x vocabulary floats");
    for (std::size_t begin = 0; begin < tokens.size();) {
      const std::size_t size =
          exact_step(cache_.sequences(), 0, std::min(tokens.size() - begin, static_cast<std::size_t>(rows)));
      const std::int64_t count = run_step(tokens.subspan(begin, size));
      score(0, count);
      cuda::check(cudaStreamSynchronize(stream_.get()), "GPU backend: forward_logits");
      sample_memory();
      std::copy(host_logits_.get(), host_logits_.get() + static_cast<std::size_t>(count) * vocabulary,
                logits.begin() + static_cast<std::ptrdiff_t>(begin * vocabulary));
      begin += size;
    }
  }

 private:
  // Runs `tokens` through the layers at the next positions (the cache then holds them, buffer hidden their final
  // hidden states) and returns their count; asynchronous on the stream.
  std::int64_t run_step(std::span<const TokenId> tokens) {
    const auto count = static_cast<std::int64_t>(tokens.size());
    require(count > 0, ErrorCode::invalid_argument, "forward: no tokens");
    const std::int64_t first = position();
    // Checked with if, not require(): these run every step and the messages need formatting.
    if (count > plan_.activations.max_tokens)
      throw Error(ErrorCode::invalid_argument, "forward: " + std::to_string(count) +
                                                   " tokens in one step, the GPU backend was sized for " +
                                                   std::to_string(plan_.activations.max_tokens) + " (--chunk)");
    if (first + count > cache_.config().max_tokens_per_sequence)
      throw Error(ErrorCode::capacity_exceeded,
                  "forward: " + std::to_string(first) + " + " + std::to_string(count) + " tokens exceed the cache's " +
                      std::to_string(cache_.config().max_tokens_per_sequence) + " (raise --context)");
    for (std::int64_t t = 0; t < count; ++t) {
      const TokenId token = tokens[static_cast<std::size_t>(t)];
      if (token < 0 || token >= config_.vocabulary)
        throw Error(ErrorCode::invalid_argument, "forward: token " + std::to_string(token) +
                                                     " is outside the vocabulary of " +
                                                     std::to_string(config_.vocabulary));
      host_ids_.get()[t] = token;
    }
    const cudaStream_t stream = stream_.get();
    const ActivationLayout& a = plan_.activations;
    cuda::check(cudaMemcpyAsync(buffer<std::int32_t>(a.token_ids), host_ids_.get(), static_cast<std::size_t>(count) * 4,
                                cudaMemcpyHostToDevice, stream),
                "GPU backend: upload token ids");
    // The chunk's rows [0, count) for prefill attention, after the ids in the same pinned buffer.
    std::int32_t* starts = host_ids_.get() + a.max_tokens;
    starts[0] = 0;
    starts[1] = static_cast<std::int32_t>(count);
    cuda::check(cudaMemcpyAsync(buffer<std::int32_t>(a.chunk_starts), starts, 8, cudaMemcpyHostToDevice, stream),
                "GPU backend: upload the chunk bounds");

    const int sequence = 0;
    const AppendPlan append = cache_.reserve({&sequence, 1}, {&count, 1}, stream);
    int written = 0;
    try {
      embed(buffer<std::int32_t>(a.token_ids), weight<f16>(layout_.embedding), count, config_.hidden,
            buffer<float>(a.hidden), stream);
      for (int layer = 0; layer < config_.layers; ++layer) run_layer(append, layer, first, count, written);
    } catch (...) {
      // As the CPU backend: the cache already counts the tokens; fill the layers not yet written and take the
      // tokens back out, so the backend stays usable (unless the device itself failed).
      try {
        const std::size_t bytes = static_cast<std::size_t>(count) * config_.kv_heads * head_dim * sizeof(f16);
        cuda::check(cudaMemsetAsync(buffer<f16>(a.keys), 0, bytes, stream), "rollback");
        cuda::check(cudaMemsetAsync(buffer<f16>(a.values), 0, bytes, stream), "rollback");
        for (int layer = written; layer < config_.layers; ++layer)
          cache_.template write<f16>(append, layer, buffer<f16>(a.keys), buffer<f16>(a.values), stream);
        cache_.truncate(0, first, stream);
      } catch (...) {
      }
      throw;
    }
    return count;
  }

  // Final RMSNorm and LM head of `rows` tokens of the step from row `first` (buffer hidden), fp32 logits down to
  // host_logits_ [rows][vocabulary]; asynchronous on the stream.
  void score(std::int64_t first, std::int64_t rows) {
    const ActivationLayout& a = plan_.activations;
    const cudaStream_t stream = stream_.get();
    rms_norm(buffer<float>(a.hidden) + first * config_.hidden, weight<float>(layout_.output_norm), rows, config_.hidden,
             config_.rms_epsilon, buffer<f16>(a.normed), stream);
    blas_->project(weight<f16>(layout_.lm_head), config_.vocabulary, config_.hidden, buffer<f16>(a.normed), rows,
                   buffer<float>(a.logits), 0.0f);
    cuda::check(cudaMemcpyAsync(host_logits_.get(), buffer<float>(a.logits),
                                static_cast<std::size_t>(rows) * config_.vocabulary * 4, cudaMemcpyDeviceToHost, stream),
                "GPU backend: download logits");
  }

  template <class T>
  T* buffer(std::int64_t offset) const {
    return reinterpret_cast<T*>(buffers_ + offset);
  }
  template <class T>
  T* weight(std::int64_t offset) const {
    return reinterpret_cast<T*>(weights_ + offset);
  }
  void sample_memory() { peak_used_ = std::max(peak_used_, device_used_bytes()); }

  // `written` counts the layers whose keys and values are in the cache, for the clean-up of a failed step.
  void run_layer(const AppendPlan& append, int layer, std::int64_t first, std::int64_t count, int& written) {
    const LlamaConfig& c = config_;
    const ActivationLayout& a = plan_.activations;
    const WeightLayout::Layer& w = layout_.layers[static_cast<std::size_t>(layer)];
    const cudaStream_t stream = stream_.get();
    float* hidden = buffer<float>(a.hidden);
    f16* normed = buffer<f16>(a.normed);
    const std::int64_t q_width = std::int64_t{c.q_heads} * head_dim, kv_width = std::int64_t{c.kv_heads} * head_dim;

    rms_norm(hidden, weight<float>(w.attention_norm), count, c.hidden, c.rms_epsilon, normed, stream);
    blas_->project(weight<f16>(w.qkv), q_width + 2 * kv_width, c.hidden, normed, count, buffer<float>(a.qkv), 0.0f);
    split_qkv<head_dim>(buffer<float>(a.qkv), count, c.q_heads, c.kv_heads, first, cache_.rope_table(),
                        cache_.config().rope.style, buffer<float>(a.query), buffer<f16>(a.keys), buffer<f16>(a.values),
                        stream);
    cache_.template write<f16>(append, layer, buffer<f16>(a.keys), buffer<f16>(a.values), stream);
    ++written;
    attend_chunk(layer, count);
    blas_->project(weight<f16>(w.output), c.hidden, q_width, buffer<f16>(a.attention), count, hidden, 1.0f);

    rms_norm(hidden, weight<float>(w.ffn_norm), count, c.hidden, c.rms_epsilon, normed, stream);
    blas_->project(weight<f16>(w.gate_up), 2 * std::int64_t{c.ffn}, c.hidden, normed, count, buffer<float>(a.gate_up),
                   0.0f);
    swiglu(buffer<float>(a.gate_up), count, c.ffn, buffer<f16>(a.mlp), stream);
    blas_->project(weight<f16>(w.down), c.hidden, c.ffn, buffer<f16>(a.mlp), count, hidden, 1.0f);
  }

  // Attention of the `count` queries at positions [first, first + count) (buffer query, RoPE applied) over the
  // layer's cache, which already holds them; out: buffer attention, fp16 [count][q_heads][d].
  void attend_chunk(int layer, std::int64_t count) {
    const LlamaConfig& c = config_;
    const ActivationLayout& a = plan_.activations;
    const cudaStream_t stream = stream_.get();
    if (count == 1) {
      const DecodePlan& plan = decode_plans_[static_cast<std::size_t>(layer)];
      cuda::decode_attention_async(cache_, layer, plan, AttentionParams{}, buffer<float>(a.query),
                                   buffer<f16>(a.attention), buffer<std::int32_t>(a.sequence),
                                   workspaces_[static_cast<std::size_t>(cache_.tier(layer))], decode_workspace_bound(c),
                                   stream);
      return;
    }
    cuda::prefill_attention_async(cache_, layer, PrefillShape{1, c.q_heads, c.kv_heads, head_dim, count},
                                  AttentionParams{}, buffer<float>(a.query), buffer<f16>(a.attention),
                                  static_cast<const f16*>(nullptr), static_cast<const f16*>(nullptr),
                                  buffer<std::int32_t>(a.sequence), buffer<std::int32_t>(a.chunk_starts), stream);
  }

  LlamaConfig config_;
  GpuMemoryPlan plan_;
  Stream stream_;
  std::int64_t device_total_ = 0;
  std::int64_t used_at_start_;
  std::int64_t used_after_setup_ = 0;
  std::int64_t peak_used_ = 0;
  DeviceMemory memory_;
  cuda::PagedKVCache<Tiers> cache_;
  PinnedBuffer<std::int32_t> host_ids_;
  PinnedBuffer<float> host_logits_;
  WeightLayout layout_;
  std::uint8_t* weights_ = nullptr;
  std::uint8_t* buffers_ = nullptr;
  std::unique_ptr<Blas> blas_;
  std::vector<DecodePlan> decode_plans_;
  std::vector<std::uint8_t*> workspaces_;
};

// The backend for `kv.preset` at HeadDim, after the memory check (check_memory_budget).
template <int HeadDim>
std::unique_ptr<GpuBackend> make_backend_at(const LlamaConfig& config, const KvCacheOptions& kv, const GpuOptions& gpu,
                                            const WeightFill& fill) {
  return dispatch_kv_cache_at<HeadDim>(kv.preset, [&]<class Preset, class Tiers>() -> std::unique_ptr<GpuBackend> {
    const CacheConfig cache = example_cache_config<Preset>(config, kv);
    const GpuMemoryPlan plan = gpu_memory_plan<Preset, Tiers>(config, cache, gpu);
    check_memory_budget(plan, gpu.memory_budget);
    return std::make_unique<GpuBackendImpl<Preset, Tiers>>(config, cache, plan, fill, kv.calibration.get());
  });
}

template <int HeadDim>
GpuMemoryPlan plan_memory_at(const LlamaConfig& config, const KvCacheOptions& kv, const GpuOptions& gpu) {
  return dispatch_kv_cache_at<HeadDim>(kv.preset, [&]<class Preset, class Tiers>() {
    return gpu_memory_plan<Preset, Tiers>(config, example_cache_config<Preset>(config, kv), gpu);
  });
}

}  // namespace kvq::llama::gpu

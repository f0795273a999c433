#include <cmath>
#include <vector>

#include "kvq/core/error.hpp"
#include "kvq/cuda/error.cuh"
#include "runtime/gpu_kernels.hpp"
#include "runtime/gpu_weights.hpp"

namespace kvq::llama::gpu {
namespace {

// Host fp16 staging, one tensor at a time (a few hundred MB at most for the models the CPU loader can hold).
class Uploader {
 public:
  explicit Uploader(std::uint8_t* base) : base_(base) {}
  // Rows of `parts` stacked in order into the fp16 matrix at `offset`.
  void matrix(std::int64_t offset, std::initializer_list<const Matrix*> parts) {
    staging_.clear();
    for (const Matrix* m : parts)
      for (float x : m->values) staging_.push_back(to_f16(x));
    cuda::check(cudaMemcpy(base_ + offset, staging_.data(), staging_.size() * sizeof(f16), cudaMemcpyHostToDevice),
                "GPU backend: upload weights");
  }
  void vector(std::int64_t offset, const std::vector<float>& values) {
    cuda::check(cudaMemcpy(base_ + offset, values.data(), values.size() * sizeof(float), cudaMemcpyHostToDevice),
                "GPU backend: upload norm weights");
  }

 private:
  std::uint8_t* base_;
  std::vector<f16> staging_;
};

}  // namespace

void upload_weights(const LlamaModel& model, const WeightLayout& layout, std::uint8_t* base, cudaStream_t stream) {
  const LlamaWeights& w = model.weights;
  require(w.layers.size() == layout.layers.size(), ErrorCode::invalid_argument,
          "GPU backend: the model has " + std::to_string(w.layers.size()) + " layers, the layout " +
              std::to_string(layout.layers.size()));
  cuda::check(cudaStreamSynchronize(stream), "GPU backend: synchronize before the upload");
  Uploader upload(base);
  upload.matrix(layout.embedding, {&w.embedding});
  if (layout.lm_head != layout.embedding) upload.matrix(layout.lm_head, {&w.output});
  upload.vector(layout.output_norm, w.output_norm);
  for (std::size_t i = 0; i < w.layers.size(); ++i) {
    const LayerWeights& l = w.layers[i];
    const WeightLayout::Layer& at = layout.layers[i];
    upload.vector(at.attention_norm, l.attention_norm);
    upload.vector(at.ffn_norm, l.ffn_norm);
    upload.matrix(at.qkv, {&l.query, &l.key, &l.value});
    upload.matrix(at.output, {&l.output});
    upload.matrix(at.gate_up, {&l.gate, &l.up});
    upload.matrix(at.down, {&l.down});
  }
  // cudaMemcpy from pageable memory may return before its DMA lands, and the backend's stream does not wait for
  // the legacy stream: wait here.
  cuda::check(cudaDeviceSynchronize(), "GPU backend: finish the weight upload");
}

void synthetic_weights(const LlamaConfig& c, std::uint64_t seed, const WeightLayout& layout, std::uint8_t* base,
                       cudaStream_t stream) {
  std::uint64_t tensor = 0;  // each tensor its own stream of the hash
  const auto matrix = [&](std::int64_t offset, std::int64_t rows, std::int64_t inputs, float scale) {
    fill_uniform(reinterpret_cast<f16*>(base + offset), rows * inputs, seed * 0x100000001B3ull + ++tensor, scale,
                 stream);
  };
  const auto ones = [&](std::int64_t offset) {
    fill_constant(reinterpret_cast<float*>(base + offset), c.hidden, 1.0f, stream);
  };
  const auto unit = [](std::int64_t inputs) { return std::sqrt(3.0f / static_cast<float>(inputs)); };
  const std::int64_t d = c.head_dim;
  matrix(layout.embedding, c.vocabulary, c.hidden, 1.0f);
  if (layout.lm_head != layout.embedding) matrix(layout.lm_head, c.vocabulary, c.hidden, unit(c.hidden));
  ones(layout.output_norm);
  for (const WeightLayout::Layer& l : layout.layers) {
    ones(l.attention_norm);
    ones(l.ffn_norm);
    matrix(l.qkv, (c.q_heads + 2 * c.kv_heads) * d, c.hidden, unit(c.hidden));
    matrix(l.output, c.hidden, c.q_heads * d, unit(c.q_heads * d));
    matrix(l.gate_up, 2 * std::int64_t{c.ffn}, c.hidden, unit(c.hidden));
    matrix(l.down, c.hidden, c.ffn, unit(c.ffn));
  }
}

}  // namespace kvq::llama::gpu

// The hyper-parameters of a Llama-style decoder (RMSNorm, grouped-query attention, SwiGLU MLP, no biases) that
// decide its memory: the memory planner's input. Every model source fills one of these and validates it here:
// the published presets (model_presets.hpp), a Hugging Face config.json (hf_config.hpp), and a GGUF file's
// llama.* metadata (kvq_plan --gguf, through the Llama example's reader: examples/plan.cpp, gguf_model_shape).
#pragma once

#include <array>
#include <cstdint>
#include <string>

#include "kvq/core/error.hpp"

namespace kvq {

struct ModelShape {
  std::string name;
  int layers = 0;        // decoder blocks
  int hidden = 0;        // residual stream width
  int intermediate = 0;  // MLP width (gate and up projections)
  int query_heads = 0;   // attention heads
  int kv_heads = 0;      // key/value heads (grouped-query attention: fewer than query_heads)
  int head_dim = 0;
  int vocab = 0;
  bool tied_embeddings = false;  // the output projection reuses the embedding matrix
  std::int64_t max_context = 0;  // tokens the model was trained for (max_position_embeddings)
};

// Beyond these a number is a typo or a unit mistake, not a model (the largest published Llama, 405B, has 126 layers,
// hidden 16384, intermediate 53248, 128 heads, vocab 128256).
struct ModelLimits {
  static constexpr int max_layers = 1024;
  static constexpr int max_hidden = 1 << 20;
  static constexpr int max_intermediate = 1 << 22;
  static constexpr int max_heads = 4096;
  static constexpr int max_head_dim = 4096;
  static constexpr int max_vocab = 1 << 24;
  static constexpr std::int64_t max_context = (std::int64_t{1} << 31) - 1;  // what the decode kernel can index
};

namespace detail {
inline void require_in_range(std::int64_t value, std::int64_t low, std::int64_t high, const std::string& where,
                             const std::string& field, ErrorCode code = ErrorCode::invalid_argument) {
  require(value >= low && value <= high, code,
          where + ": " + field + " must be in [" + std::to_string(low) + ", " + std::to_string(high) + "], got " +
              std::to_string(value));
}
}  // namespace detail

// Throws kvq::Error(code) naming `source` and the field. `source` is where the shape came from
// ("model Llama-3-8B", "config.json /path/to/config.json"); a file reader passes io_error (a malformed file).
inline void validate_model_shape(const ModelShape& m, const std::string& source,
                                 ErrorCode code = ErrorCode::invalid_argument) {
  detail::require_in_range(m.layers, 1, ModelLimits::max_layers, source, "layers", code);
  detail::require_in_range(m.hidden, 1, ModelLimits::max_hidden, source, "hidden", code);
  detail::require_in_range(m.intermediate, 1, ModelLimits::max_intermediate, source, "intermediate", code);
  detail::require_in_range(m.query_heads, 1, ModelLimits::max_heads, source, "query_heads", code);
  detail::require_in_range(m.kv_heads, 1, m.query_heads, source, "kv_heads", code);
  detail::require_in_range(m.head_dim, 1, ModelLimits::max_head_dim, source, "head_dim", code);
  detail::require_in_range(m.vocab, 1, ModelLimits::max_vocab, source, "vocab", code);
  detail::require_in_range(m.max_context, 1, ModelLimits::max_context, source, "max_context", code);
  require(m.query_heads % m.kv_heads == 0, code,
          source + ": query_heads " + std::to_string(m.query_heads) + " is not a multiple of kv_heads " +
              std::to_string(m.kv_heads));
}

// Parameters of the model: embeddings, the output projection unless tied, per layer the q/k/v/o and
// gate/up/down projections and two RMSNorm weights, and the final RMSNorm.
struct ParameterCount {
  std::int64_t embedding = 0;
  std::int64_t output = 0;  // 0 when tied
  std::int64_t linear = 0;  // all layers' projections
  std::int64_t norms = 0;
  [[nodiscard]] std::int64_t total() const { return embedding + output + linear + norms; }
};

// One projection matrix: `inputs` -> `outputs` features, `count` of them in the whole model.
struct LinearMatrix {
  std::int64_t inputs = 0, outputs = 0, count = 0;
};

// The seven projections of a layer, each counted once per layer.
inline std::array<LinearMatrix, 7> linear_matrices(const ModelShape& m) {
  const std::int64_t q = std::int64_t{m.query_heads} * m.head_dim, kv = std::int64_t{m.kv_heads} * m.head_dim;
  const std::int64_t h = m.hidden, i = m.intermediate, l = m.layers;
  return {{{h, q, l}, {h, kv, l}, {h, kv, l}, {q, h, l}, {h, i, l}, {h, i, l}, {i, h, l}}};
}

inline ParameterCount parameter_count(const ModelShape& m) {
  ParameterCount p;
  p.embedding = std::int64_t{m.vocab} * m.hidden;
  p.output = m.tied_embeddings ? 0 : p.embedding;
  for (const LinearMatrix& matrix : linear_matrices(m)) p.linear += matrix.inputs * matrix.outputs * matrix.count;
  p.norms = (2 * std::int64_t{m.layers} + 1) * m.hidden;
  return p;
}

}  // namespace kvq

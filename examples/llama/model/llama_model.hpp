// A Llama-3-family model in memory: hyper-parameters, weights dequantized to float, and the tokenizer.
//
// Architecture (Llama-3 / 3.1 / 3.2, SmolLM2): pre-norm decoder blocks, RMSNorm, RoPE (theta, optionally the
// Llama-3.1 "llama3" frequency scaling), grouped-query attention, SwiGLU MLP (down(silu(gate x) * up x)), no
// biases, output projection either its own matrix or the embedding (tied).
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "kvq/core/rope.hpp"
#include "tokenizer/tokenizer.hpp"

namespace kvq::llama {

struct LlamaConfig {
  int layers = 0;
  int hidden = 0;  // embedding width
  int ffn = 0;     // MLP width
  int q_heads = 0;
  int kv_heads = 0;
  int head_dim = 0;
  int vocabulary = 0;
  float rms_epsilon = 1e-5f;
  std::int64_t context_length = 0;  // what the model was trained for (a hint; the cache is sized by the run)
  bool tied_embeddings = false;
  // theta, llama3 scaling, and the pair layout of the q/k projection rows, which depends on the file format
  // (load_model.cpp explains).
  RopeConfig rope{};
};

// Row-major [rows][columns]; a projection y = W x has rows = outputs, columns = inputs.
struct Matrix {
  std::int64_t rows = 0, columns = 0;
  std::vector<float> values;
};

struct LayerWeights {
  std::vector<float> attention_norm, ffn_norm;
  Matrix query, key, value, output;  // [q_heads*d][hidden], [kv_heads*d][hidden] x2, [hidden][q_heads*d]
  Matrix gate, up, down;             // [ffn][hidden] x2, [hidden][ffn]
};

struct LlamaWeights {
  Matrix embedding;  // [vocabulary][hidden]
  std::vector<LayerWeights> layers;
  std::vector<float> output_norm;
  Matrix output;  // [vocabulary][hidden]; empty when the embedding is tied
  [[nodiscard]] const Matrix& logits_matrix() const { return output.values.empty() ? embedding : output; }
};

struct LlamaModel {
  LlamaConfig config;
  LlamaWeights weights;
  Tokenizer tokenizer;
  std::string source;       // the path it came from
  std::string description;  // "GGUF v3, Q4_1 ..." or "Hugging Face safetensors, 2 shards"
};

// A GGUF file, or a Hugging Face checkpoint directory (config.json, tokenizer.json, model.safetensors or
// model.safetensors.index.json with its shards). Throws kvq::Error (io_error for malformed or inconsistent files,
// naming the file and the key or tensor).
LlamaModel load_model(const std::filesystem::path& path);
LlamaModel load_gguf_model(const std::filesystem::path& file);
// The hyper-parameters of a GGUF file from its metadata alone (no weights read): what kvq_plan --gguf needs.
LlamaConfig read_gguf_config(const std::filesystem::path& file);
LlamaModel load_hugging_face_model(const std::filesystem::path& directory);

// Positive sizes, heads that divide, a usable RoPE config; `source` names the file in the error.
void validate_config(const LlamaConfig& config, const std::string& source);

}  // namespace kvq::llama

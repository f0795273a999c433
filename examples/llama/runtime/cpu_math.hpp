// The dense arithmetic of the CPU backend: matrix products through OpenBLAS (cblas), the rest as plain loops.
#pragma once

#include <cstdint>

#include "model/llama_model.hpp"

namespace kvq::llama {

// out[t][r] = sum_c weight[r][c] * in[t][c] for t < tokens: `tokens` rows of inputs through one projection.
void project(const Matrix& weight, const float* in, std::int64_t tokens, float* out);

// out[t] = in[t] / rms(in[t]) * weight, rms over `width` elements (+ epsilon inside the root).
void rms_norm(const float* in, const float* weight, std::int64_t tokens, int width, float epsilon, float* out);

// Causal attention of `count` queries at positions [first, first + count) for one KV head's group of query
// heads: query and out are [count][q_heads][head_dim] (heads `first_head` .. `first_head + group - 1` are used),
// keys and values [first + count][head_dim]. Query i sees tokens [0, first + i]. Scores and weighted sums are
// matrix products (BLAS, float); the softmax keeps its sum in double. `importance`, when given ([first + count]
// floats), gets every query's softmax probabilities added, summed over the group: what `count` decode steps of
// kvq::decode_attention_reference would add (kvq/attention/importance.hpp), in float instead of double.
void causal_attention(const float* query, const float* keys, const float* values, std::int64_t first,
                      std::int64_t count, int q_heads, int first_head, int group, int head_dim, float* out,
                      float* importance = nullptr);

// gate[i] = silu(gate[i]) * up[i]: SwiGLU's elementwise part.
void swiglu(float* gate, const float* up, std::int64_t count);

}  // namespace kvq::llama

// Picking the next token from logits: greedy (temperature 0), or sampling from softmax(logits / temperature)
// restricted to the smallest set of most likely tokens whose probability reaches top_p (nucleus sampling).
// The random source is a seeded std::mt19937_64 turned into uniforms by hand, so a seed gives the same tokens with
// any standard library (std::uniform_real_distribution is not specified bit for bit).
#pragma once

#include <cstdint>
#include <random>
#include <span>

#include "tokenizer/tokenizer.hpp"

namespace kvq::llama {

struct SamplingOptions {
  float temperature = 0.0f;  // 0: greedy
  float top_p = 1.0f;        // (0, 1]
  std::uint64_t seed = 0;
};

class Sampler {
 public:
  explicit Sampler(const SamplingOptions& options);  // kvq::Error(invalid_argument) for a negative temperature etc.
  [[nodiscard]] TokenId next(std::span<const float> logits);

 private:
  SamplingOptions options_;
  std::mt19937_64 random_;
};

}  // namespace kvq::llama

// Test helpers shared by the CPU and GPU backends' tests: every token's logits by token-by-token decode (the exact
// semantics forward_logits must reproduce), and the RMS difference of two logit tables.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <span>
#include <vector>

#include "runtime/backend.hpp"

namespace kvq::llama::test {

// tokens.size() x vocabulary logits, one forward() per token from the backend's current position.
inline std::vector<float> decode_logits(Backend& backend, std::span<const TokenId> tokens, std::size_t vocabulary) {
  std::vector<float> logits(tokens.size() * vocabulary);
  for (std::size_t t = 0; t < tokens.size(); ++t) {
    const auto row = backend.forward(tokens.subspan(t, 1));
    std::copy(row.begin(), row.end(), logits.begin() + static_cast<std::ptrdiff_t>(t * vocabulary));
  }
  return logits;
}

inline double rms_difference(const std::vector<float>& a, const std::vector<float>& b) {
  double squares = 0;
  for (std::size_t i = 0; i < a.size(); ++i)
    squares += (static_cast<double>(a[i]) - b[i]) * (static_cast<double>(a[i]) - b[i]);
  return std::sqrt(squares / static_cast<double>(a.size()));
}

}  // namespace kvq::llama::test

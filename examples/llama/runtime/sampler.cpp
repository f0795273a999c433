#include "runtime/sampler.hpp"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <string>
#include <vector>

#include "kvq/core/error.hpp"

namespace kvq::llama {

Sampler::Sampler(const SamplingOptions& options) : options_(options), random_(options.seed) {
  require(std::isfinite(options.temperature) && options.temperature >= 0, ErrorCode::invalid_argument,
          "--temperature must be >= 0, got " + std::to_string(options.temperature));
  require(options.top_p > 0 && options.top_p <= 1, ErrorCode::invalid_argument,
          "--top-p must be in (0, 1], got " + std::to_string(options.top_p));
}

TokenId Sampler::next(std::span<const float> logits) {
  require(!logits.empty(), ErrorCode::invalid_argument, "sampler: no logits");
  if (options_.temperature == 0) {  // the first maximum, as argmax conventions have it
    return static_cast<TokenId>(std::max_element(logits.begin(), logits.end()) - logits.begin());
  }
  const float top = *std::max_element(logits.begin(), logits.end());
  std::vector<std::pair<double, TokenId>> ranked(logits.size());
  double total = 0;
  for (std::size_t i = 0; i < logits.size(); ++i) {
    const double p = std::exp((static_cast<double>(logits[i]) - top) / options_.temperature);
    ranked[i] = {p, static_cast<TokenId>(i)};
    total += p;
  }
  // Most likely first; ties by id so the order does not depend on the sort.
  std::sort(ranked.begin(), ranked.end(),
            [](const auto& a, const auto& b) { return a.first != b.first ? a.first > b.first : a.second < b.second; });
  std::size_t keep = 0;
  double kept = 0;
  while (keep < ranked.size() && (keep == 0 || kept < options_.top_p * total)) kept += ranked[keep++].first;
  const double uniform = static_cast<double>(random_() >> 11) * 0x1.0p-53;  // [0, 1) with 53 random bits
  double target = uniform * kept;
  for (std::size_t i = 0; i < keep; ++i) {
    target -= ranked[i].first;
    if (target < 0) return ranked[i].second;
  }
  return ranked[keep - 1].second;
}

}  // namespace kvq::llama

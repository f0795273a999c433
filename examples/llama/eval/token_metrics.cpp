#include "eval/token_metrics.hpp"

#include <algorithm>
#include <cmath>
#include <numeric>

namespace kvq::llama {

void log_softmax(std::span<const float> logits, std::span<double> out) {
  const float top = *std::max_element(logits.begin(), logits.end());
  double total = 0;
  for (std::size_t j = 0; j < logits.size(); ++j) total += std::exp(static_cast<double>(logits[j]) - top);
  const double log_total = std::log(total) + top;
  for (std::size_t j = 0; j < logits.size(); ++j) out[j] = static_cast<double>(logits[j]) - log_total;
}

int argmax(std::span<const double> values) {
  return static_cast<int>(std::max_element(values.begin(), values.end()) - values.begin());
}

double kl_divergence(std::span<const double> reference, std::span<const double> other) {
  double total = 0;
  for (std::size_t j = 0; j < reference.size(); ++j) total += std::exp(reference[j]) * (reference[j] - other[j]);
  return std::max(total, 0.0);  // rounding can leave -1e-17 for identical rows
}

TokenScore score_token(std::span<const double> log_probs, std::span<const double> reference, int reference_top,
                       TokenId target) {
  return {-log_probs[static_cast<std::size_t>(target)], kl_divergence(reference, log_probs),
          argmax(log_probs) == reference_top};
}

void TokenMetrics::add(const TokenScore& score) {
  nll_ += score.nll;
  kld_.push_back(score.kld);
  top1_ += score.top1 ? 1 : 0;
}

double TokenMetrics::perplexity() const { return std::exp(mean_nll()); }

double TokenMetrics::mean_kld() const {
  return kld_.empty() ? 0.0 : std::accumulate(kld_.begin(), kld_.end(), 0.0) / static_cast<double>(kld_.size());
}

double TokenMetrics::kld_quantile(double q) const {
  if (kld_.empty()) return 0.0;
  std::vector<double> sorted = kld_;
  std::sort(sorted.begin(), sorted.end());
  const auto rank = static_cast<std::size_t>(std::ceil(q * static_cast<double>(sorted.size())));
  return sorted[std::min(sorted.size() - 1, rank == 0 ? 0 : rank - 1)];
}

}  // namespace kvq::llama

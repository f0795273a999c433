// What the harness measures per scored token, against the fp16-cache run of the same tokens: the negative log
// likelihood of the true next token (perplexity), the KL divergence KL(P_fp16 || P_preset) of the next-token
// distributions, and whether the two distributions agree on their most likely token (top-1 agreement).
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "model/llama_model.hpp"

namespace kvq::llama {

// log-softmax of one row of logits, in double (the sums over a 49K vocabulary need it).
void log_softmax(std::span<const float> logits, std::span<double> out);

// Index of the largest value (the first of equal ones).
int argmax(std::span<const double> values);

// sum_j exp(reference_j) * (reference_j - other_j) for two log-softmax rows.
double kl_divergence(std::span<const double> reference, std::span<const double> other);

// One scored token: the true next token's negative log likelihood, KL(P_fp16 || P_preset), top-1 agreement.
struct TokenScore {
  double nll = 0;
  double kld = 0;
  bool top1 = false;
};

// `log_probs` of this run and `reference` of the fp16 run (log-softmax rows), `reference_top` its argmax.
TokenScore score_token(std::span<const double> log_probs, std::span<const double> reference, int reference_top,
                       TokenId target);

// Running totals of one preset over the tokens scored so far.
class TokenMetrics {
 public:
  void add(const TokenScore& score);
  void add(std::span<const double> log_probs, std::span<const double> reference, int reference_top, TokenId target) {
    add(score_token(log_probs, reference, reference_top, target));
  }

  [[nodiscard]] std::int64_t tokens() const { return static_cast<std::int64_t>(kld_.size()); }
  [[nodiscard]] double mean_nll() const { return tokens() ? nll_ / static_cast<double>(tokens()) : 0.0; }
  [[nodiscard]] double perplexity() const;
  [[nodiscard]] double mean_kld() const;
  [[nodiscard]] double kld_quantile(double q) const;  // e.g. 0.99: nearest-rank percentile of the per-token KLDs
  [[nodiscard]] double top1_agreement() const { return tokens() ? static_cast<double>(top1_) / static_cast<double>(tokens()) : 0.0; }

 private:
  double nll_ = 0;
  std::int64_t top1_ = 0;
  std::vector<double> kld_;
};

}  // namespace kvq::llama

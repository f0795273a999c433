#include "eval/codebook_kmeans.hpp"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "kvq/core/error.hpp"

namespace kvq::llama {

void NormalizedHistogram::add(float u, double weight) {
  const int bin = static_cast<int>(std::floor((std::clamp(u, -1.0f, 1.0f) + 1.0f) * 0.5f * static_cast<float>(bins())));
  weights_[static_cast<std::size_t>(std::min(bin, bins() - 1))] += weight;
}

void NormalizedHistogram::add(const NormalizedHistogram& other, double scale) {
  for (std::size_t i = 0; i < weights_.size(); ++i) weights_[i] += scale * other.weights_[i];
}

double NormalizedHistogram::total() const { return std::accumulate(weights_.begin(), weights_.end(), 0.0); }

double codebook_distortion(const NormalizedHistogram& h, std::span<const float> centroids) {
  double cost = 0;
  for (int b = 0; b < h.bins(); ++b) {
    double best = INFINITY;
    for (float c : centroids) best = std::min(best, (h.center(b) - c) * (h.center(b) - c));
    cost += h.weight(b) * best;
  }
  return cost / h.total();
}

std::vector<float> fit_codebook(const NormalizedHistogram& h, int count) {
  require(count >= 2, ErrorCode::invalid_argument, "fit_codebook: at least 2 centroids");
  const double total = h.total();
  require(total > 0, ErrorCode::invalid_argument, "fit_codebook: the histogram is empty (no calibration samples)");
  // Start from the weighted quantiles (k + 0.5) / count: every cluster starts with mass.
  std::vector<double> c(static_cast<std::size_t>(count));
  {
    double seen = 0;
    int k = 0;
    for (int b = 0; b < h.bins() && k < count; ++b) {
      seen += h.weight(b);
      while (k < count && seen >= (k + 0.5) / count * total) c[static_cast<std::size_t>(k++)] = h.center(b);
    }
    for (; k < count; ++k) c[static_cast<std::size_t>(k)] = h.center(h.bins() - 1);
  }
  std::vector<double> mass(c.size()), moment(c.size());
  for (int iteration = 0; iteration < 500; ++iteration) {
    std::fill(mass.begin(), mass.end(), 0.0);
    std::fill(moment.begin(), moment.end(), 0.0);
    std::size_t k = 0;
    for (int b = 0; b < h.bins(); ++b) {  // centroids ascending: the nearest one only moves right along the bins
      const double x = h.center(b);
      while (k + 1 < c.size() && std::abs(x - c[k + 1]) < std::abs(x - c[k])) ++k;
      mass[k] += h.weight(b);
      moment[k] += h.weight(b) * x;
    }
    double moved = 0;
    for (std::size_t i = 0; i < c.size(); ++i)
      if (mass[i] > 0) {
        const double updated = moment[i] / mass[i];
        moved = std::max(moved, std::abs(updated - c[i]));
        c[i] = updated;
      }
    std::sort(c.begin(), c.end());
    if (moved < 1e-7) break;
  }
  // Strictly ascending floats inside [-1, 1] (CodebookPolicy's contract): separate any that coincide.
  std::vector<float> centroids(c.size());
  for (std::size_t i = 0; i < c.size(); ++i) {
    centroids[i] = std::clamp(static_cast<float>(c[i]), -1.0f, 1.0f);
    if (i > 0 && !(centroids[i] > centroids[i - 1])) centroids[i] = std::nextafter(centroids[i - 1], 2.0f);
  }
  require(centroids.back() <= 1.0f, ErrorCode::invalid_argument, "fit_codebook: centroids pushed past 1");
  return centroids;
}

}  // namespace kvq::llama

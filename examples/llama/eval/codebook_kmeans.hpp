// One-dimensional weighted k-means (Lloyd's algorithm) over a histogram of normalised values in [-1, 1]: the
// centroids of a non-uniform codebook (KVQuant fits its per-layer codebooks the same way, with sensitivity weights).
// Working on a fine histogram instead of the raw samples keeps calibration memory fixed whatever the text length.
#pragma once

#include <span>
#include <vector>

namespace kvq::llama {

// A histogram of `bins` equal bins over [-1, 1].
class NormalizedHistogram {
 public:
  explicit NormalizedHistogram(int bins = 2048) : weights_(static_cast<std::size_t>(bins), 0.0) {}
  void add(float u, double weight = 1.0);
  void add(const NormalizedHistogram& other, double scale);  // this += scale * other
  [[nodiscard]] int bins() const { return static_cast<int>(weights_.size()); }
  [[nodiscard]] double center(int bin) const { return -1.0 + (bin + 0.5) * 2.0 / bins(); }
  [[nodiscard]] double weight(int bin) const { return weights_[static_cast<std::size_t>(bin)]; }
  [[nodiscard]] double total() const;

 private:
  std::vector<double> weights_;
};

// `count` strictly ascending centroids in [-1, 1] minimising the weighted squared distance of the histogram's mass
// to its nearest centroid (a local minimum, from weighted-quantile starting points). kvq::Error(invalid_argument)
// for an empty histogram or count < 2.
std::vector<float> fit_codebook(const NormalizedHistogram& histogram, int count);

// Mean weighted squared distance to the nearest centroid: what a codebook costs on this histogram.
double codebook_distortion(const NormalizedHistogram& histogram, std::span<const float> centroids);

}  // namespace kvq::llama

// Test helper: a calibration of `bits`-bit codebooks for every layer of a small model, evenly spaced centroids
// (far from the Gaussian defaults, so a run that ignored them would show), shifted a little per layer (so a run
// that gave every layer the first layer's would show too).
#pragma once

#include <vector>

#include "runtime/kv_calibration.hpp"

namespace kvq::llama::test {

inline KvCalibration tiny_calibration(int layers, int head_dim, int bits) {
  KvCalibration c;
  c.model = "tiny";
  c.source = "test";
  c.weighting = "none";
  c.layers = layers;
  c.head_dim = head_dim;
  auto& codebooks = c.codebooks[bits];
  for (int layer = 0; layer < layers; ++layer) {
    std::vector<float> centroids;
    for (int k = 0; k < (1 << bits); ++k) centroids.push_back(-0.9f + 1.8f * k / ((1 << bits) - 1) + 0.01f * layer);
    codebooks.push_back({centroids, centroids});
  }
  return c;
}

}  // namespace kvq::llama::test

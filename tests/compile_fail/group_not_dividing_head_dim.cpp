// Must not compile: per-token groups of 96 channels do not tile head_dim 128.
#include "kvq/kvq.hpp"
double bits = kvq::UniformPolicy<kvq::UniformConfig{.bits = 4, .group_size = 96, .head_dim = 128}>::bits_per_element;

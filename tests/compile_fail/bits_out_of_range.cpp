// Must not compile: 5-bit codes are not supported.
#include "kvq/kvq.hpp"
double bits = kvq::UniformPolicy<kvq::UniformConfig{.bits = 5, .group_size = 32, .head_dim = 128}>::bits_per_element;

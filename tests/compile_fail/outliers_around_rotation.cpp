// Must not compile: outliers must be selected in the domain they are stored in.
#include "kvq/kvq.hpp"
using Inner = kvq::RotatedPolicy<kvq::UniformPolicy<kvq::UniformConfig{.bits = 4, .group_size = 32, .head_dim = 128}>>;
double bits = kvq::OutlierPolicy<Inner, kvq::OutlierConfig{}>::bits_per_element;

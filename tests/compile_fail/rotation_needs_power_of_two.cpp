// Must not compile: the Walsh-Hadamard rotation needs a power-of-two head_dim.
#include "kvq/kvq.hpp"
using Inner = kvq::UniformPolicy<kvq::UniformConfig{.bits = 4, .group_size = 32, .head_dim = 96}>;
double bits = kvq::RotatedPolicy<Inner>::bits_per_element;

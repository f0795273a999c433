// Must not compile: codes pack in units of 32.
#include "kvq/kvq.hpp"
double bits = kvq::CodebookPolicy<kvq::CodebookConfig{.bits = 3, .group_size = 48, .head_dim = 96}>::bits_per_element;

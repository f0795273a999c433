// Downstream smoke test for the kvq package (find_package / add_subdirectory).
// Uses only the public umbrella header and compile-time policy metadata.
#include <kvq/kvq.hpp>

#include <cstdio>

namespace {

using Policy =
    kvq::UniformPolicy<kvq::UniformConfig{.bits = 4, .group_size = 32, .head_dim = 64}>;

// Expected storage cost of the default (asymmetric, fp16 metadata) 4-bit
// uniform policy with groups of 32: 4-bit codes plus an fp16 scale and an
// fp16 zero point per 32 elements = 4 + (16 + 16) / 32 = 5.0 bits/element.
constexpr double kExpectedBitsPerElement = 4.0 + (16.0 + 16.0) / 32.0;

}  // namespace

int main() {
  constexpr double bits_per_element = Policy::bits_per_element;
  constexpr int code_bytes = Policy::code_bytes_per_block;
  constexpr int meta_bytes = Policy::meta_bytes_per_block;

  std::printf(
      "kvq consumer: UniformPolicy<bits=4, group_size=32, head_dim=64>: "
      "bits_per_element=%.4f code_bytes_per_block=%d meta_bytes_per_block=%d\n",
      bits_per_element, code_bytes, meta_bytes);

  if (bits_per_element != kExpectedBitsPerElement) {
    std::fprintf(stderr, "kvq consumer: expected bits_per_element == %.4f, got %.4f\n",
                 kExpectedBitsPerElement, bits_per_element);
    return 1;
  }
  if (code_bytes <= 0 || meta_bytes <= 0) {
    std::fprintf(stderr, "kvq consumer: block sizes must be positive\n");
    return 1;
  }
  std::printf("kvq consumer: OK\n");
  return 0;
}

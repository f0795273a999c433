// Host (CPU) quantization of [tokens, heads, head_dim] tensors with any policy. This is the reference the device
// kernels must match bit for bit, and the CPU fallback. Storage layout: quant/tensor_layout.hpp.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "kvq/core/element.hpp"
#include "kvq/core/error.hpp"
#include "kvq/core/float_ops.hpp"
#include "kvq/quant/concept.hpp"
#include "kvq/quant/tensor_layout.hpp"

namespace kvq {

// What to do with NaN/Inf in the input.
enum class NonFinitePolicy {
  reject,  // throw kvq::Error(non_finite_input) naming the first offending element, before writing anything
  poison,  // store it: the group holding it dequantizes to NaN (docs/policies.md), and is counted
};

struct QuantizeReport {
  std::int64_t poisoned_groups = 0;
};

namespace detail {

template <TensorElement T>
void require_finite(std::span<const T> input, const TensorShape& shape) {
  for (std::size_t i = 0; i < input.size(); ++i) {
    if (is_finite(to_float(input[i]))) continue;
    const std::int64_t per_token = static_cast<std::int64_t>(shape.heads) * shape.head_dim;
    const auto index = static_cast<std::int64_t>(i);
    throw Error(ErrorCode::non_finite_input,
                "input element [token " + std::to_string(index / per_token) + ", head " +
                    std::to_string(index % per_token / shape.head_dim) + ", channel " +
                    std::to_string(index % shape.head_dim) + "] is " + std::to_string(to_float(input[i])));
  }
}

inline void require_size(std::size_t actual, std::int64_t expected, const char* what) {
  require(static_cast<std::int64_t>(actual) == expected, ErrorCode::invalid_argument,
          std::string(what) + " holds " + std::to_string(actual) + " elements/bytes, expected " +
              std::to_string(expected));
}

}  // namespace detail

template <QuantizationPolicy P, TensorElement T>
QuantizeReport quantize_tensor(std::span<const T> input, const TensorShape& shape, std::span<std::uint8_t> codes,
                               std::span<std::uint8_t> meta, const typename P::Params& params,
                               NonFinitePolicy non_finite = NonFinitePolicy::reject) {
  const QuantizedTensorLayout<P> layout{shape};
  layout.validate();
  detail::require_size(input.size(), shape.elements(), "input");
  detail::require_size(codes.size(), layout.code_bytes(), "codes buffer");
  detail::require_size(meta.size(), layout.meta_bytes(), "meta buffer");
  if (non_finite == NonFinitePolicy::reject) detail::require_finite(input, shape);

  QuantizeReport report;
  std::vector<float> tile(static_cast<std::size_t>(P::tokens_per_block) * P::head_dim);
  for (std::int64_t token_block = 0; token_block < layout.token_blocks(); ++token_block) {
    const int rows = layout.rows_in(token_block);
    for (int head = 0; head < shape.heads; ++head) {
      for (int row = 0; row < rows; ++row) {
        const std::int64_t token = token_block * P::tokens_per_block + row;
        const T* source = input.data() + (token * shape.heads + head) * P::head_dim;
        for (int c = 0; c < P::head_dim; ++c) tile[static_cast<std::size_t>(row) * P::head_dim + c] = to_float(source[c]);
      }
      const std::int64_t block = token_block * shape.heads + head;
      report.poisoned_groups += quantize_block<P>(tile.data(), rows, layout.block(codes.data(), meta.data(), block), params);
    }
  }
  return report;
}

template <QuantizationPolicy P, TensorElement T>
void dequantize_tensor(std::span<const std::uint8_t> codes, std::span<const std::uint8_t> meta,
                       const TensorShape& shape, std::span<T> output, const typename P::Params& params,
                       Domain domain = Domain::original) {
  const QuantizedTensorLayout<P> layout{shape};
  layout.validate();
  detail::require_size(output.size(), shape.elements(), "output");
  detail::require_size(codes.size(), layout.code_bytes(), "codes buffer");
  detail::require_size(meta.size(), layout.meta_bytes(), "meta buffer");

  float row_values[P::head_dim];
  for (std::int64_t token = 0; token < shape.tokens; ++token) {
    const std::int64_t token_block = token / P::tokens_per_block;
    const int row = static_cast<int>(token % P::tokens_per_block);
    for (int head = 0; head < shape.heads; ++head) {
      const ConstBlockRef block = layout.block(codes.data(), meta.data(), token_block * shape.heads + head);
      dequantize_row<P>(block, row, row_values, params, domain);
      T* destination = output.data() + (token * shape.heads + head) * P::head_dim;
      for (int c = 0; c < P::head_dim; ++c) destination[c] = from_float<T>(row_values[c]);
    }
  }
}

}  // namespace kvq

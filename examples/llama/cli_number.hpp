// The command-line tools' number flags (kvq_llama, kvq_eval, kvq_calibrate): the whole text must be a number of the
// type, else kvq::Error(invalid_argument) naming the flag.
#pragma once

#include <charconv>
#include <string>
#include <string_view>
#include <system_error>

#include "kvq/core/error.hpp"

namespace kvq::llama {

template <class T>
T parse_number(std::string_view flag, std::string_view text) {
  T value{};
  const auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), value);
  require(error == std::errc() && end == text.data() + text.size(), ErrorCode::invalid_argument,
          std::string(flag) + ": \"" + std::string(text) + "\" is not a number");
  return value;
}

}  // namespace kvq::llama

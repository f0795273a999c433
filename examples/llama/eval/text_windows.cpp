#include "eval/text_windows.hpp"

#include <fmt/format.h>

#include <cmath>
#include <fstream>
#include <sstream>

#include "kvq/core/error.hpp"

namespace kvq::llama {

WindowPlan plan_windows(std::int64_t text_tokens, std::int64_t window, std::int64_t stride, std::int64_t count,
                        double from) {
  require(window >= 2, ErrorCode::invalid_argument, fmt::format("--window must be at least 2, got {}", window));
  require(stride >= 1 && stride < window, ErrorCode::invalid_argument,
          fmt::format("--stride must be in [1, window - 1 = {}], got {}", window - 1, stride));
  require(count >= 0, ErrorCode::invalid_argument, fmt::format("--windows must be >= 0, got {}", count));
  require(from >= 0 && from < 1, ErrorCode::invalid_argument, fmt::format("--from must be in [0, 1), got {}", from));
  const auto first = static_cast<std::int64_t>(std::floor(from * static_cast<double>(text_tokens)));
  require(text_tokens - first >= window, ErrorCode::invalid_argument,
          fmt::format("the text has {} tokens from --from {} on, fewer than one window of {}", text_tokens - first,
                      from, window));
  WindowPlan plan;
  plan.window = window;
  plan.stride = stride;
  plan.available = (text_tokens - first - window) / stride + 1;
  const std::int64_t taken = count == 0 ? plan.available : std::min(count, plan.available);
  for (std::int64_t k = 0; k < taken; ++k) {
    // Evenly spread: the first and the last window of the text and equal steps between.
    const std::int64_t index =
        taken == 1 ? 0 : static_cast<std::int64_t>(std::llround(static_cast<double>(k) * static_cast<double>(plan.available - 1) /
                                                                 static_cast<double>(taken - 1)));
    plan.starts.push_back(first + index * stride);
  }
  return plan;
}

std::string read_text_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  require(in.good(), ErrorCode::io_error, "cannot open text file " + path);
  std::ostringstream text;
  text << in.rdbuf();
  require(!in.bad(), ErrorCode::io_error, "reading " + path + " failed");
  return text.str();
}

}  // namespace kvq::llama

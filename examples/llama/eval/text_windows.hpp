// Sliding windows over a tokenized text, as perplexity is usually measured with a bounded context: window k holds
// tokens [k * stride, k * stride + window) and scores its last `stride` predictions (the tokens at window positions
// [window - stride, window)), so every scored token sees at least window - stride tokens of context, and with every
// window taken each token of the text after the first window - stride is scored exactly once. A run may take a
// subset: `count` windows spread evenly over those that start at or after `from` (a fraction of the text).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "model/llama_model.hpp"

namespace kvq::llama {

struct WindowPlan {
  std::int64_t window = 0, stride = 0;
  std::vector<std::int64_t> starts;  // first token of each window taken
  std::int64_t available = 0;        // windows the text holds (from `from` on)
};

// kvq::Error(invalid_argument) for a stride outside [1, window - 1], a window longer than the text or `count` < 0
// (0 = every window).
WindowPlan plan_windows(std::int64_t text_tokens, std::int64_t window, std::int64_t stride, std::int64_t count,
                        double from);

// The whole file as UTF-8 text; kvq::Error(io_error) naming it if it cannot be read.
std::string read_text_file(const std::string& path);

}  // namespace kvq::llama

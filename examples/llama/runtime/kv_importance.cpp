#include "runtime/kv_importance.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <charconv>
#include <vector>

#include "kvq/core/error.hpp"

namespace kvq::llama {
namespace {

std::vector<std::string_view> fields(std::string_view spec) {
  std::vector<std::string_view> out;
  while (true) {
    const std::size_t colon = spec.find(':');
    out.push_back(spec.substr(0, colon));
    if (colon == std::string_view::npos) return out;
    spec = spec.substr(colon + 1);
  }
}

std::int64_t count(std::string_view spec, std::string_view what, std::string_view text) {
  std::int64_t value = 0;
  const auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), value);
  require(error == std::errc() && end == text.data() + text.size() && value >= 0, ErrorCode::invalid_argument,
          fmt::format("{}: {} \"{}\" is not a token count", spec, what, text));
  return value;
}

}  // namespace

std::int64_t EvictionScheme::budget() const {
  switch (kind) {
    case Kind::streaming: return streaming.budget();
    case Kind::h2o: return h2o.budget();
    case Kind::snapkv: return snapkv.budget();
    case Kind::none: break;
  }
  return 0;
}

std::string EvictionScheme::describe() const {
  switch (kind) {
    case Kind::streaming:
      return fmt::format("streaming: {} tokens ({} sinks, {} recent)", budget(), streaming.sink_tokens,
                         streaming.recent_tokens);
    case Kind::h2o:
      return fmt::format("h2o: {} tokens ({} recent, {} heavy hitters{})", budget(), h2o.recent_tokens,
                         h2o.budget_tokens - h2o.recent_tokens - h2o.sink_tokens,
                         h2o.sink_tokens > 0 ? fmt::format(", {} sinks", h2o.sink_tokens) : "");
    case Kind::snapkv:
      return fmt::format("snapkv: prompt compressed to {} tokens (observation window {}, max-pool {})", budget(),
                         snapkv.window_tokens, snapkv.pool_kernel);
    case Kind::none: break;
  }
  return "none";
}

std::int64_t EvictionScheme::tokens_held(std::int64_t tokens, std::int64_t prompt) const {
  switch (kind) {
    case Kind::streaming:
    case Kind::h2o: return std::min(tokens, budget());
    case Kind::snapkv: return prompt > budget() ? budget() + (tokens - prompt) : tokens;
    case Kind::none: break;
  }
  return tokens;
}

EvictionScheme parse_eviction_scheme(std::string_view spec) {
  EvictionScheme scheme;
  if (spec.empty()) return scheme;
  const std::vector<std::string_view> f = fields(spec);
  const auto arg = [&](std::size_t i, std::string_view what) { return count(spec, what, f[i]); };
  require(f.size() >= 2, ErrorCode::invalid_argument,
          fmt::format("--evict {}: expected streaming:BUDGET[:SINKS], h2o:BUDGET[:RECENT] or "
                      "snapkv:BUDGET[:WINDOW[:POOL]]",
                      spec));
  const std::int64_t budget = arg(1, "the budget");
  if (f[0] == "streaming") {
    require(f.size() <= 3, ErrorCode::invalid_argument, fmt::format("--evict {}: streaming:BUDGET[:SINKS]", spec));
    scheme.kind = EvictionScheme::Kind::streaming;
    const std::int64_t sinks = f.size() > 2 ? arg(2, "the sink count") : 4;
    require(budget > sinks, ErrorCode::invalid_argument,
            fmt::format("--evict {}: the budget must exceed the {} sink tokens", spec, sinks));
    scheme.streaming = {.sink_tokens = sinks, .recent_tokens = budget - sinks};
    scheme.streaming.validate();
  } else if (f[0] == "h2o") {
    require(f.size() <= 3, ErrorCode::invalid_argument, fmt::format("--evict {}: h2o:BUDGET[:RECENT]", spec));
    scheme.kind = EvictionScheme::Kind::h2o;
    // H2O's default split: half the budget recent, half heavy hitters.
    scheme.h2o = {.budget_tokens = budget, .recent_tokens = f.size() > 2 ? arg(2, "the recent window") : budget / 2};
    require(scheme.h2o.recent_tokens >= 1, ErrorCode::invalid_argument,
            fmt::format("--evict {}: the recent window must hold the incoming token (>= 1)", spec));
    scheme.h2o.validate();
  } else if (f[0] == "snapkv") {
    require(f.size() <= 4, ErrorCode::invalid_argument, fmt::format("--evict {}: snapkv:BUDGET[:WINDOW[:POOL]]", spec));
    scheme.kind = EvictionScheme::Kind::snapkv;
    scheme.snapkv = {.budget_tokens = budget,
                     .window_tokens = f.size() > 2 ? arg(2, "the observation window") : 32,
                     .pool_kernel = f.size() > 3 ? static_cast<int>(arg(3, "the pooling width")) : 7};
    scheme.snapkv.validate();
  } else {
    throw Error(ErrorCode::invalid_argument,
                fmt::format("--evict {}: unknown scheme \"{}\"; known: streaming, h2o, snapkv", spec, f[0]));
  }
  return scheme;
}

std::string PromotionScheme::describe() const {
  return enabled() ? fmt::format("promote {:g}% to int8 (window {})", 100 * fraction, window_tokens) : "none";
}

PromotionScheme parse_promotion_scheme(std::string_view spec) {
  PromotionScheme scheme;
  if (spec.empty()) return scheme;
  const std::vector<std::string_view> f = fields(spec);
  require(f.size() <= 2, ErrorCode::invalid_argument, fmt::format("--promote {}: expected FRACTION[:WINDOW]", spec));
  double fraction = 0;
  const auto [end, error] = std::from_chars(f[0].data(), f[0].data() + f[0].size(), fraction);
  require(error == std::errc() && end == f[0].data() + f[0].size() && fraction > 0 && fraction <= 1,
          ErrorCode::invalid_argument,
          fmt::format("--promote {}: the fraction \"{}\" is not a number in (0, 1]", spec, f[0]));
  scheme.fraction = fraction;
  if (f.size() > 1) {
    scheme.window_tokens = static_cast<int>(count(spec, "the window", f[1]));
    require(scheme.window_tokens >= 1, ErrorCode::invalid_argument,
            fmt::format("--promote {}: the fp16 window must hold at least one token", spec));
  }
  return scheme;
}

}  // namespace kvq::llama

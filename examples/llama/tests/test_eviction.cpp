// --evict on the CPU backend (runtime/kv_importance.hpp) with the tiny random model: scoring in chunks gives the
// logits of token-by-token decode under the same budget (the steps stop where decode would evict, and prefill
// chunks accumulate the importance decode steps would), the cache never holds more than the budget, snapkv
// compresses the prompt exactly once, and bad schemes are refused with the problem named.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "kvq/core/error.hpp"
#include "model/llama_model.hpp"
#include "runtime/cpu_backend.hpp"
#include "runtime/kv_importance.hpp"
#include "tiny_model.hpp"

using namespace kvq::llama;
using namespace kvq::llama::test;

namespace {

std::vector<TokenId> prompt_of(int count, int vocabulary) {
  std::vector<TokenId> tokens;
  for (int i = 0; i < count; ++i) tokens.push_back(static_cast<TokenId>((i * 53 + 7) % (vocabulary - 3)));
  return tokens;
}

KvCacheOptions options_for(const std::string& preset, const std::string& evict, const std::string& promote = "") {
  KvCacheOptions options;
  options.preset = preset;
  options.max_tokens = 320;
  options.page_tokens = 128;
  options.evict = evict;
  options.promote = promote;
  return options;
}

double rms(const std::vector<float>& a, const std::vector<float>& b) {
  double squares = 0;
  for (std::size_t i = 0; i < a.size(); ++i) squares += (a[i] - b[i]) * (a[i] - b[i]);
  return std::sqrt(squares / static_cast<double>(a.size()));
}

}  // namespace

TEST_CASE("--evict: chunked scoring equals token-by-token decode under the same budget; the budget holds") {
  TempDir dir;
  write_file(dir / "tiny.gguf", tiny_gguf(make_tiny_model(21)).bytes());
  const LlamaModel model = load_model(dir / "tiny.gguf");
  const std::vector<TokenId> tokens = prompt_of(260, model.config.vocabulary);
  const auto vocabulary = static_cast<std::size_t>(model.config.vocabulary);
  const auto decode_all = [&](const KvCacheOptions& options, std::int64_t prompt) -> std::vector<float> {
    auto backend = make_cpu_backend(model, options);
    backend->set_prompt_length(prompt);
    std::vector<float> logits(tokens.size() * vocabulary);
    for (std::size_t t = 0; t < tokens.size(); ++t) {
      const auto row = backend->forward({&tokens[t], 1});
      std::copy(row.begin(), row.end(), logits.begin() + static_cast<std::ptrdiff_t>(t * vocabulary));
      const EvictionScheme scheme = parse_eviction_scheme(options.evict);
      if (scheme.kind == EvictionScheme::Kind::streaming || scheme.kind == EvictionScheme::Kind::h2o)
        CHECK(backend->position() == std::min<std::int64_t>(static_cast<std::int64_t>(t) + 1, scheme.budget()));
    }
    return logits;
  };
  const auto steps = [&](const KvCacheOptions& options, std::int64_t prompt) {
    auto backend = make_cpu_backend(model, options);
    backend->set_prompt_length(prompt);
    std::vector<float> logits(tokens.size() * vocabulary);
    backend->forward_logits(tokens, logits);
    return std::pair{logits, backend->position()};
  };
  const std::vector<float> full = decode_all(options_for("int8", ""), 0);
  for (const std::string preset : {"int8", "kivi-2"})
    for (const std::string evict : {"streaming:100", "streaming:97:1", "h2o:100", "h2o:64:16", "snapkv:96:16:5", "",
                                    "h2o:100+promote"}) {
      INFO(preset << " + " << evict);
      // "+promote": int8 copies of a quarter of the quantized tokens (window 16), alone or with h2o.
      const bool promote = evict.empty() || evict.ends_with("+promote");
      const std::string scheme_text = evict.ends_with("+promote") ? evict.substr(0, evict.size() - 8) : evict;
      const KvCacheOptions options = options_for(preset, scheme_text, promote ? "0.25:16" : "");
      const std::int64_t prompt = 200;  // snapkv: compress after 200 tokens
      const std::vector<float> decoded = decode_all(options, prompt);
      const auto [chunked, position] = steps(options, prompt);
      // What eviction itself changes (against every token in int8), and how far the chunked run is from decode:
      // float BLAS instead of the decode reference's double, nothing else, so the selections agree.
      const double effect = rms(decoded, full), gap = rms(decoded, chunked);
      if (!scheme_text.empty()) CHECK(effect > 1e-3);
      CHECK(gap < 0.01 * std::max(effect, 1e-3));
      const EvictionScheme scheme = parse_eviction_scheme(scheme_text);
      CHECK(position == scheme.tokens_held(static_cast<std::int64_t>(tokens.size()), prompt));
      if (promote) CHECK(make_cpu_backend(model, options)->kv_cache().format.find("promote 25% to int8 (window 16)") != std::string::npos);
    }
}

TEST_CASE("--evict: bad schemes are refused with the problem named") {
  const auto message = [](const std::string& spec) {
    try {
      static_cast<void>(parse_eviction_scheme(spec));
    } catch (const kvq::Error& e) {
      return std::string(e.what());
    }
    return std::string("(accepted)");
  };
  CHECK(message("lru:100").find("unknown scheme \"lru\"") != std::string::npos);
  CHECK(message("h2o").find("expected streaming:BUDGET") != std::string::npos);
  CHECK(message("h2o:ten").find("the budget \"ten\" is not a token count") != std::string::npos);
  CHECK(message("h2o:10:12").find("below sinks + recent window (0 + 12)") != std::string::npos);
  CHECK(message("h2o:10:0").find("recent window must hold the incoming token") != std::string::npos);
  CHECK(message("streaming:4").find("must exceed the 4 sink tokens") != std::string::npos);
  CHECK(message("snapkv:16").find("below its observation window of 32") != std::string::npos);
  CHECK(message("snapkv:64:16:4").find("pool_kernel must be odd") != std::string::npos);
  CHECK(message("streaming:100:4:9").find("streaming:BUDGET[:SINKS]") != std::string::npos);
  CHECK(parse_eviction_scheme("").kind == EvictionScheme::Kind::none);
  const auto promotion = [](const std::string& spec) {
    try {
      static_cast<void>(parse_promotion_scheme(spec));
    } catch (const kvq::Error& e) {
      return std::string(e.what());
    }
    return std::string("(accepted)");
  };
  CHECK(promotion("1.5").find("not a number in (0, 1]") != std::string::npos);
  CHECK(promotion("0.1:0").find("at least one token") != std::string::npos);
  CHECK(promotion("0.1:8:3").find("FRACTION[:WINDOW]") != std::string::npos);
  CHECK(parse_promotion_scheme("0.1").window_tokens == 32);
  // What the GPU backend (and kvq_llama before it) calls to refuse them.
  KvCacheOptions kv;
  CHECK_NOTHROW(require_host_only_schemes_absent(kv));
  kv.evict = "h2o:256";
  CHECK_THROWS_WITH_AS(require_host_only_schemes_absent(kv), doctest::Contains("CPU backend only"), kvq::Error);
  kv.evict.clear();
  kv.promote = "0.1";
  CHECK_THROWS_WITH_AS(require_host_only_schemes_absent(kv), doctest::Contains("CPU backend only"), kvq::Error);
  CHECK(parse_eviction_scheme("h2o:256").h2o.recent_tokens == 128);
}

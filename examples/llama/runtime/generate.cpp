#include "runtime/generate.hpp"

#include <algorithm>
#include <chrono>

#include "kvq/core/error.hpp"

namespace kvq::llama {

namespace {

GenerationResult run(Backend& backend, const Tokenizer* tokenizer, std::span<const TokenId> prompt,
                     const GenerationOptions& options, const std::function<void(std::string_view)>& on_text) {
  require(!prompt.empty(), ErrorCode::invalid_argument, "generate: the prompt has no tokens");
  require(options.chunk_tokens > 0, ErrorCode::invalid_argument, "--chunk must be > 0");
  require(options.max_new_tokens >= 0, ErrorCode::invalid_argument, "--tokens must be >= 0");
  using Clock = std::chrono::steady_clock;
  const auto seconds = [](Clock::duration d) { return std::chrono::duration<double>(d).count(); };
  GenerationResult result;
  result.prompt_tokens = static_cast<std::int64_t>(prompt.size());
  Sampler sampler(options.sampling);

  const auto prefill_start = Clock::now();
  std::span<const float> logits;
  for (std::size_t begin = 0; begin < prompt.size(); begin += static_cast<std::size_t>(options.chunk_tokens)) {
    const std::size_t size = std::min(prompt.size() - begin, static_cast<std::size_t>(options.chunk_tokens));
    logits = backend.forward(prompt.subspan(begin, size));
  }
  result.prefill_seconds = seconds(Clock::now() - prefill_start);

  std::string printed;  // bytes already passed to on_text
  const auto decode_start = Clock::now();
  for (int step = 0; step < options.max_new_tokens; ++step) {
    const TokenId token = sampler.next(logits);
    if (std::find(options.stop_ids.begin(), options.stop_ids.end(), token) != options.stop_ids.end()) {
      result.stopped = true;
      break;
    }
    result.tokens.push_back(token);
    if (tokenizer != nullptr && on_text) {
      const std::string text = tokenizer->decode(result.tokens, /*skip_special=*/true);
      const std::size_t complete = complete_utf8_prefix(text);
      if (complete > printed.size()) {
        on_text(std::string_view(text).substr(printed.size(), complete - printed.size()));
        printed = text.substr(0, complete);
      }
    }
    if (step + 1 == options.max_new_tokens) break;  // the last token needs no forward pass
    logits = backend.forward({&token, 1});
    ++result.decode_steps;
  }
  result.decode_seconds = seconds(Clock::now() - decode_start);
  if (tokenizer == nullptr) return result;
  result.text = tokenizer->decode(result.tokens, /*skip_special=*/true);
  if (on_text && result.text.size() > printed.size()) on_text(std::string_view(result.text).substr(printed.size()));
  return result;
}

}  // namespace

GenerationResult generate(Backend& backend, const Tokenizer& tokenizer, std::span<const TokenId> prompt,
                          const GenerationOptions& options, const std::function<void(std::string_view)>& on_text) {
  return run(backend, &tokenizer, prompt, options, on_text);
}

GenerationResult generate(Backend& backend, std::span<const TokenId> prompt, const GenerationOptions& options) {
  return run(backend, nullptr, prompt, options, {});
}

}  // namespace kvq::llama

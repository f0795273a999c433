// The generation loop, independent of where the model runs: prefill the prompt in chunks through a Backend, then
// decode one token at a time until a stop token or the token budget, timing both phases.
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "runtime/backend.hpp"
#include "runtime/sampler.hpp"

namespace kvq::llama {

struct GenerationOptions {
  int max_new_tokens = 32;
  int chunk_tokens = 256;  // prompt tokens per prefill step
  SamplingOptions sampling{};
  std::vector<TokenId> stop_ids;  // generation ends after producing one of these (it is not printed)
};

struct GenerationResult {
  std::vector<TokenId> tokens;  // generated, the stop token excluded
  std::string text;             // their decoded text (special tokens skipped)
  bool stopped = false;         // ended at a stop token rather than the budget
  std::int64_t prompt_tokens = 0;
  double prefill_seconds = 0, decode_seconds = 0;
  int decode_steps = 0;  // forward() calls after the prompt
  [[nodiscard]] double prefill_tokens_per_second() const {
    return prefill_seconds > 0 ? prompt_tokens / prefill_seconds : 0;
  }
  [[nodiscard]] double decode_tokens_per_second() const {
    return decode_seconds > 0 ? decode_steps / decode_seconds : 0;
  }
};

// `on_text` (optional) receives the generated text as it grows, in whole UTF-8 characters.
GenerationResult generate(Backend& backend, const Tokenizer& tokenizer, std::span<const TokenId> prompt,
                          const GenerationOptions& options, const std::function<void(std::string_view)>& on_text = {});

// The same loop without a tokenizer (synthetic weights): token ids only, no text.
GenerationResult generate(Backend& backend, std::span<const TokenId> prompt, const GenerationOptions& options);

}  // namespace kvq::llama

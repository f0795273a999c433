#include "eval/passkey.hpp"

#include <fmt/format.h>

#include <random>

#include "kvq/core/error.hpp"

namespace kvq::llama {

PasskeyPrompt make_passkey_prompt(const Tokenizer& tokenizer, const std::vector<TokenId>& filler, std::int64_t context,
                                  double depth, std::uint64_t seed) {
  require(depth >= 0 && depth <= 1, ErrorCode::invalid_argument, fmt::format("passkey depth {} is outside [0, 1]", depth));
  std::mt19937_64 random(seed);
  PasskeyPrompt p;
  p.passkey = std::uniform_int_distribution<int>(10000, 99999)(random);
  const auto encode = [&](const std::string& text) { return tokenizer.encode(text, /*add_bos=*/false, false); };
  const std::vector<TokenId> intro = tokenizer.encode(
      "There is an important piece of information hidden inside a lot of irrelevant text. Find it and memorize it. "
      "I will quiz you about the important information there.\n\n",
      tokenizer.add_bos(), false);
  const std::vector<TokenId> needle =
      encode(fmt::format("\nThe pass key is {0}. Remember it. {0} is the pass key.\n", p.passkey));
  const std::vector<TokenId> question = encode("\n\nWhat is the pass key? The pass key is");
  const std::vector<TokenId> answer = encode(fmt::format(" {}", p.passkey));
  const auto fixed = static_cast<std::int64_t>(intro.size() + needle.size() + question.size() + answer.size());
  const std::int64_t room = context - fixed;
  require(room > 0, ErrorCode::invalid_argument,
          fmt::format("passkey context {} leaves no room for filler ({} tokens are the task itself)", context, fixed));
  require(static_cast<std::int64_t>(filler.size()) > room, ErrorCode::invalid_argument,
          fmt::format("the filler text has {} tokens, fewer than the {} a passkey prompt of {} needs", filler.size(),
                      room, context));
  const auto start = std::uniform_int_distribution<std::int64_t>(0, static_cast<std::int64_t>(filler.size()) - room)(random);
  const auto split = static_cast<std::int64_t>(depth * static_cast<double>(room) + 0.5);
  const auto from = filler.begin() + start;
  p.tokens = intro;
  p.tokens.insert(p.tokens.end(), from, from + split);
  p.needle_position = static_cast<std::int64_t>(p.tokens.size());
  p.tokens.insert(p.tokens.end(), needle.begin(), needle.end());
  p.tokens.insert(p.tokens.end(), from + split, from + room);
  p.tokens.insert(p.tokens.end(), question.begin(), question.end());
  p.answer_begin = static_cast<std::int64_t>(p.tokens.size());
  p.tokens.insert(p.tokens.end(), answer.begin(), answer.end());
  return p;
}

}  // namespace kvq::llama

// Passkey retrieval (Mohtashami & Jaggi, 2023): a random 5-digit number stated once at a chosen depth of long
// filler text, and a question at the end. The prompt is
//   intro, filler[0, a), needle ("The pass key is N. Remember it. N is the pass key."), filler[a, b), question
// followed by the answer " N", at exactly `context` tokens in all. Retrieval counts as correct when the model's most
// likely next token is the answer's token at every answer position (teacher-forced): exactly the condition under
// which greedy decoding after the question writes the number, without running the decode loop.
#pragma once

#include <cstdint>
#include <vector>

#include "model/llama_model.hpp"
#include "tokenizer/tokenizer.hpp"

namespace kvq::llama {

struct PasskeyPrompt {
  std::vector<TokenId> tokens;  // intro + filler + needle + filler + question + answer: `context` tokens
  std::int64_t answer_begin = 0;  // tokens[answer_begin, size) are the answer
  std::int64_t needle_position = 0;
  int passkey = 0;
};

// `filler`: the tokenized filler text; the trial takes a stretch of it starting at a position drawn from `seed`.
// `depth` in [0, 1]: where the needle goes in the filler. kvq::Error(invalid_argument) if `context` leaves no room
// for filler or the filler text is shorter than the context.
PasskeyPrompt make_passkey_prompt(const Tokenizer& tokenizer, const std::vector<TokenId>& filler, std::int64_t context,
                                  double depth, std::uint64_t seed);

}  // namespace kvq::llama

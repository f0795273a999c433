// Pre-tokenization: how text is cut into pieces before byte-level BPE runs on each piece alone. A pre-tokenizer
// here is a list of regular expressions applied in turn, each cutting every current piece into its matches and
// the text between them ("Isolated" in Hugging Face tokenizers' terms), optionally after a space is put in front.
// That covers the models this example targets:
//   Llama-3 (tokenizer.json Split + ByteLevel without regex; GGUF pre "llama-bpe"):   {llama3_pattern}
//   GPT-2 style (ByteLevel with its built-in regex; GGUF pre "gpt2"):                  {gpt2_pattern}
//   SmolLM / SmolLM2 (Digits individual_digits + ByteLevel; GGUF pre "smollm"):        {digits_pattern, gpt2_pattern}
//
// The patterns need Unicode properties (\p{L}, \p{N}) and look-ahead, which std::regex does not have; they run on
// PCRE2 with PCRE2_UTF | PCRE2_UCP, where \s, \p{L} and \p{N} follow Unicode as the Rust regex crate behind
// tokenizers does.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace kvq::llama {

// Llama-3's pattern, as in its tokenizer.json (contractions case-insensitive, digits in runs of at most three).
inline constexpr std::string_view llama3_pattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
// GPT-2's pattern, the one tokenizers' ByteLevel pre-tokenizer uses when use_regex is true.
inline constexpr std::string_view gpt2_pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";
// tokenizers' Digits pre-tokenizer with individual_digits: every numeric character is a piece of its own.
inline constexpr std::string_view digits_pattern = R"(\p{N})";

class RegexSplitter {
 public:
  // Throws kvq::Error(invalid_argument) with PCRE2's message if the pattern does not compile.
  explicit RegexSplitter(std::string_view pattern);
  // Appends to `out` the pieces of `text` (valid UTF-8): each match and each non-empty stretch between matches.
  void split(std::string_view text, std::vector<std::string>& out) const;
  [[nodiscard]] const std::string& pattern() const { return pattern_; }

 private:
  struct Compiled;
  std::string pattern_;
  std::shared_ptr<const Compiled> compiled_;
};

class PreTokenizer {
 public:
  PreTokenizer() = default;
  PreTokenizer(const std::vector<std::string>& patterns, bool add_prefix_space);
  // The pieces of `text` (valid UTF-8), in order; concatenated they give `text` (with the prefix space, if any).
  [[nodiscard]] std::vector<std::string> split(std::string_view text) const;
  [[nodiscard]] const std::vector<RegexSplitter>& steps() const { return steps_; }

 private:
  std::vector<RegexSplitter> steps_;
  bool add_prefix_space_ = false;
};

// True when `text` is well-formed UTF-8 (no overlong forms, surrogates or code points above U+10FFFF); otherwise
// `error_offset` gets the byte offset of the first bad sequence.
bool is_valid_utf8(std::string_view text, std::size_t* error_offset = nullptr);

// Bytes of `text` that form complete UTF-8 characters at its start: a streaming printer holds back the rest
// until the next token completes them.
std::size_t complete_utf8_prefix(std::string_view text);

}  // namespace kvq::llama

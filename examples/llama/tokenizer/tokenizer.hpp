// Byte-level BPE (GPT-2, Llama-3, SmolLM): text -> special tokens matched first -> pre-tokenizer pieces -> each
// piece's UTF-8 bytes written as GPT-2's printable stand-in characters -> BPE merges by rank -> ids; and back.
//
// GPT-2's byte-to-unicode map gives each of the 256 byte values one printable character: bytes that are already
// printable and not a space ('!'..'~', 0xA1..0xAC, 0xAE..0xFF) stand for themselves, the other 68 take the code
// points 256, 257, ... in byte order (so a space is U+0120 'Ġ' and a newline U+010A 'Ċ'). Vocabulary entries and
// merges are written in those characters; special tokens are plain text.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "tokenizer/pre_tokenizer.hpp"

namespace kvq::llama {

using TokenId = std::int32_t;

// What a tokenizer file (tokenizer.json, or a GGUF's tokenizer.ggml.* keys) says; tokenizer_sources.hpp reads them.
struct TokenizerSpec {
  std::string source;                                       // the file, for messages
  std::vector<std::string> tokens;                          // id -> token text
  std::vector<std::pair<std::string, std::string>> merges;  // in rank order
  std::vector<TokenId> special_ids;                         // matched in text before BPE, decoded verbatim
  std::vector<std::string> pre_tokenizer_patterns;
  bool add_prefix_space = false;
  bool ignore_merges = false;  // a piece that is a whole vocabulary entry is that token (Llama-3's tokenizer.json)
  std::optional<TokenId> bos_id, eos_id;
  bool add_bos = false;
  std::vector<TokenId> end_of_turn_ids;  // besides eos, tokens that end a reply (<|im_end|>, <|eot_id|>)
  std::string chat_template;             // Jinja source as the file has it, or empty
};

class Tokenizer {
 public:
  Tokenizer() = default;
  // Checks the vocabulary (byte-level, ids unique) and every merge (both halves and their join are
  // tokens); throws kvq::Error(io_error) naming the source and the entry.
  explicit Tokenizer(TokenizerSpec spec);

  // Encodes UTF-8 text (kvq::Error(invalid_argument) if it is not valid UTF-8). With `parse_special`, the text of
  // a special token ("<|im_start|>") becomes that token; otherwise it is tokenized as ordinary text.
  [[nodiscard]] std::vector<TokenId> encode(std::string_view text, bool add_bos, bool parse_special = true) const;
  // The bytes the ids stand for; special tokens give their text unless skipped. A single token may end inside a
  // UTF-8 character (byte tokens), so the result of a prefix of a sequence need not be valid UTF-8.
  [[nodiscard]] std::string decode(std::span<const TokenId> ids, bool skip_special = false) const;

  [[nodiscard]] int vocabulary_size() const { return static_cast<int>(tokens_.size()); }
  [[nodiscard]] const std::string& token_text(TokenId id) const;
  [[nodiscard]] std::optional<TokenId> find_token(std::string_view text) const;
  [[nodiscard]] bool is_special(TokenId id) const;
  [[nodiscard]] std::optional<TokenId> bos_id() const { return spec_.bos_id; }
  [[nodiscard]] std::optional<TokenId> eos_id() const { return spec_.eos_id; }
  [[nodiscard]] bool add_bos() const { return spec_.add_bos; }
  // eos and the end-of-turn tokens: generation stops at any of them.
  [[nodiscard]] std::vector<TokenId> stop_ids() const;
  [[nodiscard]] const std::string& chat_template() const { return spec_.chat_template; }
  [[nodiscard]] const std::string& source() const { return spec_.source; }

 private:
  void encode_ordinary(std::string_view text, std::vector<TokenId>& out) const;
  void encode_piece(const std::string& piece, std::vector<TokenId>& out) const;

  TokenizerSpec spec_;
  std::vector<std::string> tokens_;
  std::unordered_map<std::string, TokenId> ids_;
  struct Merge {
    int rank;
    TokenId result;
  };
  std::unordered_map<std::uint64_t, Merge> merges_;  // key: left id << 32 | right id
  std::vector<bool> special_;
  std::vector<TokenId> specials_by_length_;  // longest first, so "<|im_start|>" wins over a shorter prefix
  bool special_first_byte_[256] = {};        // whether some special token starts with this byte
  TokenId byte_tokens_[256] = {};            // -1: the vocabulary has no token for the byte
  std::unordered_map<std::uint32_t, std::uint8_t> unicode_to_byte_;
  PreTokenizer pre_tokenizer_;
};

// GPT-2's printable stand-in (UTF-8) for a byte value.
std::string byte_to_unicode(std::uint8_t byte);

}  // namespace kvq::llama

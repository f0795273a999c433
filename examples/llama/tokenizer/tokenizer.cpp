#include "tokenizer/tokenizer.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <limits>

#include "kvq/core/error.hpp"

namespace kvq::llama {
namespace {

std::uint32_t byte_to_code_point(std::uint8_t byte) {
  const bool printable = (byte >= '!' && byte <= '~') || (byte >= 0xA1 && byte <= 0xAC) || byte >= 0xAE;
  if (printable) return byte;
  // The non-printable bytes, in byte order, take 256, 257, ...: count those below this one.
  std::uint32_t below = 0;
  for (int b = 0; b < byte; ++b) {
    const bool p = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
    below += p ? 0 : 1;
  }
  return 256 + below;
}

void append_utf8(std::uint32_t code, std::string& out) {
  if (code < 0x80) {
    out += static_cast<char>(code);
  } else if (code < 0x800) {
    out += static_cast<char>(0xC0 | (code >> 6));
    out += static_cast<char>(0x80 | (code & 0x3F));
  } else if (code < 0x10000) {
    out += static_cast<char>(0xE0 | (code >> 12));
    out += static_cast<char>(0x80 | ((code >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (code & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (code >> 18));
    out += static_cast<char>(0x80 | ((code >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((code >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (code & 0x3F));
  }
}

// Next code point of valid UTF-8 at text[i]; advances i.
std::uint32_t next_code_point(std::string_view text, std::size_t& i) {
  const auto lead = static_cast<unsigned char>(text[i]);
  int length = lead < 0x80 ? 1 : (lead & 0xE0) == 0xC0 ? 2 : (lead & 0xF0) == 0xE0 ? 3 : 4;
  std::uint32_t code = length == 1 ? lead : length == 2 ? lead & 0x1F : length == 3 ? lead & 0x0F : lead & 0x07;
  for (int k = 1; k < length && i + static_cast<std::size_t>(k) < text.size(); ++k)
    code = (code << 6) | (static_cast<unsigned char>(text[i + static_cast<std::size_t>(k)]) & 0x3F);
  i += static_cast<std::size_t>(length);
  return code;
}

std::uint64_t pair_key(TokenId left, TokenId right) {
  return (static_cast<std::uint64_t>(static_cast<std::uint32_t>(left)) << 32) | static_cast<std::uint32_t>(right);
}

}  // namespace

std::string byte_to_unicode(std::uint8_t byte) {
  std::string text;
  append_utf8(byte_to_code_point(byte), text);
  return text;
}

Tokenizer::Tokenizer(TokenizerSpec spec) : spec_(std::move(spec)), tokens_(spec_.tokens) {
  const std::string& source = spec_.source;
  require(!tokens_.empty() && tokens_.size() < static_cast<std::size_t>(std::numeric_limits<TokenId>::max()),
          ErrorCode::io_error, source + ": the tokenizer has no tokens");
  special_.assign(tokens_.size(), false);
  for (TokenId id : spec_.special_ids) {
    require(id >= 0 && static_cast<std::size_t>(id) < tokens_.size() && !tokens_[static_cast<std::size_t>(id)].empty(),
            ErrorCode::io_error, fmt::format("{}: special token id {} is not in the vocabulary", source, id));
    special_[static_cast<std::size_t>(id)] = true;
    specials_by_length_.push_back(id);
    special_first_byte_[static_cast<std::uint8_t>(tokens_[static_cast<std::size_t>(id)][0])] = true;
  }
  std::stable_sort(specials_by_length_.begin(), specials_by_length_.end(), [&](TokenId a, TokenId b) {
    return tokens_[static_cast<std::size_t>(a)].size() > tokens_[static_cast<std::size_t>(b)].size();
  });
  ids_.reserve(tokens_.size());
  for (std::size_t id = 0; id < tokens_.size(); ++id) {
    if (tokens_[id].empty() || special_[id]) continue;  // empty: an id the file leaves unused
    const auto [it, inserted] = ids_.emplace(tokens_[id], static_cast<TokenId>(id));
    if (!inserted)
      throw Error(ErrorCode::io_error,
                  fmt::format("{}: token \"{}\" appears twice (ids {} and {})", source, tokens_[id], it->second, id));
  }
  // A vocabulary may lack the stand-ins of bytes its training text never had (SmolLM2 has no token for 21 of
  // them: some control characters and bytes that valid UTF-8 never contains). Such bytes are dropped when
  // encoding, as tokenizers does for a BPE model without an unknown token.
  int byte_count = 0;
  for (int byte = 0; byte < 256; ++byte) {
    const auto it = ids_.find(byte_to_unicode(static_cast<std::uint8_t>(byte)));
    byte_tokens_[byte] = it == ids_.end() ? -1 : it->second;
    byte_count += it == ids_.end() ? 0 : 1;
    unicode_to_byte_.emplace(byte_to_code_point(static_cast<std::uint8_t>(byte)), static_cast<std::uint8_t>(byte));
  }
  require(
      byte_count >= 128, ErrorCode::io_error,
      fmt::format("{}: not a byte-level BPE vocabulary: only {} of the 256 byte tokens are there", source, byte_count));
  merges_.reserve(spec_.merges.size());
  for (std::size_t rank = 0; rank < spec_.merges.size(); ++rank) {
    const auto& [left, right] = spec_.merges[rank];
    const auto l = ids_.find(left), r = ids_.find(right), joined = ids_.find(left + right);
    if (l == ids_.end() || r == ids_.end() || joined == ids_.end())
      throw Error(ErrorCode::io_error,
                  fmt::format("{}: merge {} (\"{} {}\") names a token that is not in the vocabulary", source, rank,
                              left, right));
    // A repeated pair keeps its first (lowest) rank, as tokenizers does.
    merges_.emplace(pair_key(l->second, r->second), Merge{static_cast<int>(rank), joined->second});
  }
  pre_tokenizer_ = PreTokenizer(spec_.pre_tokenizer_patterns, spec_.add_prefix_space);
  auto check_id = [&](std::optional<TokenId> id, const char* what) {
    require(!id || (*id >= 0 && static_cast<std::size_t>(*id) < tokens_.size()), ErrorCode::io_error,
            fmt::format("{}: {} id {} is not in the vocabulary", source, what, id.value_or(-1)));
  };
  check_id(spec_.bos_id, "bos");
  check_id(spec_.eos_id, "eos");
  for (TokenId id : spec_.end_of_turn_ids) check_id(id, "end-of-turn");
  require(!spec_.add_bos || spec_.bos_id.has_value(), ErrorCode::io_error,
          source + ": adds a bos token but names none");
}

const std::string& Tokenizer::token_text(TokenId id) const {
  require(id >= 0 && static_cast<std::size_t>(id) < tokens_.size(), ErrorCode::invalid_argument,
          fmt::format("token id {} is outside the vocabulary of {}", id, tokens_.size()));
  return tokens_[static_cast<std::size_t>(id)];
}

std::optional<TokenId> Tokenizer::find_token(std::string_view text) const {
  const auto it = ids_.find(std::string(text));
  if (it != ids_.end()) return it->second;
  for (TokenId id : specials_by_length_)
    if (tokens_[static_cast<std::size_t>(id)] == text) return id;
  return std::nullopt;
}

bool Tokenizer::is_special(TokenId id) const {
  return id >= 0 && static_cast<std::size_t>(id) < special_.size() && special_[static_cast<std::size_t>(id)];
}

std::vector<TokenId> Tokenizer::stop_ids() const {
  std::vector<TokenId> ids = spec_.end_of_turn_ids;
  if (spec_.eos_id && std::find(ids.begin(), ids.end(), *spec_.eos_id) == ids.end()) ids.push_back(*spec_.eos_id);
  return ids;
}

std::vector<TokenId> Tokenizer::encode(std::string_view text, bool add_bos, bool parse_special) const {
  if (std::size_t bad = 0; !is_valid_utf8(text, &bad))
    throw Error(ErrorCode::invalid_argument, fmt::format("tokenizer: the text is not valid UTF-8 (byte {})", bad));
  std::vector<TokenId> ids;
  if (add_bos) {
    require(spec_.bos_id.has_value(), ErrorCode::invalid_argument, spec_.source + ": the tokenizer has no bos token");
    ids.push_back(*spec_.bos_id);
  }
  std::size_t ordinary_begin = 0;
  if (parse_special && !specials_by_length_.empty()) {
    for (std::size_t i = 0; i < text.size();) {
      TokenId found = -1;
      if (!special_first_byte_[static_cast<std::uint8_t>(text[i])]) {
        ++i;
        continue;
      }
      for (TokenId id : specials_by_length_) {
        const std::string& content = tokens_[static_cast<std::size_t>(id)];
        if (text.compare(i, content.size(), content) == 0) {
          found = id;
          break;
        }
      }
      if (found < 0) {
        ++i;
        continue;
      }
      encode_ordinary(text.substr(ordinary_begin, i - ordinary_begin), ids);
      ids.push_back(found);
      i += tokens_[static_cast<std::size_t>(found)].size();
      ordinary_begin = i;
    }
  }
  encode_ordinary(text.substr(ordinary_begin), ids);
  return ids;
}

void Tokenizer::encode_ordinary(std::string_view text, std::vector<TokenId>& out) const {
  if (text.empty()) return;
  for (const std::string& piece : pre_tokenizer_.split(text)) encode_piece(piece, out);
}

void Tokenizer::encode_piece(const std::string& piece, std::vector<TokenId>& out) const {
  if (spec_.ignore_merges) {
    std::string mapped;
    for (char c : piece) mapped += byte_to_unicode(static_cast<std::uint8_t>(c));
    if (const auto it = ids_.find(mapped); it != ids_.end()) {
      out.push_back(it->second);
      return;
    }
  }
  std::vector<TokenId> symbols;
  symbols.reserve(piece.size());
  for (char c : piece)
    if (const TokenId id = byte_tokens_[static_cast<std::uint8_t>(c)]; id >= 0) symbols.push_back(id);
  // Repeatedly merge the adjacent pair of lowest rank (the leftmost among equals). Pieces are words, a few
  // symbols long, so the quadratic scan costs less than a priority queue would.
  while (symbols.size() > 1) {
    int best_rank = std::numeric_limits<int>::max();
    std::size_t best = 0;
    TokenId best_result = 0;
    for (std::size_t i = 0; i + 1 < symbols.size(); ++i) {
      const auto it = merges_.find(pair_key(symbols[i], symbols[i + 1]));
      if (it != merges_.end() && it->second.rank < best_rank) {
        best_rank = it->second.rank;
        best = i;
        best_result = it->second.result;
      }
    }
    if (best_rank == std::numeric_limits<int>::max()) break;
    symbols[best] = best_result;
    symbols.erase(symbols.begin() + static_cast<std::ptrdiff_t>(best) + 1);
  }
  out.insert(out.end(), symbols.begin(), symbols.end());
}

std::string Tokenizer::decode(std::span<const TokenId> ids, bool skip_special) const {
  std::string text;
  for (TokenId id : ids) {
    const std::string& token = token_text(id);
    if (is_special(id)) {
      if (!skip_special) text += token;
      continue;
    }
    for (std::size_t i = 0; i < token.size();) {
      const std::size_t start = i;
      const std::uint32_t code = next_code_point(token, i);
      const auto it = unicode_to_byte_.find(code);
      if (it != unicode_to_byte_.end())
        text += static_cast<char>(it->second);
      else
        text.append(token, start, i - start);  // not a byte stand-in (a plain-text added token): verbatim
    }
  }
  return text;
}

}  // namespace kvq::llama

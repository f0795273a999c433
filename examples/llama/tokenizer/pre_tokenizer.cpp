#include "tokenizer/pre_tokenizer.hpp"

#include <pcre2.h>

#include "kvq/core/error.hpp"

namespace kvq::llama {

struct RegexSplitter::Compiled {
  pcre2_code* code = nullptr;
  ~Compiled() { pcre2_code_free(code); }
};

RegexSplitter::RegexSplitter(std::string_view pattern) : pattern_(pattern) {
  int error_code = 0;
  PCRE2_SIZE error_offset = 0;
  pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern_.data()), pattern_.size(),
                                   PCRE2_UTF | PCRE2_UCP, &error_code, &error_offset, nullptr);
  if (code == nullptr) {
    PCRE2_UCHAR message[256];
    pcre2_get_error_message(error_code, message, sizeof(message));
    throw Error(ErrorCode::invalid_argument, "pre-tokenizer pattern " + pattern_ + " does not compile at offset " +
                                                 std::to_string(error_offset) + ": " +
                                                 reinterpret_cast<char*>(message));
  }
  // JIT compilation makes the matches several times faster; where it is unavailable the interpreter gives the
  // same results.
  pcre2_jit_compile(code, PCRE2_JIT_COMPLETE);
  auto compiled = std::make_shared<Compiled>();
  compiled->code = code;
  compiled_ = std::move(compiled);
}

void RegexSplitter::split(std::string_view text, std::vector<std::string>& out) const {
  std::unique_ptr<pcre2_match_data, decltype(&pcre2_match_data_free)> match(
      pcre2_match_data_create_from_pattern(compiled_->code, nullptr), &pcre2_match_data_free);
  require(match != nullptr, ErrorCode::out_of_memory, "pre-tokenizer: cannot allocate PCRE2 match data");
  const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data());
  std::size_t start = 0;
  while (start < text.size()) {
    // The caller validated the UTF-8 once; without NO_UTF_CHECK PCRE2 would check the whole subject per match.
    const int result =
        pcre2_match(compiled_->code, subject, text.size(), start, PCRE2_NO_UTF_CHECK, match.get(), nullptr);
    if (result == PCRE2_ERROR_NOMATCH) break;
    if (result < 0) {
      PCRE2_UCHAR message[256];
      pcre2_get_error_message(result, message, sizeof(message));
      throw Error(ErrorCode::invalid_argument,
                  std::string("pre-tokenizer: PCRE2 match failed: ") + reinterpret_cast<char*>(message));
    }
    const PCRE2_SIZE* range = pcre2_get_ovector_pointer(match.get());
    std::size_t begin = range[0], end = range[1];
    if (end == begin) {
      // An empty match would not advance; none of the patterns above can produce one, but a pattern from a
      // tokenizer.json might: the character there joins the text between matches instead.
      std::size_t next = begin + 1;
      while (next < text.size() && (static_cast<unsigned char>(text[next]) & 0xC0) == 0x80) ++next;
      if (begin > start) out.emplace_back(text.substr(start, begin - start));
      out.emplace_back(text.substr(begin, next - begin));
      start = next;
      continue;
    }
    if (begin > start) out.emplace_back(text.substr(start, begin - start));
    out.emplace_back(text.substr(begin, end - begin));
    start = end;
  }
  if (start < text.size()) out.emplace_back(text.substr(start));
}

PreTokenizer::PreTokenizer(const std::vector<std::string>& patterns, bool add_prefix_space)
    : add_prefix_space_(add_prefix_space) {
  for (const std::string& pattern : patterns) steps_.emplace_back(pattern);
}

std::vector<std::string> PreTokenizer::split(std::string_view text) const {
  std::vector<std::string> pieces;
  std::string whole;
  if (add_prefix_space_ && !text.empty() && text.front() != ' ') whole += ' ';
  whole.append(text);
  pieces.push_back(std::move(whole));
  for (const RegexSplitter& step : steps_) {
    std::vector<std::string> next;
    next.reserve(pieces.size() * 2);
    for (const std::string& piece : pieces) step.split(piece, next);
    pieces = std::move(next);
  }
  return pieces;
}

namespace {

// Length of the UTF-8 sequence starting at text[i] if it is well formed and complete, 0 if it is malformed, and
// -1 if it is a valid start cut off by the end of the text.
int utf8_sequence_length(std::string_view text, std::size_t i) {
  const auto byte = [&](std::size_t k) { return static_cast<unsigned char>(text[k]); };
  const unsigned char lead = byte(i);
  if (lead < 0x80) return 1;
  int length;
  std::uint32_t minimum;
  std::uint32_t code;
  if ((lead & 0xE0) == 0xC0) {
    length = 2;
    minimum = 0x80;
    code = lead & 0x1F;
  } else if ((lead & 0xF0) == 0xE0) {
    length = 3;
    minimum = 0x800;
    code = lead & 0x0F;
  } else if ((lead & 0xF8) == 0xF0) {
    length = 4;
    minimum = 0x10000;
    code = lead & 0x07;
  } else
    return 0;
  for (int k = 1; k < length; ++k) {
    if (i + static_cast<std::size_t>(k) >= text.size()) return -1;
    const unsigned char next = byte(i + static_cast<std::size_t>(k));
    if ((next & 0xC0) != 0x80) return 0;
    code = (code << 6) | (next & 0x3F);
  }
  if (code < minimum || code > 0x10FFFF || (code >= 0xD800 && code <= 0xDFFF)) return 0;
  return length;
}

}  // namespace

bool is_valid_utf8(std::string_view text, std::size_t* error_offset) {
  for (std::size_t i = 0; i < text.size();) {
    const int length = utf8_sequence_length(text, i);
    if (length <= 0) {
      if (error_offset != nullptr) *error_offset = i;
      return false;
    }
    i += static_cast<std::size_t>(length);
  }
  return true;
}

std::size_t complete_utf8_prefix(std::string_view text) {
  std::size_t i = 0;
  while (i < text.size()) {
    const int length = utf8_sequence_length(text, i);
    if (length < 0) break;                                    // an incomplete character at the end: wait for the rest
    i += length == 0 ? 1 : static_cast<std::size_t>(length);  // malformed bytes are passed on, never held forever
  }
  return i;
}

}  // namespace kvq::llama

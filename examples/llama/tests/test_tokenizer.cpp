// The byte-level BPE tokenizer: GPT-2's byte map, merges by rank, special tokens, the pre-tokenizer regexes
// against Hugging Face tokenizers' own splits, tokenizer.json reading, and errors.
#include <doctest/doctest.h>

#include <nlohmann/json.hpp>

#include "kvq/core/error.hpp"
#include "tiny_model.hpp"
#include "tokenizer/pre_tokenizer.hpp"
#include "tokenizer/tokenizer.hpp"
#include "tokenizer/tokenizer_sources.hpp"

using namespace kvq::llama;
using namespace kvq::llama::test;

namespace {

TokenizerSpec tiny_spec() {
  const TinyModel model = make_tiny_model(1);
  TokenizerSpec spec;
  spec.source = "tiny";
  spec.tokens = model.tokens;
  spec.merges = model.merges;
  for (int id = model.vocabulary() - 3; id < model.vocabulary(); ++id) spec.special_ids.push_back(id);
  spec.pre_tokenizer_patterns = {std::string(gpt2_pattern)};
  spec.bos_id = model.vocabulary() - 3;
  spec.eos_id = model.vocabulary() - 3;
  return spec;
}

std::vector<std::string> split(std::string_view pattern_a, std::string_view text, std::string_view pattern_b = {}) {
  std::vector<std::string> patterns{std::string(pattern_a)};
  if (!pattern_b.empty()) patterns.emplace_back(pattern_b);
  return PreTokenizer(patterns, false).split(text);
}

}  // namespace

TEST_CASE("GPT-2 byte-to-unicode map") {
  CHECK(byte_to_unicode('A') == "A");
  CHECK(byte_to_unicode(' ') == "\xC4\xA0");   // U+0120 'Ġ'
  CHECK(byte_to_unicode('\n') == "\xC4\x8A");  // U+010A 'Ċ'
  CHECK(byte_to_unicode(0) == "\xC4\x80");     // U+0100: the first non-printable byte
  CHECK(byte_to_unicode(0xAD) == "\xC5\x83");  // U+0143: soft hyphen, the last of the 68 remapped bytes
  CHECK(byte_to_unicode(0xE9) == "\xC3\xA9");  // printable Latin-1 stands for itself
}

TEST_CASE("BPE merges by rank, specials before BPE, decode back") {
  const Tokenizer tokenizer(tiny_spec());
  const auto id = [&](const std::string& text) { return *tokenizer.find_token(text); };
  const std::string space = byte_to_unicode(' ');
  // "hello": h e -> he (rank 0), he l l: l l -> ll (rank 3), he ll -> hell (4), hell o -> hello (5).
  CHECK(tokenizer.encode("hello", false) == std::vector<TokenId>{id("hello")});
  // " the": Ġ t -> Ġt (1) before t h never merges; Ġt he -> Ġthe (2).
  CHECK(tokenizer.encode("hello the", false) == std::vector<TokenId>{id("hello"), id(space + "the")});
  CHECK(tokenizer.encode("hex", false) == std::vector<TokenId>{id("he"), id("x")});
  const auto chat = tokenizer.encode("<|im_start|>hello<|im_end|>", true);
  CHECK(chat == std::vector<TokenId>{id("<|endoftext|>"), id("<|im_start|>"), id("hello"), id("<|im_end|>")});
  CHECK(tokenizer.decode(chat) == "<|endoftext|><|im_start|>hello<|im_end|>");
  CHECK(tokenizer.decode(chat, /*skip_special=*/true) == "hello");
  // Not parsed as special: the text is ordinary bytes.
  CHECK(tokenizer.encode("<|im_end|>", false, /*parse_special=*/false).size() > 1);
  CHECK(tokenizer.decode(tokenizer.encode("<|im_end|>", false, false)) == "<|im_end|>");
  const std::string text = "Grüße, 世界! \t\n 🙂 12345   ";
  CHECK(tokenizer.decode(tokenizer.encode(text, false)) == text);
  CHECK_THROWS_WITH_AS(static_cast<void>(tokenizer.encode("bad \xC3\x28 byte", false)),
                       doctest::Contains("not valid UTF-8 (byte 4)"), kvq::Error);
  CHECK(complete_utf8_prefix("ab\xE4\xB8") == 2);  // an unfinished 3-byte character is held back
  CHECK(complete_utf8_prefix("ab\xE4\xB8\x96") == 5);
}

TEST_CASE("ignore_merges: a piece that is a whole token is that token (Llama-3)") {
  TokenizerSpec spec = tiny_spec();
  // "hlo" is in the vocabulary but no merge chain builds it from h, l, o.
  spec.tokens.insert(spec.tokens.end() - 3, "hlo");
  for (TokenId& id : spec.special_ids) ++id;
  *spec.bos_id += 1;
  *spec.eos_id += 1;
  const Tokenizer plain(spec);
  spec.ignore_merges = true;
  const Tokenizer whole(spec);
  CHECK(plain.encode("hlo", false).size() == 3);
  CHECK(whole.encode("hlo", false) == std::vector<TokenId>{*whole.find_token("hlo")});
}

// Expected pieces from Hugging Face tokenizers 0.23.3 (pip install tokenizers): Split(Regex(llama3_pattern),
// "isolated"), ByteLevel(add_prefix_space=False, use_regex=True) and Sequence([Digits(individual_digits=True),
// ByteLevel(...)]) .pre_tokenize_str(text), ByteLevel's output mapped back from GPT-2's stand-in characters.
TEST_CASE("pre-tokenizer regexes split as Hugging Face tokenizers does") {
  using V = std::vector<std::string>;
  const std::string a = "Hello world! It's 2024-12-01.";
  CHECK(split(llama3_pattern, a) == V{"Hello", " world", "!", " It", "'s", " ", "202", "4", "-", "12", "-", "01", "."});
  CHECK(split(gpt2_pattern, a) == V{"Hello", " world", "!", " It", "'s", " 2024", "-", "12", "-", "01", "."});
  CHECK(split(digits_pattern, a, gpt2_pattern) ==
        V{"Hello", " world", "!", " It", "'s", " ", "2", "0", "2", "4", "-", "1", "2", "-", "0", "1", "."});
  const std::string b = "I'VE got 1234567 apples\n\n  and   spaces ";
  CHECK(split(llama3_pattern, b) ==
        V{"I", "'VE", " got", " ", "123", "456", "7", " apples", "\n\n", " ", " and", "  ", " spaces", " "});
  CHECK(split(gpt2_pattern, b) ==
        V{"I", "'", "VE", " got", " 1234567", " apples", "\n\n ", " and", "  ", " spaces", " "});
  const std::string c = "naïve café, 日本語 🚀!!";
  CHECK(split(llama3_pattern, c) == V{"naïve", " café", ",", " 日本語", " 🚀!!"});
  CHECK(split(gpt2_pattern, c) == V{"naïve", " café", ",", " 日本語", " 🚀!!"});
  const std::string d = "don't\r\nstop";
  CHECK(split(llama3_pattern, d) == V{"don", "'t", "\r\n", "stop"});
  CHECK(split(gpt2_pattern, d) == V{"don", "'t", "\r", "\n", "stop"});
}

TEST_CASE("tokenizer.json: Llama-3 style (Split + ByteLevel, bos by the post-processor), merges in both forms") {
  TempDir dir;
  const TinyModel model = make_tiny_model(1);
  nlohmann::json vocab = nlohmann::json::object();
  for (int id = 0; id < model.vocabulary() - 3; ++id) vocab[model.tokens[static_cast<std::size_t>(id)]] = id;
  nlohmann::json merges = nlohmann::json::array();
  for (std::size_t i = 0; i < model.merges.size(); ++i) {
    const auto& [left, right] = model.merges[i];
    if (i % 2 == 0)
      merges.push_back(left + " " + right);  // older files: "left right"
    else
      merges.push_back({left, right});  // tokenizers >= 0.20: [left, right]
  }
  const int bos = model.vocabulary() - 2;
  using J = nlohmann::json;
  J added = J::array();
  added.push_back({{"id", bos - 1}, {"content", "<|end_of_text|>"}, {"special", true}});
  added.push_back({{"id", bos}, {"content", "<|begin_of_text|>"}, {"special", true}});
  added.push_back({{"id", bos + 1}, {"content", "<|eot_id|>"}, {"special", true}});
  J split_step = {{"type", "Split"},
                  {"pattern", {{"Regex", std::string(llama3_pattern)}}},
                  {"behavior", "Isolated"},
                  {"invert", false}};
  J byte_level_step = {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", false}};
  J single = J::array();
  single.push_back({{"SpecialToken", {{"id", "<|begin_of_text|>"}, {"type_id", 0}}}});
  single.push_back({{"Sequence", {{"id", "A"}, {"type_id", 0}}}});
  J template_step = {{"type", "TemplateProcessing"}, {"single", single}};
  J tokenizer = J::object();
  tokenizer["added_tokens"] = added;
  tokenizer["normalizer"] = nullptr;
  tokenizer["pre_tokenizer"] = {{"type", "Sequence"}, {"pretokenizers", J::array({split_step, byte_level_step})}};
  tokenizer["post_processor"] = {{"type", "Sequence"},
                                 {"processors", J::array({J{{"type", "ByteLevel"}}, template_step})}};
  tokenizer["decoder"] = {{"type", "ByteLevel"}};
  tokenizer["model"] = {{"type", "BPE"}, {"ignore_merges", true}, {"vocab", vocab}, {"merges", merges}};
  write_file(dir / "tokenizer.json", tokenizer.dump());
  write_file(dir / "tokenizer_config.json",
             nlohmann::json{{"chat_template", "<|start_header_id|>..."}, {"eos_token", "<|eot_id|>"}}.dump());
  const Tokenizer t(tokenizer_from_json(dir / "tokenizer.json", dir / "tokenizer_config.json"));
  CHECK(t.add_bos());
  CHECK(t.bos_id() == bos);
  CHECK(t.eos_id() == bos + 1);
  CHECK(t.chat_template() == "<|start_header_id|>...");
  const auto stop = t.stop_ids();
  CHECK(std::find(stop.begin(), stop.end(), bos + 1) != stop.end());
  CHECK(std::find(stop.begin(), stop.end(), bos - 1) != stop.end());  // <|end_of_text|> ends a turn too
  const auto ids = t.encode("hello the 1234", t.add_bos());
  CHECK(ids.front() == bos);
  CHECK(ids[1] == *t.find_token("hello"));
  CHECK(t.decode(ids, true) == "hello the 1234");
  // Llama-3's digit rule: "1234" is "123" + "4" before BPE (here each digit is its own token).
  CHECK(ids.size() == 1 + 1 + 1 + 1 + 4);

  auto error_of = [&](nlohmann::json broken) {
    write_file(dir / "broken.json", broken.dump());
    try {
      static_cast<void>(tokenizer_from_json(dir / "broken.json", std::nullopt));
    } catch (const kvq::Error& e) {
      CHECK(e.code() == kvq::ErrorCode::io_error);
      return std::string(e.what());
    }
    return std::string();
  };
  nlohmann::json broken = tokenizer;
  broken["pre_tokenizer"] = {{"type", "Metaspace"}};
  CHECK(error_of(broken).find("broken.json: pre-tokenizer type Metaspace is not supported") != std::string::npos);
  broken = tokenizer;
  broken["normalizer"] = {{"type", "NFC"}};
  CHECK(error_of(broken).find("with a normalizer are not supported") != std::string::npos);
  broken = tokenizer;
  broken["model"]["type"] = "WordPiece";
  CHECK(error_of(broken).find("model type WordPiece is not supported") != std::string::npos);
  broken = tokenizer;
  broken["model"]["merges"].push_back("zz qq");
  CHECK(error_of(broken).find("merge 6 (\"zz qq\") names a token that is not in the vocabulary") == std::string::npos);
  CHECK_THROWS_WITH_AS(Tokenizer(tokenizer_from_json(dir / "broken.json", std::nullopt)),
                       doctest::Contains("merge 6 (\"zz qq\") names a token that is not in the vocabulary"),
                       kvq::Error);
  broken = tokenizer;
  broken["model"].erase("vocab");
  CHECK(error_of(broken).find("missing key model.vocab") != std::string::npos);
}

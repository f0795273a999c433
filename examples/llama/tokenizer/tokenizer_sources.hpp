// Where a tokenizer comes from: a GGUF file's tokenizer.ggml.* metadata, or a Hugging Face tokenizer.json
// (plus tokenizer_config.json beside it for the chat template and bos handling).
#pragma once

#include <filesystem>
#include <optional>

#include "tokenizer/tokenizer.hpp"

namespace kvq::llama {

class GgufFile;

// tokenizer.ggml.model must be "gpt2" (byte-level BPE); tokenizer.ggml.pre picks the pre-tokenizer:
//   "llama-bpe" / "llama3"   Llama-3's pattern, whole-word vocabulary hits before merges (as llama.cpp does)
//   "smollm"                 digits one by one, then GPT-2's pattern
//   "gpt2" / "default" / absent   GPT-2's pattern
// Control and user-defined tokens (token_type 3 and 4) are the special tokens.
TokenizerSpec tokenizer_from_gguf(const GgufFile& file);

// tokenizer.json with model.type "BPE" and a ByteLevel pre-tokenizer or decoder; the pre_tokenizer tree may be a
// Sequence of Split (Regex or String pattern, behaviour Isolated), Digits and ByteLevel. added_tokens are the
// special tokens. bos: a TemplateProcessing post-processor that starts with a special token adds it.
// `tokenizer_config`, if it exists, supplies chat_template and add_bos_token.
TokenizerSpec tokenizer_from_json(const std::filesystem::path& tokenizer_json,
                                  const std::optional<std::filesystem::path>& tokenizer_config);

}  // namespace kvq::llama

// Chat formatting for instruct models, without a Jinja interpreter: the model's chat_template (GGUF
// tokenizer.chat_template or tokenizer_config.json) is recognised by the markers it writes, and the prompt is
// laid out in that format for one user turn followed by the assistant's turn:
//   ChatML (SmolLM2-Instruct, Qwen):
//   <|im_start|>system\n...<|im_end|>\n<|im_start|>user\n...<|im_end|>\n<|im_start|>assistant\n Llama-3 instruct:
//   <|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n...<|eot_id|>
//                                     <|start_header_id|>assistant<|end_header_id|>\n\n
// A ChatML template that writes a default system message when none is given (SmolLM2's does) gets that message:
// it is read out of the template text. Any other template is refused with an error rather than guessed at.
#pragma once

#include <optional>
#include <string>
#include <string_view>

namespace kvq::llama {

enum class ChatFormat { chatml, llama3 };

// The format of a template; kvq::Error(invalid_argument) for an empty or unrecognised one.
ChatFormat detect_chat_format(std::string_view chat_template);

// The default system message a ChatML template writes for a conversation without one, if it has one.
std::optional<std::string> default_system_message(std::string_view chat_template);

// The prompt text of one user message, ready for the assistant's reply (special tokens written as text, to be
// encoded with parse_special). `system` overrides the template's default system message.
std::string format_chat(std::string_view chat_template, std::string_view user,
                        const std::optional<std::string>& system);

}  // namespace kvq::llama

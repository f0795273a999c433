#include "tokenizer/chat_template.hpp"

#include "kvq/core/error.hpp"

namespace kvq::llama {

ChatFormat detect_chat_format(std::string_view chat_template) {
  require(!chat_template.empty(), ErrorCode::invalid_argument, "--chat: the model has no chat template");
  if (chat_template.find("<|im_start|>") != std::string_view::npos) return ChatFormat::chatml;
  if (chat_template.find("<|start_header_id|>") != std::string_view::npos) return ChatFormat::llama3;
  throw Error(ErrorCode::invalid_argument,
              "--chat: the model's chat template is neither ChatML nor Llama-3's; this example formats only those");
}

std::optional<std::string> default_system_message(std::string_view chat_template) {
  // SmolLM2 writes {{ '<|im_start|>system\nYou are ...<|im_end|>\n' }}: a literal system turn, inside quotes.
  // A template that only copies messages[0] writes the header followed by a quote or an expression instead.
  constexpr std::string_view header = "<|im_start|>system\n";
  const std::size_t start = chat_template.find(header);
  if (start == std::string_view::npos) return std::nullopt;
  const std::size_t body = start + header.size();
  const std::size_t end = chat_template.find("<|im_end|>", body);
  if (end == std::string_view::npos || end == body) return std::nullopt;
  const std::string_view message = chat_template.substr(body, end - body);
  if (message.find_first_of("'\"{}+") != std::string_view::npos) return std::nullopt;
  return std::string(message);
}

std::string format_chat(std::string_view chat_template, std::string_view user,
                        const std::optional<std::string>& system) {
  std::string text;
  switch (detect_chat_format(chat_template)) {
    case ChatFormat::chatml: {
      const auto system_message = system ? system : default_system_message(chat_template);
      if (system_message) text += "<|im_start|>system\n" + *system_message + "<|im_end|>\n";
      text += "<|im_start|>user\n" + std::string(user) + "<|im_end|>\n<|im_start|>assistant\n";
      break;
    }
    case ChatFormat::llama3:
      // <|begin_of_text|> is the tokenizer's bos, added by encode(); the template writes it too, so it is left out.
      if (system) text += "<|start_header_id|>system<|end_header_id|>\n\n" + *system + "<|eot_id|>";
      text += "<|start_header_id|>user<|end_header_id|>\n\n" + std::string(user) +
              "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n";
      break;
  }
  return text;
}

}  // namespace kvq::llama

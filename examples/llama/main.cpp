// kvq_llama: runs a Llama-family model (GGUF file or Hugging Face checkpoint directory) on the CPU with its keys
// and values in a kvq quantized host cache, and prints the generated text, prefill and decode speed and KV bytes.
//
//   kvq_llama --model SmolLM2-135M-Instruct.Q4_1.gguf --prompt "The capital of France is" --tokens 16 --kv int8
//
// docs/llama-example.md describes the flags, what the numbers mean and the limits.
#include <fmt/core.h>

#include <charconv>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <optional>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include "kvq/core/error.hpp"
#include "model/llama_model.hpp"
#include "runtime/cpu_backend.hpp"
#include "runtime/generate.hpp"
#include "runtime/kv_presets.hpp"
#include "tokenizer/chat_template.hpp"

namespace {

using namespace kvq::llama;
using kvq::ErrorCode;
using kvq::require;

constexpr const char* usage = R"(usage: kvq_llama --model PATH [options]
  --model PATH         GGUF file, or Hugging Face directory (config.json, tokenizer.json, *.safetensors)
  --prompt TEXT        prompt (default "The capital of France is")
  --prompt-file PATH   prompt read from a UTF-8 file instead
  --tokens N           tokens to generate (default 32)
  --kv PRESET          KV cache preset of every layer: {} (default fp16)
  --kv-layer L=PRESET  preset of layer L (repeatable), e.g. --kv int8 --kv-layer 0=fp16
  --chunk N            prompt tokens per prefill step (default 256)
  --context N          cache capacity in tokens (default: prompt + tokens)
  --sinks N            first tokens kept in fp16 (default 0; a preset may keep more, e.g. nuq* 1)
  --window N           most recent tokens kept in fp16 (default 0; a preset may keep more, e.g. kivi-* 128)
  --temperature T      0 = greedy (default 0)
  --top-p P            nucleus sampling threshold (default 1)
  --seed S             sampling seed (default 0)
  --chat               format the prompt with the model's chat template (ChatML or Llama-3)
  --system TEXT        system message for --chat (default: the template's own, if any)
)";

struct Options {
  std::string model;
  std::string prompt = "The capital of France is";
  int tokens = 32;
  KvCacheOptions kv;
  int chunk = 256;
  std::optional<std::int64_t> context;
  SamplingOptions sampling;
  bool chat = false;
  std::optional<std::string> system;
};

template <class T>
T parse_number(std::string_view flag, std::string_view text) {
  T value{};
  const auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), value);
  require(error == std::errc() && end == text.data() + text.size(), ErrorCode::invalid_argument,
          fmt::format("{}: \"{}\" is not a number", flag, text));
  return value;
}

std::string read_text(const std::string& path) {
  std::ifstream stream(path, std::ios::binary);
  require(stream.good(), ErrorCode::io_error, "--prompt-file: cannot open " + path);
  std::ostringstream text;
  text << stream.rdbuf();
  return text.str();
}

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string_view flag = argv[i];
    if (flag == "--help" || flag == "-h") {
      fmt::print(usage, kv_preset_list());
      std::exit(0);
    }
    if (flag == "--chat") {
      o.chat = true;
      continue;
    }
    require(i + 1 < argc, ErrorCode::invalid_argument, fmt::format("{} needs a value (see --help)", flag));
    const std::string_view value = argv[++i];
    if (flag == "--model")
      o.model = value;
    else if (flag == "--prompt")
      o.prompt = value;
    else if (flag == "--prompt-file")
      o.prompt = read_text(std::string(value));
    else if (flag == "--tokens")
      o.tokens = parse_number<int>(flag, value);
    else if (flag == "--kv")
      o.kv.preset = value;
    else if (flag == "--kv-layer") {
      const std::size_t equals = value.find('=');
      require(equals != std::string_view::npos, ErrorCode::invalid_argument,
              "--kv-layer wants LAYER=FORMAT, e.g. 0=fp16");
      o.kv.layer_presets.emplace_back(parse_number<int>(flag, value.substr(0, equals)),
                                      std::string(value.substr(equals + 1)));
    } else if (flag == "--chunk")
      o.chunk = parse_number<int>(flag, value);
    else if (flag == "--context")
      o.context = parse_number<std::int64_t>(flag, value);
    else if (flag == "--sinks")
      o.kv.sink_tokens = parse_number<int>(flag, value);
    else if (flag == "--window")
      o.kv.window_tokens = parse_number<int>(flag, value);
    else if (flag == "--temperature")
      o.sampling.temperature = parse_number<float>(flag, value);
    else if (flag == "--top-p")
      o.sampling.top_p = parse_number<float>(flag, value);
    else if (flag == "--seed")
      o.sampling.seed = parse_number<std::uint64_t>(flag, value);
    else if (flag == "--system")
      o.system = std::string(value);
    else
      throw kvq::Error(ErrorCode::invalid_argument, fmt::format("unknown flag {} (see --help)", flag));
  }
  require(!o.model.empty(), ErrorCode::invalid_argument, "--model is required (see --help)");
  return o;
}

std::string mebibytes(double bytes) { return fmt::format("{:.2f} MiB", bytes / (1024.0 * 1024.0)); }

int run(int argc, char** argv) {
  const Options options = parse(argc, argv);
  const auto load_start = std::chrono::steady_clock::now();
  const LlamaModel model = load_model(options.model);
  const double load_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - load_start).count();
  const LlamaConfig& c = model.config;
  fmt::print("model: {} ({})\n", model.source, model.description);
  fmt::print(
      "       {} layers, hidden {}, MLP {}, {} query / {} KV heads of {}, vocabulary {}, rope theta {}{}, {} "
      "embeddings; loaded in {:.2f} s\n",
      c.layers, c.hidden, c.ffn, c.q_heads, c.kv_heads, c.head_dim, c.vocabulary, c.rope.theta,
      c.rope.scaling == kvq::RopeScaling::llama3 ? fmt::format(" (llama3 scaling x{})", c.rope.factor) : "",
      c.tied_embeddings ? "tied" : "separate", load_seconds);

  const std::string text =
      options.chat ? format_chat(model.tokenizer.chat_template(), options.prompt, options.system) : options.prompt;
  const std::vector<TokenId> prompt = model.tokenizer.encode(text, model.tokenizer.add_bos());
  KvCacheOptions kv = options.kv;
  kv.max_tokens = options.context.value_or(static_cast<std::int64_t>(prompt.size()) + std::max(options.tokens, 1));
  const auto backend = make_cpu_backend(model, kv);
  fmt::print("backend: {}\n", backend->name());
  fmt::print("prompt: {} tokens, prefill chunks of {}\n\n", prompt.size(), options.chunk);

  GenerationOptions generation;
  generation.max_new_tokens = options.tokens;
  generation.chunk_tokens = options.chunk;
  generation.sampling = options.sampling;
  generation.stop_ids = model.tokenizer.stop_ids();
  // The prompt is echoed before the continuation; a long one only by its last 300 bytes (whole characters).
  std::string_view echo = options.prompt;
  if (echo.size() > 300) {
    std::size_t start = echo.size() - 300;
    while (start < echo.size() && (static_cast<unsigned char>(echo[start]) & 0xC0) == 0x80) ++start;
    echo = echo.substr(start);
    fmt::print("[...] ");
  }
  fmt::print("{}{}", echo, options.chat ? "\n" : "");
  std::fflush(stdout);
  const GenerationResult result = generate(*backend, model.tokenizer, prompt, generation, [](std::string_view piece) {
    fmt::print("{}", piece);
    std::fflush(stdout);
  });
  fmt::print("\n\n");

  const KvCacheReport report = backend->kv_cache();
  fmt::print("generated: {} tokens{}\n", result.tokens.size(), result.stopped ? " (stopped at an end token)" : "");
  fmt::print("prefill: {} tokens in {:.3f} s, {:.1f} tokens/s\n", result.prompt_tokens, result.prefill_seconds,
             result.prefill_tokens_per_second());
  fmt::print("decode: {} steps in {:.3f} s, {:.2f} tokens/s, {:.1f} ms per step\n", result.decode_steps,
             result.decode_seconds, result.decode_tokens_per_second(),
             result.decode_steps > 0 ? 1000.0 * result.decode_seconds / result.decode_steps : 0.0);
  fmt::print(
      "KV cache: {}; {:.0f} bytes per quantized token (all layers); {} tokens = {} at that rate; {} allocated "
      "for {} tokens\n",
      report.format, report.bytes_per_token, report.tokens, mebibytes(report.bytes_per_token * report.tokens),
      mebibytes(static_cast<double>(report.allocated_bytes)), kv.max_tokens);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "kvq_llama: %s\n", e.what());
    return 1;
  }
}

// kvq_llama: runs a Llama-family model (GGUF file or Hugging Face checkpoint directory) on the GPU (cuBLAS, a kvq
// device cache and kvq's attention kernels) or the CPU (a kvq host cache and host attention) with its keys and
// values in a kvq quantized cache, and prints the generated text, prefill and decode speed, KV bytes and, on the
// GPU, the memory plan and the measured peak. --synthetic runs random weights of a published model's shapes.
//
//   kvq_llama --model SmolLM2-135M-Instruct.Q4_1.gguf --prompt "The capital of France is" --tokens 16 --kv int8
//   kvq_llama --synthetic llama3-8b --context 32768 --kv q4_0 --chunk 1024 --tokens 64
//
// docs/llama-example.md describes the flags, what the numbers mean and the limits.
#include <fmt/core.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <optional>
#include <random>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include "kvq/core/error.hpp"
#include "cli_number.hpp"
#include "kvq/planner/model_presets.hpp"
#include "model/llama_model.hpp"
#include "runtime/cpu_backend.hpp"
#include "runtime/gpu_memory.hpp"
#ifdef KVQ_LLAMA_HAS_GPU
#include "runtime/gpu_backend.hpp"
#endif
#include "runtime/generate.hpp"
#include "runtime/kv_importance.hpp"
#include "runtime/kv_presets.hpp"
#include "tokenizer/chat_template.hpp"

namespace {

using namespace kvq::llama;
using kvq::ErrorCode;
using kvq::require;

#ifdef KVQ_LLAMA_HAS_GPU
constexpr bool built_with_gpu = true;
#else
constexpr bool built_with_gpu = false;
#endif

constexpr const char* usage = R"(usage: kvq_llama --model PATH [options]
       kvq_llama --synthetic MODEL [options]
  --model PATH         GGUF file, or Hugging Face directory (config.json, tokenizer.json, *.safetensors)
  --synthetic MODEL    random fp16 weights of llama3-8b, llama3-70b or llama3.2-1b's shapes (GPU only; random
                       token ids, no text); --context N then fills the cache with N prompt tokens first
  --backend gpu|cpu    where the model runs (default: gpu when built with CUDA and a device is there, else cpu)
  --mem-budget BYTES   GPU: refuse to start if the memory plan exceeds this (e.g. 80GiB, 16GB, 512MiB)
  --prompt TEXT        prompt (default "The capital of France is")
  --prompt-file PATH   prompt read from a UTF-8 file instead
  --tokens N           tokens to generate (default 32)
  --kv PRESET          KV cache preset of every layer: {} (default fp16)
  --kv-layer L=PRESET  preset of layer L (repeatable), e.g. --kv int8 --kv-layer 0=fp16
  --chunk N            prompt tokens per prefill step (default 256)
  --context N          cache capacity in tokens (default: prompt + tokens); --synthetic: prompt tokens
  --sinks N            first tokens kept in fp16 (default 0; a preset may keep more, e.g. nuq* 1)
  --window N           most recent tokens kept in fp16 (default 0; a preset may keep more, e.g. kivi-* 128)
  --evict SCHEME       CPU only: keep a token budget, streaming:BUDGET[:SINKS] (sinks + recent),
                       h2o:BUDGET[:RECENT] (heavy hitters by accumulated attention + recent) or
                       snapkv:BUDGET[:WINDOW[:POOL]] (the prompt compressed once by its last WINDOW queries)
  --promote F[:W]      CPU only: keep an int8 copy of the top fraction F of quantized tokens per layer and KV
                       head, chosen by accumulated attention as they leave an fp16 window of >= W tokens (32)
  --temperature T      0 = greedy (default 0)
  --top-p P            nucleus sampling threshold (default 1)
  --seed S             sampling seed, and the synthetic weights' and prompt's (default 0)
  --chat               format the prompt with the model's chat template (ChatML or Llama-3)
  --system TEXT        system message for --chat (default: the template's own, if any)
)";

struct Options {
  std::string model;
  std::string synthetic;
  std::string backend;  // empty: the default
  std::int64_t memory_budget = 0;
  std::string prompt = "The capital of France is";
  int tokens = 32;
  KvCacheOptions kv;
  int chunk = 256;
  std::optional<std::int64_t> context;
  SamplingOptions sampling;
  bool chat = false;
  std::optional<std::string> system;
};

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
    else if (flag == "--synthetic")
      o.synthetic = value;
    else if (flag == "--backend")
      o.backend = value;
    else if (flag == "--mem-budget")
      o.memory_budget = parse_bytes(value);
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
    else if (flag == "--promote") {
      o.kv.promote = value;
      static_cast<void>(parse_promotion_scheme(value));
    } else if (flag == "--evict") {
      o.kv.evict = value;
      static_cast<void>(parse_eviction_scheme(value));  // bad values fail here, before the model loads
    }
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
  require(o.model.empty() != o.synthetic.empty(), ErrorCode::invalid_argument,
          "give --model PATH or --synthetic MODEL, one of them (see --help)");
  require(o.backend.empty() || o.backend == "gpu" || o.backend == "cpu", ErrorCode::invalid_argument,
          fmt::format("--backend: \"{}\" is neither gpu nor cpu", o.backend));
  return o;
}

std::string mebibytes(double bytes) { return fmt::format("{:.2f} MiB", bytes / (1024.0 * 1024.0)); }

bool use_gpu(const Options& o) {
  if (o.backend == "cpu") return false;
  bool available = false;
#ifdef KVQ_LLAMA_HAS_GPU
  available = gpu_available();
#endif
  if (o.backend == "gpu") {
    require(built_with_gpu, ErrorCode::invalid_argument,
            "--backend gpu: this kvq_llama was built without its GPU backend (configure with CUDA and cuBLAS)");
    require(available, ErrorCode::invalid_argument, "--backend gpu: no CUDA device can be used here");
  }
  return available;
}

// The shapes of a published model (kvq's planner presets) as a LlamaConfig: Hugging Face row order (half-split
// RoPE), Llama-3's theta 500000; 3.2-1B with its llama3 frequency scaling (factor 32).
LlamaConfig synthetic_config(std::string_view name) {
  const char* preset = name == "llama3-8b"     ? "Llama-3-8B"
                       : name == "llama3-70b"  ? "Llama-3-70B"
                       : name == "llama3.2-1b" ? "Llama-3.2-1B"
                                               : nullptr;
  require(preset != nullptr, ErrorCode::invalid_argument,
          fmt::format("--synthetic: unknown model \"{}\"; known: llama3-8b, llama3-70b, llama3.2-1b", name));
  const kvq::ModelShape& shape = kvq::published_model(preset);
  LlamaConfig c;
  c.layers = shape.layers;
  c.hidden = shape.hidden;
  c.ffn = shape.intermediate;
  c.q_heads = shape.query_heads;
  c.kv_heads = shape.kv_heads;
  c.head_dim = shape.head_dim;
  c.vocabulary = shape.vocab;
  c.context_length = shape.max_context;
  c.tied_embeddings = shape.tied_embeddings;
  c.rms_epsilon = 1e-5f;
  c.rope.theta = 500000.0f;
  c.rope.style = kvq::RopeStyle::half_split;
  if (name == "llama3.2-1b") {
    c.rope.scaling = kvq::RopeScaling::llama3;
    c.rope.factor = 32.0f;
  }
  return c;
}

void print_config(const LlamaConfig& c, std::string_view tail) {
  fmt::print(
      "       {} layers, hidden {}, MLP {}, {} query / {} KV heads of {}, vocabulary {}, rope theta {}{}, {} "
      "embeddings{}\n",
      c.layers, c.hidden, c.ffn, c.q_heads, c.kv_heads, c.head_dim, c.vocabulary, c.rope.theta,
      c.rope.scaling == kvq::RopeScaling::llama3 ? fmt::format(" (llama3 scaling x{})", c.rope.factor) : "",
      c.tied_embeddings ? "tied" : "separate", tail);
}

void print_timing(const GenerationResult& result, int chunk) {
  const std::int64_t chunks = (result.prompt_tokens + chunk - 1) / chunk;
  fmt::print("prefill: {} tokens in {:.3f} s, {:.1f} tokens/s ({} chunks of up to {}, {:.2f} ms per chunk)\n",
             result.prompt_tokens, result.prefill_seconds, result.prefill_tokens_per_second(), chunks, chunk,
             chunks > 0 ? 1000.0 * result.prefill_seconds / static_cast<double>(chunks) : 0.0);
  fmt::print("decode: {} steps in {:.3f} s, {:.2f} tokens/s, {:.1f} ms per step\n", result.decode_steps,
             result.decode_seconds, result.decode_tokens_per_second(),
             result.decode_steps > 0 ? 1000.0 * result.decode_seconds / result.decode_steps : 0.0);
}

void print_kv(const KvCacheReport& report, std::int64_t capacity) {
  fmt::print(
      "KV cache: {}; {:.0f} bytes per quantized token (all layers); {} tokens = {} at that rate; {} allocated "
      "for {} tokens\n",
      report.format, report.bytes_per_token, report.tokens, mebibytes(report.bytes_per_token * report.tokens),
      mebibytes(static_cast<double>(report.allocated_bytes)), capacity);
}

#ifdef KVQ_LLAMA_HAS_GPU
// The plan is printed before anything is allocated; the backend refuses (with the same table) if it does not fit.
std::unique_ptr<GpuBackend> start_gpu(const LlamaConfig& config, const LlamaModel* model, const KvCacheOptions& kv,
                                      const GpuOptions& gpu) {
  const GpuMemoryPlan plan = plan_gpu_memory(config, kv, gpu);
  fmt::print("GPU memory plan{}:\n{}",
             gpu.memory_budget > 0 ? fmt::format(" (budget {})", format_bytes(gpu.memory_budget)) : "", plan.table());
  return model != nullptr ? make_gpu_backend(*model, kv, gpu) : make_synthetic_gpu_backend(config, kv, gpu);
}

void print_gpu_memory(const GpuBackend& backend) {
  const GpuMemoryUse use = backend.memory_use();
  const GpuMemoryPlan& plan = backend.memory_plan();
  fmt::print(
      "GPU memory: planned {} for the backend's own allocations, allocated {}; device in use before them {} (CUDA "
      "context, cuBLAS handle), after them {}; peak in use {} of {} (cudaMemGetInfo after each step), of which {} "
      "beyond the backend's allocations (context, kernel images, allocation rounding; planned {}, kvq_plan "
      "--cuda-context); planned total {}\n",
      format_bytes(plan.allocated()), format_bytes(use.allocated), format_bytes(use.used_at_start),
      format_bytes(use.used_after_setup), format_bytes(use.peak_used), format_bytes(use.device_total),
      format_bytes(use.peak_used - use.allocated), format_bytes(plan.cuda_context), format_bytes(plan.total()));
}
#endif

int run(int argc, char** argv) {
  const Options options = parse(argc, argv);
  const bool gpu = use_gpu(options);
  std::optional<LlamaModel> model;
  LlamaConfig config;
  std::vector<TokenId> prompt;
  if (!options.synthetic.empty()) {
    require(gpu, ErrorCode::invalid_argument,
            "--synthetic runs on the GPU backend only: a kvq_llama built with CUDA, a CUDA device, no --backend cpu");
    config = synthetic_config(options.synthetic);
    fmt::print(
        "model: SYNTHETIC {} -- random fp16 weights of its shapes (seed {}), not a trained model; token ids "
        "are random and the output means nothing\n",
        options.synthetic, options.sampling.seed);
    print_config(config, "");
    const std::int64_t count = options.context.value_or(512);
    require(count > 0, ErrorCode::invalid_argument, "--context must be > 0");
    std::mt19937_64 random(options.sampling.seed);
    std::uniform_int_distribution<TokenId> id(0, config.vocabulary - 1);
    for (std::int64_t i = 0; i < count; ++i) prompt.push_back(id(random));
  } else {
    const auto load_start = std::chrono::steady_clock::now();
    model = load_model(options.model);
    const double load_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - load_start).count();
    config = model->config;
    fmt::print("model: {} ({})\n", model->source, model->description);
    print_config(config, fmt::format("; loaded in {:.2f} s", load_seconds));
    const std::string text =
        options.chat ? format_chat(model->tokenizer.chat_template(), options.prompt, options.system) : options.prompt;
    prompt = model->tokenizer.encode(text, model->tokenizer.add_bos());
  }

  KvCacheOptions kv = options.kv;
  const auto prompt_tokens = static_cast<std::int64_t>(prompt.size());
  kv.max_tokens = options.synthetic.empty() ? options.context.value_or(prompt_tokens + std::max(options.tokens, 1))
                                            : prompt_tokens + std::max(options.tokens, 1);  // --context was the prompt
  require(options.chunk > 0, ErrorCode::invalid_argument, "--chunk must be > 0");
  std::unique_ptr<Backend> backend;
#ifdef KVQ_LLAMA_HAS_GPU
  GpuBackend* gpu_backend = nullptr;
  if (gpu) {
    require_host_only_schemes_absent(kv);  // before the GPU memory plan is printed
    GpuOptions gpu_options;
    gpu_options.max_chunk_tokens = static_cast<int>(std::min<std::int64_t>(options.chunk, prompt_tokens));
    gpu_options.memory_budget = options.memory_budget;
    gpu_options.synthetic_seed = options.sampling.seed;
    auto started = start_gpu(config, model ? &*model : nullptr, kv, gpu_options);
    gpu_backend = started.get();
    backend = std::move(started);
  }
#endif
  if (!backend) {
    require(options.memory_budget == 0, ErrorCode::invalid_argument, "--mem-budget applies to the GPU backend only");
    backend = make_cpu_backend(*model, kv);
  }
  fmt::print("backend: {}\n", backend->name());
  fmt::print("prompt: {} tokens, prefill chunks of {}\n\n", prompt.size(), options.chunk);

  backend->set_prompt_length(prompt_tokens);  // --evict snapkv compresses the prompt when it is complete
  GenerationOptions generation;
  generation.max_new_tokens = options.tokens;
  generation.chunk_tokens = options.chunk;
  generation.sampling = options.sampling;
  GenerationResult result;
  if (model) {
    generation.stop_ids = model->tokenizer.stop_ids();
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
    result = generate(*backend, model->tokenizer, prompt, generation, [](std::string_view piece) {
      fmt::print("{}", piece);
      std::fflush(stdout);
    });
  } else {
    result = generate(*backend, prompt, generation);
    fmt::print("generated ids (synthetic):");
    for (std::size_t i = 0; i < std::min<std::size_t>(result.tokens.size(), 16); ++i)
      fmt::print(" {}", result.tokens[i]);
    fmt::print("{}", result.tokens.size() > 16 ? " ..." : "");
  }
  fmt::print("\n\n");

  fmt::print("generated: {} tokens{}\n", result.tokens.size(), result.stopped ? " (stopped at an end token)" : "");
  print_timing(result, static_cast<int>(std::min<std::int64_t>(options.chunk, prompt_tokens)));
  print_kv(backend->kv_cache(), kv.max_tokens);
#ifdef KVQ_LLAMA_HAS_GPU
  if (gpu_backend != nullptr) print_gpu_memory(*gpu_backend);
#endif
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

// kvq_eval: what a KV-cache preset does to a model's predictions, measured through the real cache and attention
// code (the backend's forward pass over a kvq cache holding that preset), against the same model with an fp16 cache.
//
//   perplexity mode (default): sliding windows over --text; per preset perplexity, mean and p99 KL divergence of
//     the next-token distribution from the fp16 run, top-1 agreement; Markdown, CSV and a KLD-vs-bits PNG.
//   --passkey: a 5-digit number hidden at several depths of --text (filler) at --context tokens; retrieval
//     accuracy per preset and depth.
//
// docs/quality.md has the flags, the semantics (chunked scoring vs token-by-token decode) and the results.
#include <fmt/core.h>

#include <algorithm>
#include <cmath>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "eval/eval_report.hpp"
#include "eval/passkey.hpp"
#include "eval/text_windows.hpp"
#include "eval/token_metrics.hpp"
#include "kvq/cache/presets.hpp"
#include "kvq/core/error.hpp"
#include "cli_number.hpp"
#include "kvq/planner/memory_plan.hpp"
#include "model/llama_model.hpp"
#include "runtime/cpu_backend.hpp"
#ifdef KVQ_LLAMA_HAS_GPU
#include "runtime/gpu_backend.hpp"
#endif
#include "runtime/kv_calibration.hpp"
#include "runtime/kv_importance.hpp"
#include "runtime/kv_presets.hpp"

namespace {

using namespace kvq::llama;
using kvq::ErrorCode;
using kvq::require;
using Clock = std::chrono::steady_clock;

constexpr const char* usage = R"(usage: kvq_eval --model PATH --text FILE [options]
  --model PATH         GGUF file or Hugging Face directory
  --text FILE          evaluation text (UTF-8); with --passkey, the filler text
  --label NAME         name of the text in the report (default: the file name)
  --presets LIST       comma-separated presets, NAME or NAME:cal (calibrated codebooks from --calibration),
                       each optionally +SCHEME for token eviction on top and/or +promote:F[:W] for int8 copies
                       of the most attended fraction F of tokens (runtime/kv_importance.hpp) and/or +window:N
                       for an fp16 window of at least N tokens (kvq_llama --window), e.g. int8+h2o:256,
                       int8+streaming:256, fp16+snapkv:512, rot3+promote:0.1:16, rot3+window:16; default: {}
  --calibration FILE   codebooks from kvq_calibrate, for the NAME:cal presets
  --window N           tokens per window (default 512; at most the model's context)
  --stride N           predictions scored per window, its last ones (default window / 2)
  --windows N          windows taken, spread evenly over the text (default 0 = every window)
  --from F             windows start at or after this fraction of the text (default 0)
  --chunk N            tokens per forward step (default 256); 1 = token-by-token decode
  --backend NAME       cpu (default) or gpu (builds with CUDA; steps of up to --chunk tokens, scored whole)
  --out PREFIX         write PREFIX.md, PREFIX.csv and PREFIX.png (+ .dat, .gp)
  --no-plot            no PNG
  --merge LIST         join reports of one text written with --out by runs that split the preset list
                       (comma-separated PREFIXes; each fp16 row must agree) into --out
  --check P,PPL,KLD    fail (exit 2) unless preset P's perplexity change is at most PPL percent and its mean KLD
                       at most KLD (repeatable; CI's quality gate)
  --passkey            passkey retrieval instead of perplexity
  --context N          passkey prompt length in tokens (default 2048)
  --depths LIST        needle depths in [0, 1] (default 0.1,0.3,0.5,0.7,0.9)
  --trials N           prompts per depth, each with its own number and filler stretch (default 2)
  --seed S             first trial's seed (default 1)
)";

// A quality gate: the preset's perplexity change (percent) and mean KLD must stay within these.
struct Bound {
  std::string preset;
  double max_ppl_change_percent = 0, max_mean_kld = 0;
};

struct Options {
  std::string model, text, label, calibration, out, backend = "cpu";
  std::vector<std::string> presets, merge;
  std::vector<Bound> checks;
  std::int64_t window = 512, stride = 0, windows = 0, chunk = 256;
  double from = 0;
  bool plot = true, passkey = false;
  std::int64_t context = 2048;
  std::vector<double> depths{0.1, 0.3, 0.5, 0.7, 0.9};
  int trials = 2;
  std::uint64_t seed = 1;
};

std::vector<std::string> split(std::string_view list) {
  std::vector<std::string> items;
  while (!list.empty()) {
    const std::size_t comma = list.find(',');
    if (const std::string_view item = list.substr(0, comma); !item.empty()) items.emplace_back(item);
    list = comma == std::string_view::npos ? std::string_view{} : list.substr(comma + 1);
  }
  return items;
}

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string_view flag = argv[i];
    if (flag == "--help" || flag == "-h") {
      fmt::print(usage, kv_preset_list());
      std::exit(0);
    }
    if (flag == "--no-plot") { o.plot = false; continue; }
    if (flag == "--passkey") { o.passkey = true; continue; }
    require(i + 1 < argc, ErrorCode::invalid_argument, fmt::format("{} needs a value (see --help)", flag));
    const std::string_view value = argv[++i];
    if (flag == "--model") o.model = value;
    else if (flag == "--text") o.text = value;
    else if (flag == "--label") o.label = value;
    else if (flag == "--presets") o.presets = split(value);
    else if (flag == "--calibration") o.calibration = value;
    else if (flag == "--window") o.window = parse_number<std::int64_t>(flag, value);
    else if (flag == "--stride") o.stride = parse_number<std::int64_t>(flag, value);
    else if (flag == "--windows") o.windows = parse_number<std::int64_t>(flag, value);
    else if (flag == "--from") o.from = parse_number<double>(flag, value);
    else if (flag == "--chunk") o.chunk = parse_number<std::int64_t>(flag, value);
    else if (flag == "--backend") o.backend = value;
    else if (flag == "--out") o.out = value;
    else if (flag == "--merge") o.merge = split(value);
    else if (flag == "--check") {
      const std::vector<std::string> parts = split(value);
      require(parts.size() == 3, ErrorCode::invalid_argument,
              fmt::format("--check takes PRESET,MAX_PPL_CHANGE_PERCENT,MAX_MEAN_KLD, got \"{}\"", value));
      o.checks.push_back({parts[0], parse_number<double>(flag, parts[1]), parse_number<double>(flag, parts[2])});
    }
    else if (flag == "--context") o.context = parse_number<std::int64_t>(flag, value);
    else if (flag == "--trials") o.trials = parse_number<int>(flag, value);
    else if (flag == "--seed") o.seed = parse_number<std::uint64_t>(flag, value);
    else if (flag == "--depths") {
      o.depths.clear();
      for (const std::string& d : split(value)) o.depths.push_back(parse_number<double>(flag, d));
    } else
      throw kvq::Error(ErrorCode::invalid_argument, fmt::format("unknown flag {} (see --help)", flag));
  }
  if (!o.merge.empty()) {
    require(!o.out.empty(), ErrorCode::invalid_argument, "--merge needs --out PREFIX");
    return o;
  }
  require(!o.model.empty() && !o.text.empty(), ErrorCode::invalid_argument, "--model and --text are required (see --help)");
  require(o.chunk > 0, ErrorCode::invalid_argument, "--chunk must be > 0");
  require(o.trials > 0, ErrorCode::invalid_argument, "--trials must be > 0");
  if (o.stride == 0) o.stride = o.window / 2;
  if (o.presets.empty())
    for (std::string_view name : kvq::preset_names) o.presets.emplace_back(name);
  if (o.label.empty()) o.label = std::filesystem::path(o.text).filename().string();
  return o;
}

// A preset of the list: its kvq name, whether it takes the calibrated codebooks, and an eviction scheme.
struct PresetSpec {
  std::string label, name;
  bool calibrated = false;
  std::string evict;    // "" = every token kept
  std::string promote;  // "" = no promoted copies
  int window = 0;       // fp16 window of at least this many tokens (0 = the preset's)
};

PresetSpec parse_spec(const std::string& text) {
  PresetSpec spec{text, text, false, "", "", 0};
  spec.name = text.substr(0, text.find('+'));
  for (std::size_t plus = text.find('+'); plus != std::string::npos;) {
    const std::size_t next = text.find('+', plus + 1);
    const std::string part = text.substr(plus + 1, next == std::string::npos ? std::string::npos : next - plus - 1);
    // A bad scheme fails here, before any model runs.
    if (part.rfind("promote:", 0) == 0) {
      spec.promote = part.substr(8);
      static_cast<void>(parse_promotion_scheme(spec.promote));
    } else if (part.rfind("window:", 0) == 0) {
      spec.window = parse_number<int>("+window", part.substr(7));
      require(spec.window >= 0, ErrorCode::invalid_argument, fmt::format("preset \"{}\": a negative window", text));
    } else {
      require(spec.evict.empty(), ErrorCode::invalid_argument, fmt::format("preset \"{}\": one eviction scheme at most", text));
      spec.evict = part;
      static_cast<void>(parse_eviction_scheme(spec.evict));
    }
    plus = next;
  }
  if (const std::size_t colon = spec.name.find(':'); colon != std::string::npos) {
    require(spec.name.substr(colon) == ":cal", ErrorCode::invalid_argument,
            fmt::format("preset \"{}\": the only suffix is :cal (calibrated codebooks)", text));
    spec.name = spec.name.substr(0, colon);
    spec.calibrated = true;
  }
  require(kvq::BuiltinPresets<128>::contains(spec.name), ErrorCode::invalid_argument,
          fmt::format("unknown KV preset \"{}\"; known presets: {}", spec.name, kv_preset_list()));
  return spec;
}

// The one place a backend is chosen. The GPU backend scores whole steps (GpuOptions::score_every_token) of up to
// --chunk tokens, cut where decode semantics need it like the CPU backend's (runtime/exact_step.hpp).
std::unique_ptr<Backend> make_backend(const std::string& backend, const LlamaModel& model, const KvCacheOptions& kv,
                                      [[maybe_unused]] std::int64_t chunk) {
  if (backend == "cpu") return make_cpu_backend(model, kv);
#ifdef KVQ_LLAMA_HAS_GPU
  if (backend == "gpu") {
    // The step's logits are chunk x vocabulary floats on the device and in pinned host memory: 0.5 GiB at 1024
    // tokens of a 128K vocabulary. Each preset's backend holds its own copy of the weights (fine for SmolLM2's 0.27
    // GB; run large models' presets one by one).
    require(chunk <= 4096, ErrorCode::invalid_argument, "--chunk: at most 4096 tokens a step on the GPU backend");
    GpuOptions gpu;
    gpu.max_chunk_tokens = static_cast<int>(std::min(chunk, kv.max_tokens));
    gpu.score_every_token = true;
    return make_gpu_backend(model, kv, gpu);
  }
  throw kvq::Error(ErrorCode::invalid_argument, fmt::format("--backend {}: cpu or gpu", backend));
#else
  throw kvq::Error(ErrorCode::invalid_argument,
              fmt::format("--backend {}: this build has only the cpu backend (configure with CUDA for gpu)", backend));
#endif
}

struct Run {
  PresetSpec spec;
  std::unique_ptr<Backend> backend;
  TokenMetrics metrics;
  double seconds = 0;
};

// `with_reference`: fp16 first whether listed or not (perplexity mode compares every preset with it).
std::vector<Run> make_runs(const Options& o, const LlamaModel& model, std::int64_t context,
                           const std::shared_ptr<const KvCalibration>& calibration, bool with_reference) {
  std::vector<Run> runs;
  std::vector<PresetSpec> specs;
  if (with_reference) specs.push_back(PresetSpec{"fp16", "fp16", false, "", "", 0});
  for (const std::string& text : o.presets)
    if (text != "fp16" || !with_reference) specs.push_back(parse_spec(text));
  for (PresetSpec& spec : specs) {
    KvCacheOptions kv;
    kv.preset = spec.name;
    kv.evict = spec.evict;
    kv.promote = spec.promote;
    kv.window_tokens = spec.window;
    kv.max_tokens = context;
    if (spec.calibrated) {
      require(calibration != nullptr, ErrorCode::invalid_argument,
              fmt::format("preset {} needs --calibration FILE", spec.label));
      kv.calibration = calibration;
    }
    runs.push_back(Run{spec, make_backend(o.backend, model, kv, o.chunk), {}, 0});
  }
  return runs;
}

// Runs `tokens` through `backend` from an empty cache in chunks; after each chunk calls
// on_rows(first, count, logits): positions [first, first + count) of [score_begin, tokens.size()), row i of
// `logits` (vocabulary floats each) for position first + i.
template <class OnRows>
void run_sequence(Backend& backend, std::span<const TokenId> tokens, std::int64_t chunk, std::int64_t score_begin,
                  std::vector<float>& buffer, int vocabulary, OnRows&& on_rows) {
  backend.reset();
  backend.set_prompt_length(score_begin);  // the scored tokens all see a compressed prompt (--evict snapkv)
  const auto count = static_cast<std::int64_t>(tokens.size());
  for (std::int64_t begin = 0; begin < count; begin += chunk) {
    const std::int64_t size = std::min(chunk, count - begin);
    buffer.resize(static_cast<std::size_t>(size * vocabulary));
    backend.forward_logits(tokens.subspan(static_cast<std::size_t>(begin), static_cast<std::size_t>(size)), buffer);
    const std::int64_t first = std::max<std::int64_t>(0, score_begin - begin);
    if (first < size) on_rows(begin + first, size - first, buffer.data() + first * vocabulary);
  }
}

// Calls fn(i, worker) for i in [0, count) on up to `workers` threads (worker < workers: the caller's scratch
// index). The per-token metrics are a double-precision pass over the vocabulary for every scored token of every
// preset; on one thread they take longer than the GPU backend's forward passes.
template <class Fn>
void parallel_rows(std::int64_t count, int workers, Fn&& fn) {
  const int used = static_cast<int>(std::min<std::int64_t>(workers, count));
  if (used <= 1) {
    for (std::int64_t i = 0; i < count; ++i) fn(i, 0);
    return;
  }
  std::vector<std::jthread> threads;
  threads.reserve(static_cast<std::size_t>(used));
  for (int t = 0; t < used; ++t)
    threads.emplace_back([&, t] {
      for (std::int64_t i = t; i < count; i += used) fn(i, t);
    });
}

std::string chunk_description(std::int64_t chunk) {
  return chunk == 1 ? "token-by-token decode (every token through decode attention)"
                    : fmt::format("steps of up to {} tokens, cut where the cache flushes (and, with eviction, where "
                                  "the cache reaches its budget or a prompt ends), so every scored token sees the "
                                  "cache exactly as in token-by-token decode (docs/quality.md, docs/importance.md)",
                                  chunk);
}

// Bits per element of a sequence of `tokens` input tokens whose first `prompt` are the prompt, over all of them:
// the tokens the cache still holds at the end, at the preset's effective bits, divided by every token the model
// read (an eviction scheme that keeps half the tokens in int8 costs what all of them in about 4.25 bits would).
// Promoted int8 copies (+promote) add their records and token indices; the fp16 window they need is counted with
// the cache's (wider than the preset's own when the promotion asks for more).
double bits_per_element(const PresetSpec& spec, int head_dim, std::int64_t tokens, std::int64_t prompt) {
  const kvq::PresetInfo info = kvq::preset_info(spec.name, head_dim);
  const PromotionScheme promotion = parse_promotion_scheme(spec.promote);
  const int window = std::max({info.settings.window_tokens, spec.window, promotion.enabled() ? promotion.window_tokens : 0});
  const std::int64_t held = parse_eviction_scheme(spec.evict).tokens_held(tokens, prompt);
  const kvq::SequenceGeometry geometry{info.settings.sink_tokens, window, info.flush_tokens, 1, held};
  const std::int64_t quantized = geometry.quantized_after(held, 0);
  double bits = kvq::detail::effective_bits(info.key_bits, info.value_bits, quantized, held) * static_cast<double>(held);
  if (promotion.enabled())
    bits += kvq::promoted_bits_per_token_element(promotion.fraction, quantized, head_dim);
  return bits / static_cast<double>(tokens);
}

std::shared_ptr<const KvCalibration> load_calibration(const Options& o) {
  if (o.calibration.empty()) return nullptr;
  return std::make_shared<const KvCalibration>(read_kv_calibration(o.calibration));
}

// 0 if every bound holds, 2 otherwise; each check printed.
int check_bounds(const std::vector<Bound>& checks, const PerplexityReport& report) {
  int status = 0;
  for (const Bound& bound : checks) {
    const auto row = std::find_if(report.rows.begin(), report.rows.end(),
                                  [&](const PresetResult& r) { return r.preset == bound.preset; });
    require(row != report.rows.end(), ErrorCode::invalid_argument,
            fmt::format("--check {}: the preset is not in --presets", bound.preset));
    const double change = 100.0 * (row->perplexity - report.rows.front().perplexity) / report.rows.front().perplexity;
    const bool ok = change <= bound.max_ppl_change_percent && row->mean_kld <= bound.max_mean_kld;
    fmt::print("check {}: perplexity change {:+.4f}% (bound {}%), mean KLD {:.6f} (bound {}): {}\n", bound.preset,
               change, bound.max_ppl_change_percent, row->mean_kld, bound.max_mean_kld, ok ? "ok" : "FAILED");
    if (!ok) status = 2;
  }
  return status;
}

int run_perplexity(const Options& o, const LlamaModel& model) {
  const LlamaConfig& c = model.config;
  require(c.context_length == 0 || o.window <= c.context_length, ErrorCode::invalid_argument,
          fmt::format("--window {} exceeds the model's context of {}", o.window, c.context_length));
  const auto tokenize_start = Clock::now();
  const std::vector<TokenId> text = model.tokenizer.encode(read_text_file(o.text), false, false);
  const WindowPlan plan = plan_windows(static_cast<std::int64_t>(text.size()), o.window, o.stride, o.windows, o.from);
  fmt::print(stderr, "{}: {} tokens ({:.1f} s to tokenize); {} of {} windows of {} tokens, {} scored each\n", o.label,
             text.size(), std::chrono::duration<double>(Clock::now() - tokenize_start).count(), plan.starts.size(),
             plan.available, o.window, o.stride);
  std::vector<Run> runs = make_runs(o, model, o.window, load_calibration(o), true);

  const auto vocabulary = static_cast<std::size_t>(c.vocabulary);
  const std::int64_t score_begin = o.window - o.stride - 1;  // logits at position p predict token p + 1
  std::vector<double> reference(static_cast<std::size_t>(o.stride) * vocabulary);
  std::vector<int> reference_top(static_cast<std::size_t>(o.stride));
  std::vector<float> buffer;
  const int workers = static_cast<int>(std::clamp(std::thread::hardware_concurrency(), 1u, 64u));
  std::vector<std::vector<double>> rows(static_cast<std::size_t>(workers), std::vector<double>(vocabulary));
  std::vector<TokenScore> scores;
  const auto start = Clock::now();
  for (std::size_t w = 0; w < plan.starts.size(); ++w) {
    // The model sees tokens [start, start + window - 1): the last token of a window is only ever a target.
    const std::span<const TokenId> window(text.data() + plan.starts[w], static_cast<std::size_t>(o.window));
    const std::span<const TokenId> input = window.first(static_cast<std::size_t>(o.window - 1));
    for (Run& run : runs) {
      const auto run_start = Clock::now();
      const bool is_reference = &run == &runs.front();
      run_sequence(*run.backend, input, o.chunk, score_begin, buffer, c.vocabulary,
                   [&](std::int64_t first, std::int64_t count, const float* logits) {
        // Scores in parallel, added in position order (the totals do not depend on the thread count).
        scores.resize(static_cast<std::size_t>(count));
        parallel_rows(count, workers, [&](std::int64_t i, int worker) {
          const std::int64_t p = first + i;
          const auto k = static_cast<std::size_t>(p - score_begin);
          const std::span<double> out = is_reference ? std::span<double>(reference.data() + k * vocabulary, vocabulary)
                                                     : std::span<double>(rows[static_cast<std::size_t>(worker)]);
          log_softmax({logits + i * c.vocabulary, vocabulary}, out);
          if (is_reference) reference_top[k] = argmax(out);
          scores[static_cast<std::size_t>(i)] = score_token(out, {reference.data() + k * vocabulary, vocabulary},
                                                            reference_top[k], window[static_cast<std::size_t>(p + 1)]);
        });
        for (const TokenScore& score : scores) run.metrics.add(score);
      });
      run.seconds += std::chrono::duration<double>(Clock::now() - run_start).count();
    }
    const double elapsed = std::chrono::duration<double>(Clock::now() - start).count();
    const double per_window = elapsed / static_cast<double>(w + 1);
    fmt::print(stderr, "[{}/{}] window at token {}: {:.1f} s per window, {:.0f} tokens/s, {:.0f} s to go; ", w + 1,
               plan.starts.size(), plan.starts[w], per_window,
               static_cast<double>((w + 1) * runs.size()) * static_cast<double>(o.window - 1) / elapsed,
               per_window * static_cast<double>(plan.starts.size() - w - 1));
    for (const Run& run : runs) fmt::print(stderr, "{} {:.4f}  ", run.spec.label, run.metrics.perplexity());
    fmt::print(stderr, "\n");
  }

  PerplexityReport report;
  report.title = fmt::format("{}, {}: KV presets against the fp16 cache", std::filesystem::path(o.model).filename().string(), o.label);
  report.subset = fmt::format("{} of the text's {} windows of {} tokens (stride {}, {}), the last {} predictions of each "
                              "scored: {} tokens per preset",
                              plan.starts.size(), plan.available, o.window, o.stride,
                              o.from > 0 ? fmt::format("starting at {:.0f}% of its {} tokens", 100 * o.from, text.size())
                                         : fmt::format("spread over all its {} tokens", text.size()),
                              o.stride, runs.front().metrics.tokens());
  report.brief = fmt::format("{} windows x {} tokens, {} scored tokens per preset{}", plan.starts.size(), o.window,
                             runs.front().metrics.tokens(), o.chunk == 1 ? ", token-by-token decode" : "");
  report.how = fmt::format("{}; backend {}", chunk_description(o.chunk), runs.front().backend->name());
  report.context = o.window;
  for (const Run& run : runs) {
    const kvq::PresetInfo info = kvq::preset_info(run.spec.name, c.head_dim);
    report.rows.push_back(PresetResult{run.spec.label, info.key_bits, info.value_bits,
                                       bits_per_element(run.spec, c.head_dim, o.window - 1, score_begin),
                                       run.metrics.tokens(), run.metrics.perplexity(), run.metrics.mean_kld(),
                                       run.metrics.kld_quantile(0.99), run.metrics.top1_agreement(), run.seconds});
  }
  fmt::print("{}\n", perplexity_markdown(report));
  if (!o.out.empty()) {
    write_perplexity_report(report, o.out, o.plot);
    fmt::print("wrote {0}.md, {0}.csv{1}\n", o.out, o.plot ? fmt::format(", {}.png", o.out) : "");
  }
  return check_bounds(o.checks, report);
}

int run_passkey(const Options& o, const LlamaModel& model) {
  const LlamaConfig& c = model.config;
  require(c.context_length == 0 || o.context <= c.context_length, ErrorCode::invalid_argument,
          fmt::format("--context {} exceeds the model's context of {}", o.context, c.context_length));
  const std::vector<TokenId> filler = model.tokenizer.encode(read_text_file(o.text), false, false);
  std::vector<Run> runs = make_runs(o, model, o.context, load_calibration(o), false);
  PasskeyReport report;
  report.context = o.context;
  report.depths = o.depths;
  for (const Run& run : runs) {
    const kvq::PresetInfo info = kvq::preset_info(run.spec.name, c.head_dim);
    report.rows.push_back(PasskeyRow{run.spec.label, info.key_bits, info.value_bits,
                                     bits_per_element(run.spec, c.head_dim, o.context, o.context),
                                     std::vector<int>(o.depths.size(), 0), o.trials});
  }
  std::vector<float> buffer;
  std::vector<double> row(static_cast<std::size_t>(c.vocabulary));
  const auto start = Clock::now();
  int done = 0;
  const int total = o.trials * static_cast<int>(o.depths.size());
  for (std::size_t d = 0; d < o.depths.size(); ++d)
    for (int trial = 0; trial < o.trials; ++trial) {
      const PasskeyPrompt prompt =
          make_passkey_prompt(model.tokenizer, filler, o.context, o.depths[d], o.seed + static_cast<std::uint64_t>(trial));
      const std::span<const TokenId> tokens(prompt.tokens);
      const std::span<const TokenId> input = tokens.first(tokens.size() - 1);
      fmt::print(stderr, "[{}/{}] depth {:.2f}, pass key {}: ", ++done, total, o.depths[d], prompt.passkey);
      for (std::size_t r = 0; r < runs.size(); ++r) {
        bool correct = true;
        run_sequence(*runs[r].backend, input, o.chunk, prompt.answer_begin - 1, buffer, c.vocabulary,
                     [&](std::int64_t first, std::int64_t count, const float* logits) {
                       for (std::int64_t i = 0; i < count; ++i) {
                         log_softmax({logits + i * c.vocabulary, row.size()}, row);
                         correct = correct && argmax(row) == tokens[static_cast<std::size_t>(first + i + 1)];
                       }
                     });
        report.rows[r].correct[d] += correct ? 1 : 0;
        fmt::print(stderr, "{} {}  ", runs[r].spec.label, correct ? "yes" : "no");
      }
      fmt::print(stderr, "({:.0f} s)\n", std::chrono::duration<double>(Clock::now() - start).count());
    }
  report.title = fmt::format("{}: passkey retrieval at {} tokens, filler {}",
                             std::filesystem::path(o.model).filename().string(), o.context, o.label);
  report.how = fmt::format("{} trials per depth (seeds {}..{}: the number and the filler stretch), answer scored "
                           "teacher-forced (all its tokens the top-1 prediction); {}; backend {}",
                           o.trials, o.seed, o.seed + static_cast<std::uint64_t>(o.trials) - 1,
                           chunk_description(o.chunk), runs.front().backend->name());
  fmt::print("{}\n", passkey_markdown(report));
  if (!o.out.empty()) {
    write_passkey_report(report, o.out);
    fmt::print("wrote {0}.md, {0}.csv\n", o.out);
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const Options o = parse(argc, argv);
    if (!o.merge.empty()) {
      const PerplexityReport report = merge_perplexity_reports(o.merge);
      write_perplexity_report(report, o.out, o.plot);
      fmt::print("{}\nwrote {}.md, {}.csv\n", perplexity_markdown(report), o.out, o.out);
      return 0;
    }
    const LlamaModel model = load_model(o.model);
    return o.passkey ? run_passkey(o, model) : run_perplexity(o, model);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "kvq_eval: %s\n", e.what());
    return 1;
  }
}

// kvq_plan: what a Llama-style model with a kvq KV preset needs on one GPU, part by part, the largest context that
// fits, and the naive formula's answer beside it. Analytical (kvq/planner/memory_plan.hpp; docs/planner.md).
//   kvq_plan [--model NAME | --config config.json | --gguf FILE] [--weights fp16|bf16|int8|int4] [--kv PRESET] [--batch N]
//            [--context N] [--gpu SIZE] [--chunk N] [--page-tokens N] [--sm-count N] [--cuda-context SIZE]
//   kvq_plan --list
//   kvq_plan --plot FILE.png [--weights T] [--batch N] [--plot-presets a,b,c]
#include <fmt/core.h>

#include <cctype>
#include <charconv>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "gnuplot.hpp"
#include "kvq/planner/hf_config.hpp"
#ifdef KVQ_PLAN_GGUF
#include "model/llama_model.hpp"
#endif
#include "kvq/planner/memory_plan.hpp"
#include "kvq/planner/model_presets.hpp"

namespace {

using namespace kvq;

constexpr const char* usage = R"(usage:
  kvq_plan [options]                 memory breakdown, largest context, naive formula
  kvq_plan --list                    known models and KV presets
  kvq_plan --plot FILE.png           memory vs context for Llama-3.1-8B and Llama-3-70B (needs gnuplot)

options:
  --model NAME          published model (default Llama-3.1-8B; see --list)
  --config FILE         a Hugging Face config.json instead of --model
  --gguf FILE           a GGUF model file instead of --model (its llama.* metadata; no weights are read)
  --weights TYPE        fp16 | bf16 | int8 | int4 (default bf16; int8/int4 with one fp16 scale per 128 inputs)
  --kv PRESET           KV preset (default fp16; see --list)
  --batch N             sequences, each at the full context (default 1)
  --context N           tokens per sequence (default: the model's trained context); K = 1024, M = 1048576
  --gpu SIZE            GPU memory (default 80GiB); units B, KiB, MiB, GiB, TiB, KB, MB, GB, TB; no unit = GiB
  --chunk N             prefill chunk tokens (default 2048)
  --logits WHICH        prefill tokens given logits: last (generation, default) | every (scoring a text, kvq_eval)
  --page-tokens N       cache page size in tokens (default 256)
  --sm-count N          SMs for the decode split-KV workspace (default 132, an H100 SXM)
  --cuda-context SIZE   device memory a process holds beyond its allocations (default 630MiB; no unit = MiB)
  --keep N              eviction budget: the cache keeps at most N tokens per sequence (kvq_llama --evict)
  --kv-bits B           a KV budget in bits per element of the whole context: the largest --keep that fits it
  --promote F           int8 copies of the fraction F of quantized tokens (kvq_llama --promote; fp16 window >= 32)
  --plot-presets LIST   presets of the plot, comma-separated (default fp16,int8,q4_0,kivi-2)
)";

struct UsageError {
  std::string message;
};

std::string grouped(std::int64_t value) {
  std::string digits = std::to_string(value < 0 ? -value : value), result;
  for (std::size_t i = 0; i < digits.size(); ++i) {
    if (i > 0 && (digits.size() - i) % 3 == 0) result += ',';
    result += digits[i];
  }
  return value < 0 ? "-" + result : result;
}

double in_gib(std::int64_t bytes) { return static_cast<double>(bytes) / static_cast<double>(gibibyte); }

// A token count: digits with an optional K (1024) or M (1048576) suffix.
std::int64_t parse_count(std::string_view text, std::string_view option) {
  std::int64_t multiplier = 1;
  if (!text.empty() && (text.back() == 'K' || text.back() == 'k')) multiplier = 1024, text.remove_suffix(1);
  else if (!text.empty() && (text.back() == 'M' || text.back() == 'm')) multiplier = 1 << 20, text.remove_suffix(1);
  std::int64_t value = 0;
  const auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (error != std::errc{} || end != text.data() + text.size() || text.empty())
    throw UsageError{fmt::format("{} expects a whole number, got \"{}\"", option, text)};
  if (value <= 0) throw UsageError{fmt::format("{} must be positive, got {}", option, value)};
  if (value > (std::int64_t{1} << 40) / multiplier) throw UsageError{fmt::format("{} {} is absurdly large", option, text)};
  return value * multiplier;
}

int parse_int(std::string_view text, std::string_view option) {
  const std::int64_t value = parse_count(text, option);
  if (value > (std::int64_t{1} << 30)) throw UsageError{fmt::format("{} {} is absurdly large", option, text)};
  return static_cast<int>(value);
}

// A byte size: a decimal number and a unit; `plain_unit` when there is none.
std::int64_t parse_size(std::string_view text, std::string_view option, std::int64_t plain_unit) {
  std::size_t split = 0;
  while (split < text.size() && (std::isdigit(static_cast<unsigned char>(text[split])) || text[split] == '.')) ++split;
  std::string unit(text.substr(split));
  for (char& c : unit) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  double number = 0;
  const std::string digits(text.substr(0, split));
  const auto [end, error] = std::from_chars(digits.data(), digits.data() + digits.size(), number);
  if (digits.empty() || error != std::errc{} || end != digits.data() + digits.size())
    throw UsageError{fmt::format("{} expects a size such as 24GiB or 80GB, got \"{}\"", option, text)};
  struct Unit {
    const char* name;
    double bytes;
  };
  const Unit units[] = {{"b", 1},      {"kib", 1024.0},     {"mib", 1048576.0},    {"gib", 1073741824.0},
                        {"tib", 1099511627776.0}, {"kb", 1e3}, {"mb", 1e6}, {"gb", 1e9}, {"tb", 1e12}};
  double scale = unit.empty() ? static_cast<double>(plain_unit) : 0.0;
  for (const Unit& u : units)
    if (unit == u.name) scale = u.bytes;
  if (scale == 0.0) throw UsageError{fmt::format("{}: unknown unit \"{}\" (B, KiB, MiB, GiB, TiB, KB, MB, GB, TB)", option, unit)};
  const double bytes = number * scale;
  if (!(bytes >= 0) || bytes > 1.0e18) throw UsageError{fmt::format("{} {} is absurdly large", option, text)};
  return std::llround(bytes);
}

struct Options {
  std::string model = "Llama-3.1-8B", config_file, gguf_file, plot_file;
  std::vector<std::string> plot_presets{"fp16", "int8", "q4_0", "kivi-2"};
  bool list = false;
  PlanRequest request;
  std::int64_t gpu_bytes = 80 * gibibyte;
  bool context_given = false;
  std::optional<double> kv_bits;  // --kv-bits: becomes request.kept_tokens once the context is known
};

std::vector<std::string> split_list(std::string_view text) {
  std::vector<std::string> items;
  while (!text.empty()) {
    const std::size_t comma = text.find(',');
    if (comma != 0) items.emplace_back(text.substr(0, comma));
    if (comma == std::string_view::npos) break;
    text.remove_prefix(comma + 1);
  }
  return items;
}

Options parse_options(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string_view arg = argv[i];
    auto value = [&]() -> std::string_view {
      if (i + 1 >= argc) throw UsageError{fmt::format("{} needs a value", arg)};
      return argv[++i];
    };
    if (arg == "--help" || arg == "-h") {
      fmt::print("{}", usage);
      std::exit(0);
    } else if (arg == "--list") {
      o.list = true;
    } else if (arg == "--model") {
      o.model = value();
    } else if (arg == "--config") {
      o.config_file = value();
    } else if (arg == "--gguf") {
      o.gguf_file = value();
    } else if (arg == "--weights") {
      o.request.weights = parse_weight_type(value());
    } else if (arg == "--kv") {
      o.request.kv_preset = value();
    } else if (arg == "--batch") {
      o.request.batch = parse_int(value(), arg);
    } else if (arg == "--context") {
      o.request.context = parse_count(value(), arg);
      o.context_given = true;
    } else if (arg == "--gpu") {
      o.gpu_bytes = parse_size(value(), arg, gibibyte);
      if (o.gpu_bytes <= 0) throw UsageError{"--gpu must be positive"};
    } else if (arg == "--chunk") {
      o.request.assumptions.prefill_chunk_tokens = parse_int(value(), arg);
    } else if (arg == "--logits") {
      const std::string which(value());
      if (which == "last") o.request.assumptions.prefill_logits = PrefillLogits::last_token;
      else if (which == "every") o.request.assumptions.prefill_logits = PrefillLogits::every_token;
      else throw UsageError{fmt::format("--logits expects last or every, got \"{}\"", which)};
    } else if (arg == "--page-tokens") {
      o.request.assumptions.page_tokens = parse_int(value(), arg);
    } else if (arg == "--sm-count") {
      o.request.assumptions.sm_count = parse_int(value(), arg);
    } else if (arg == "--cuda-context") {
      o.request.assumptions.cuda_context_bytes = parse_size(value(), arg, mebibyte);
    } else if (arg == "--keep") {
      o.request.kept_tokens = parse_count(value(), arg);
    } else if (arg == "--promote") {
      const std::string text(value());
      double fraction = 0;
      const auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), fraction);
      if (error != std::errc{} || end != text.data() + text.size() || !(fraction >= 0) || fraction > 1)
        throw UsageError{fmt::format("--promote expects a fraction in [0, 1], got \"{}\"", text)};
      o.request.promoted_fraction = fraction;
    } else if (arg == "--kv-bits") {
      const std::string text(value());
      double bits = 0;
      const auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), bits);
      if (error != std::errc{} || end != text.data() + text.size() || !(bits > 0) || bits > 64)
        throw UsageError{fmt::format("--kv-bits expects bits per element in (0, 64], got \"{}\"", text)};
      o.kv_bits = bits;
    } else if (arg == "--plot") {
      o.plot_file = value();
    } else if (arg == "--plot-presets") {
      o.plot_presets = split_list(value());
      if (o.plot_presets.empty()) throw UsageError{"--plot-presets needs at least one preset"};
    } else {
      throw UsageError{fmt::format("unknown option \"{}\"", arg)};
    }
  }
  return o;
}

// ---- the report ---------------------------------------------------------------------------------------------------

void row(std::string_view part, std::int64_t bytes, std::string_view note = "") {
  fmt::print("  {:<44}{:>20}{:>11.3f}{}{}\n", part, grouped(bytes), in_gib(bytes), note.empty() ? "" : "  ", note);
}

void print_plan(const Options& o) {
  const PlanRequest& r = o.request;
  const ModelShape& m = r.model;
  const MemoryPlan plan = plan_memory(r);
  const PresetInfo& p = plan.preset;

  fmt::print("model      {}: {} layers, hidden {}, MLP {}, {} query heads / {} KV heads of {}, vocab {}, {} embeddings,\n"
             "           {:.3f} B parameters, trained context {}\n",
             m.name, m.layers, m.hidden, m.intermediate, m.query_heads, m.kv_heads, m.head_dim, m.vocab,
             m.tied_embeddings ? "tied" : "untied", static_cast<double>(plan.weights.parameters.total()) / 1e9,
             grouped(m.max_context));
  fmt::print("KV preset  {}: {}\n", p.name, p.description);
  fmt::print("           keys {:.4g} + values {:.4g} bits/element (the policies'); effective {:.4f} at {} tokens;\n"
             "           sinks {}, window {}, flush unit {}, keys {}\n",
             p.key_bits, p.value_bits, effective_bits_per_element(p.name, m.head_dim, r.context), grouped(r.context),
             p.settings.sink_tokens, p.settings.window_tokens, p.flush_tokens,
             p.settings.key_position == KeyPosition::pre_rope ? "pre-RoPE" : "post-RoPE");
  fmt::print("request    {} weights, batch {}, context {} tokens{}, GPU {:.2f} GiB\n", to_string(r.weights), r.batch,
             grouped(r.context), r.context > m.max_context ? " (beyond the trained context)" : "", in_gib(o.gpu_bytes));
  if (r.kept_tokens)
    fmt::print("budget     eviction keeps {} of {} tokens per sequence{}: KV {:.4f} bits per element of the whole context\n",
               grouped(r.held_tokens()), grouped(r.context),
               o.kv_bits ? fmt::format(" (the most that fits --kv-bits {})", *o.kv_bits) : "", kv_bits_per_element(r));
  else
    fmt::print("budget     every token kept: KV {:.4f} bits per element (pages with their padding, sinks, window{})\n",
               kv_bits_per_element(r), r.promoted_fraction ? ", promoted copies" : "");
  fmt::print("\n");

  fmt::print("  {:<44}{:>20}{:>11}\n", "part", "bytes", "GiB");
  const WeightBytes& w = plan.weights;
  if (w.exact) {
    row(fmt::format("weights (given)"), w.total());
  } else {
    row(fmt::format("weights ({})", to_string(r.weights)), w.total());
    row("  embeddings (16-bit)", w.embedding);
    if (w.output > 0) row("  output projection (16-bit)", w.output);
    row(fmt::format("  layer projections ({})", to_string(r.weights)), w.linear,
        w.linear_scales > 0 ? fmt::format("of which scales {:.3f} GiB", in_gib(w.linear_scales)) : "");
    row("  RMSNorm weights (16-bit)", w.norms);
  }
  const KVCacheBytes& kv = plan.kv;
  row("KV cache (as the paged cache allocates it)", kv.total());
  row(fmt::format("  pages: {} x {} tokens", grouped(kv.storage.pool_pages), kv.config.page_tokens), kv.storage.pool_bytes);
  if (kv.outliers > 0) row("    of which fp16 outlier slots", kv.outliers);
  row(fmt::format("  fp16 sinks ({} tokens)", kv.config.sink_tokens), kv.storage.sink_bytes);
  row(fmt::format("  fp16 window ({} + {} - 1 slots)", kv.config.window_tokens, p.flush_tokens), kv.storage.window_bytes);
  row("  page table, lengths, plan entries", kv.bookkeeping);
  if (r.promoted_fraction)
    row(fmt::format("  int8 copies of {:g}% of the quantized tokens", 100 * *r.promoted_fraction), kv.promoted);
  const bool prefill_larger = plan.prefill.total() >= plan.decode.total();
  auto workspace = [&](const StepWorkspace& s, std::string_view what, bool counted, std::string_view attention) {
    row(fmt::format("workspace: {}", what), s.total(), counted ? "(the larger: counted)" : "(not counted)");
    row("  residual fp32, RMSNorm output fp16", s.hidden_states);
    row("  q/k/v, rotated q fp32; k, v, out fp16", s.projections);
    row("  MLP gate/up fp32, SwiGLU fp16", s.mlp);
    row(fmt::format("  logits (fp32, {} x {})", grouped(s.logits / (std::int64_t{m.vocab} * 4)), grouped(m.vocab)), s.logits);
    row(fmt::format("  attention: {}", attention), s.attention);
  };
  workspace(plan.prefill, fmt::format("prefill chunk of {} tokens", grouped(plan.prefill.tokens)), prefill_larger,
            "none (tiles in shared memory)");
  workspace(plan.decode, fmt::format("decode, {} sequence(s)", r.batch), !prefill_larger, "split-KV partials");
  row("cuBLAS workspace", plan.library_workspace);
  row("CUDA context, kernels, rounding (assumed)", plan.cuda_context);
  row("total", plan.total());
  const std::int64_t room = o.gpu_bytes - plan.total();
  fmt::print("\n  {} on {:.2f} GiB: {}\n", room >= 0 ? "fits" : "does NOT fit", in_gib(o.gpu_bytes),
             room >= 0 ? fmt::format("{:.3f} GiB free", in_gib(room)) : fmt::format("{:.3f} GiB short", in_gib(-room)));

  const LargestContext largest = largest_context(r, o.gpu_bytes);
  std::string note;
  if (largest.tokens == largest.search_limit) note = " (the search limit: at least this many)";
  else if (largest.tokens > m.max_context) note = fmt::format(" (more than the trained {})", grouped(m.max_context));
  fmt::print("  largest context on {:.2f} GiB: {} tokens per sequence at batch {}{}\n", in_gib(o.gpu_bytes),
             grouped(largest.tokens), r.batch, note);
  if (largest.tokens == 0) fmt::print("  (not even one token: weights, workspace and CUDA context alone do not fit)\n");

  const NaiveEstimate naive = naive_estimate(r, o.gpu_bytes);
  fmt::print("\nnaive formula (founding notes: 2 x layers x QUERY heads x head_dim x {:.4g}/8 bytes per token, weights, nothing else):\n",
             p.mean_bits());
  fmt::print("  KV {:.3f} GiB ({:.2f}x the cache's {:.3f} GiB; {} query heads / {} KV heads = {:.2f}), total {:.3f} GiB,\n"
             "  largest context {} tokens\n",
             in_gib(naive.kv_bytes), static_cast<double>(naive.kv_bytes) / static_cast<double>(kv.total()), in_gib(kv.total()),
             m.query_heads, m.kv_heads, static_cast<double>(m.query_heads) / m.kv_heads, in_gib(naive.total_bytes),
             grouped(naive.largest_context));
}

void print_list() {
  fmt::print("models (published hyper-parameters):\n");
  fmt::print("  {:<16}{:>7}{:>8}{:>8}{:>6}{:>5}{:>5}{:>8}{:>7}{:>9}{:>9}\n", "name", "layers", "hidden", "MLP", "q", "kv",
             "d", "vocab", "tied", "context", "params");
  for (const ModelShape& m : published_models())
    fmt::print("  {:<16}{:>7}{:>8}{:>8}{:>6}{:>5}{:>5}{:>8}{:>7}{:>9}{:>8.2f}B\n", m.name, m.layers, m.hidden,
               m.intermediate, m.query_heads, m.kv_heads, m.head_dim, m.vocab, m.tied_embeddings ? "yes" : "no",
               m.max_context, static_cast<double>(parameter_count(m).total()) / 1e9);
  fmt::print("\nKV presets (bits/element at head_dim 128; effective = sinks and window amortised):\n");
  fmt::print("  {:<10}{:>6}{:>8}{:>8}{:>8}{:>11}{:>7}{:>8}  {}\n", "name", "keys", "values", "@4K", "@128K", "sinks/win",
             "flush", "keys", "description");
  for (std::string_view name : preset_names) {
    const PresetInfo p = preset_info(name, 128);
    fmt::print("  {:<10}{:>6.4g}{:>8.4g}{:>8.3f}{:>8.3f}{:>11}{:>7}{:>8}  {}\n", p.name, p.key_bits, p.value_bits,
               effective_bits_per_element(name, 128, 4096), effective_bits_per_element(name, 128, 131072),
               fmt::format("{}/{}", p.settings.sink_tokens, p.settings.window_tokens), p.flush_tokens,
               p.settings.key_position == KeyPosition::pre_rope ? "pre" : "post", p.description);
  }
  fmt::print("\n  runtime parameters (calibration-free defaults from each preset's default_params()):\n");
  for (std::string_view name : preset_names)
    visit_preset(name, 128, [&]<class P>() { fmt::print("    {:<10}{}\n", P::name, P::runtime_params); });
}

// ---- the plot -----------------------------------------------------------------------------------------------------

using examples::gnuplot_quoted;

void write_plot(const Options& o) {
  namespace fs = std::filesystem;
  const fs::path png = o.plot_file;
  const fs::path data = fs::path(png).replace_extension(".dat"), script = fs::path(png).replace_extension(".gp");
  const std::vector<std::string> models{"Llama-3.1-8B", "Llama-3-70B"};
  const std::vector<double> gpus{24, 40, 80, 141};
  std::vector<std::int64_t> contexts;
  for (int step = 0; step <= 40; ++step) contexts.push_back(std::llround(1024.0 * std::pow(2.0, step / 4.0)));

  {
    std::ofstream out(data);
    if (!out) throw Error(ErrorCode::io_error, fmt::format("--plot: cannot write {}", data.string()));
    out << "# kvq_plan --plot: total GPU memory in GiB (weights " << to_string(o.request.weights) << ", batch "
        << o.request.batch << ", prefill chunk " << o.request.assumptions.prefill_chunk_tokens << ", CUDA context "
        << o.request.assumptions.cuda_context_bytes / mebibyte << " MiB)\n";
    for (const std::string& name : models) {
      out << "# " << name << "\n# context";
      for (const std::string& preset : o.plot_presets) out << ' ' << preset;
      out << " naive-fp16\n";
      for (std::int64_t context : contexts) {
        PlanRequest r = o.request;
        r.model = published_model(name);
        r.context = context;
        out << context;
        for (const std::string& preset : o.plot_presets) {
          r.kv_preset = preset;
          out << ' ' << fmt::format("{:.4f}", in_gib(plan_memory(r).total()));
        }
        r.kv_preset = "fp16";
        out << ' ' << fmt::format("{:.4f}", in_gib(naive_estimate(r, PlanLimits::max_gpu_bytes).total_bytes)) << '\n';
      }
      out << "\n\n";
    }
    if (!out) throw Error(ErrorCode::io_error, fmt::format("--plot: writing {} failed", data.string()));
  }

  std::string gp;
  gp += "set terminal pngcairo size 1600,760 noenhanced font 'DejaVu Sans,12'\n";
  gp += "set output " + gnuplot_quoted(png.string()) + "\n";
  gp += fmt::format(
      "set multiplot layout 1,2 title \"Total GPU memory vs context: {} weights, batch {}, KV cache as allocated, "
      "prefill chunk {}, {} MiB CUDA context (kvq_plan)\" font ',14'\n",
      to_string(o.request.weights), o.request.batch, o.request.assumptions.prefill_chunk_tokens,
      o.request.assumptions.cuda_context_bytes / mebibyte);
  gp += "set logscale x 2\nset xrange [1024:1048576]\n";
  gp += "set xtics ('1K' 1024, '4K' 4096, '16K' 16384, '64K' 65536, '128K' 131072, '256K' 262144, '1M' 1048576)\n";
  // Log y as well: the GPU sizes stay apart, and the naive curve (up to 6x the real one) stays on the chart.
  gp += "set xlabel 'context (tokens per sequence, log scale)'\nset ylabel 'GPU memory (GiB, log scale)'\n";
  gp += "set logscale y 2\nset ytics ('8' 8, '16' 16, '24' 24, '40' 40, '80' 80, '141' 141, '256' 256, '512' 512, '1024' 1024, "
        "'2048' 2048, '4096' 4096)\n";
  gp += "set grid xtics ytics lc rgb '#dddddd'\nset key left top box opaque\n";
  const char* colors[] = {"#1f77b4", "#2ca02c", "#ff7f0e", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf"};
  for (std::size_t i = 0; i < models.size(); ++i) {
    const ModelShape& m = published_model(models[i]);
    const double weights = in_gib(weight_bytes(m, o.request.weights, o.request.assumptions.weight_group_size).total());
    // A power of two below both the weights and the smallest GPU, so that every GPU line is on the chart.
    const double bottom = std::exp2(std::floor(std::log2(0.7 * std::min(weights, gpus.front()))));
    gp += "unset arrow\nunset label\n";
    std::string below;  // GPUs that the weights alone overflow
    for (double g : gpus) {
      if (g < weights) below += fmt::format("{}{:g}", below.empty() ? "" : ", ", g);
      gp += fmt::format("set arrow from graph 0, first {0} to graph 1, first {0} nohead dt 2 lw 1.5 lc rgb 'gray40' front\n", g);
      gp += fmt::format("set label '{0:g} GB GPU' at graph 0.99, first {0} right offset 0,0.6 tc rgb 'gray30' front\n", g);
    }
    gp += fmt::format("set arrow from {0}, graph 0 to {0}, graph 1 nohead dt 3 lc rgb 'gray60'\n", m.max_context);
    gp += fmt::format("set label 'trained context' at {0}, graph 0.02 rotate by 90 offset -0.8,0 tc rgb 'gray40'\n", m.max_context);
    gp += fmt::format("set yrange [{:g}:*]\n", bottom);
    gp += fmt::format("set title '{}: weights {:.1f} GiB{}'\n", m.name, weights,
                      below.empty() ? "" : fmt::format(" (more than a {} GB GPU holds)", below));
    gp += "plot ";
    for (std::size_t k = 0; k < o.plot_presets.size(); ++k) {
      const PresetInfo p = preset_info(o.plot_presets[k], m.head_dim);
      gp += fmt::format("{} index {} using 1:{} with lines lw 2.5 lc rgb '{}' title '{} ({:.3g} bits)', ",
                        gnuplot_quoted(data.string()), i, k + 2, colors[k % 8], p.name, p.mean_bits());
    }
    gp += fmt::format("{} index {} using 1:{} with lines lw 2 dt 4 lc rgb 'black' title 'fp16, naive formula (query heads)'\n",
                      gnuplot_quoted(data.string()), i, o.plot_presets.size() + 2);
  }
  gp += "unset multiplot\n";
  examples::run_gnuplot("--plot", script, gp, data);
  fmt::print("wrote {} (data {}, script {})\n", png.string(), data.string(), script.string());
}

// A GGUF file's model shape, from the metadata the example's loader reads (examples/llama/model/load_model.cpp,
// read_gguf_config): the same keys and checks as when kvq_llama runs the file, without reading the weights.
ModelShape gguf_model_shape(const std::string& path) {
#ifdef KVQ_PLAN_GGUF
  const llama::LlamaConfig c = llama::read_gguf_config(path);
  ModelShape m;
  m.name = std::filesystem::path(path).filename().string() + " (GGUF)";
  m.layers = c.layers;
  m.hidden = c.hidden;
  m.intermediate = c.ffn;
  m.query_heads = c.q_heads;
  m.kv_heads = c.kv_heads;
  m.head_dim = c.head_dim;
  m.vocab = c.vocabulary;
  m.tied_embeddings = c.tied_embeddings;
  require(c.context_length > 0, ErrorCode::io_error, "GGUF " + path + ": llama.context_length is missing");
  m.max_context = c.context_length;
  validate_model_shape(m, "GGUF " + path, ErrorCode::io_error);
  return m;
#else
  throw Error(ErrorCode::invalid_argument, "--gguf " + path +
                                               ": this kvq_plan was built without the GGUF reader (it comes with "
                                               "examples/llama, which needs nlohmann-json, pcre2 and a BLAS)");
#endif
}

}  // namespace

int main(int argc, char** argv) {
  try {
    Options o = parse_options(argc, argv);
    if (o.list) {
      print_list();
      return 0;
    }
    if (!o.config_file.empty()) {
      o.request.model = read_hf_config(o.config_file);
    } else if (!o.gguf_file.empty()) {
      o.request.model = gguf_model_shape(o.gguf_file);
    } else {
      o.request.model = published_model(o.model);
    }
    if (!o.context_given) o.request.context = o.request.model.max_context;
    if (o.kv_bits) {
      if (o.request.kept_tokens) throw UsageError{"give --keep N or --kv-bits B, not both"};
      const std::int64_t kept = kept_tokens_for_bits(o.request, *o.kv_bits);
      if (kept == 0)
        throw Error(ErrorCode::invalid_argument,
                    fmt::format("--kv-bits {}: not even one kept token of {} fits with --kv {} (its fp16 sinks and "
                                "window alone cost more)",
                                *o.kv_bits, o.request.context, o.request.kv_preset));
      o.request.kept_tokens = kept;
    }
    if (!o.plot_file.empty()) {
      write_plot(o);
      return 0;
    }
    print_plan(o);
    return 0;
  } catch (const UsageError& error) {
    std::fprintf(stderr, "kvq_plan: %s\n\n%s", error.message.c_str(), usage);
    return 2;
  } catch (const Error& error) {
    std::fprintf(stderr, "kvq_plan: %s\n", error.what());
    return 1;
  }
}

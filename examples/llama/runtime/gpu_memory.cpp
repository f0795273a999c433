#include "runtime/gpu_memory.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cctype>
#include <charconv>
#include <cmath>

#include "kvq/attention/decode_plan.hpp"
#include "kvq/core/alignment.hpp"
#include "kvq/core/error.hpp"

namespace kvq::llama {
namespace {

// Each buffer starts on a 256-byte boundary (what cuBLAS and the vector loads like).
struct Carver {
  std::int64_t offset = 0;
  std::int64_t take(std::int64_t bytes) {
    const std::int64_t start = offset;
    offset += (bytes + 255) / 256 * 256;
    return start;
  }
};

}  // namespace

ActivationLayout activation_layout(const LlamaConfig& c, std::int64_t max_tokens, std::int64_t max_context,
                                   std::int64_t logit_rows) {
  require(max_tokens > 0 && max_context > 0, ErrorCode::invalid_argument,
          "GPU backend: the chunk size and the context must be positive");
  require(logit_rows >= 1 && logit_rows <= max_tokens, ErrorCode::invalid_argument,
          "GPU backend: logits for 1 to max_tokens tokens of a step");
  ActivationLayout a;
  a.max_tokens = max_tokens;
  a.max_context = max_context;
  a.logit_rows = logit_rows;
  const std::int64_t t = max_tokens, d = c.head_dim, q = c.q_heads * d, kv = c.kv_heads * d;
  Carver carve;
  a.hidden = carve.take(t * c.hidden * 4);
  a.qkv = carve.take(t * (q + 2 * kv) * 4);
  a.query = carve.take(t * q * 4);
  a.gate_up = carve.take(t * 2 * std::int64_t{c.ffn} * 4);
  a.logits = carve.take(logit_rows * c.vocabulary * 4);
  a.normed = carve.take(t * c.hidden * 2);
  a.keys = carve.take(t * kv * 2);
  a.values = carve.take(t * kv * 2);
  a.attention = carve.take(t * q * 2);
  a.mlp = carve.take(t * c.ffn * 2);
  a.token_ids = carve.take(t * 4);
  a.sequence = carve.take(4);
  a.chunk_starts = carve.take(8);
  a.step_bytes = carve.offset;
  return a;
}

WeightLayout weight_layout(const LlamaConfig& c) {
  const std::int64_t d = c.head_dim, hidden = c.hidden, ffn = c.ffn;
  WeightLayout w;
  Carver carve;
  w.embedding = carve.take(std::int64_t{c.vocabulary} * hidden * 2);
  w.lm_head = c.tied_embeddings ? w.embedding : carve.take(std::int64_t{c.vocabulary} * hidden * 2);
  w.output_norm = carve.take(hidden * 4);
  for (int layer = 0; layer < c.layers; ++layer) {
    WeightLayout::Layer l;
    l.attention_norm = carve.take(hidden * 4);
    l.ffn_norm = carve.take(hidden * 4);
    l.qkv = carve.take((c.q_heads + 2 * c.kv_heads) * d * hidden * 2);
    l.output = carve.take(hidden * c.q_heads * d * 2);
    l.gate_up = carve.take(2 * ffn * hidden * 2);
    l.down = carve.take(hidden * ffn * 2);
    w.layers.push_back(l);
  }
  w.total_bytes = carve.offset;
  return w;
}

std::int64_t decode_workspace_bound(const LlamaConfig& c) {
  const std::int64_t rows = std::int64_t{c.q_heads} * decode_max_splits;
  const int group = c.q_heads / c.kv_heads;
  const int head_chunks = (group + decode_group_width(group) - 1) / decode_group_width(group);
  return align16(rows * c.head_dim * 4) + align16(rows * 4) + align16(std::int64_t{c.kv_heads} * head_chunks * 4);
}

std::string GpuMemoryPlan::table() const {
  std::string out;
  const auto line = [&](std::string_view what, std::int64_t bytes, std::string_view note) {
    out += fmt::format("  {:<24} {:>12}  {}\n", what, format_bytes(bytes), note);
  };
  line("weights (fp16)", weights, "matrices fp16, RMSNorm weights fp32");
  line("KV cache", kv.total_bytes(),
       fmt::format("{}: pages {}, sinks {}, window {}, bookkeeping {} ({} pages)", kv_format,
                   format_bytes(kv.pool_bytes), format_bytes(kv.sink_bytes), format_bytes(kv.window_bytes),
                   format_bytes(kv.bookkeeping_bytes), kv.pool_pages));
  line("activations", activations.step_bytes,
       fmt::format("{} tokens per step, logits for {}; prefill attention reads the cache in tiles (no scratch)",
                   activations.max_tokens, activations.logit_rows == 1 ? "the last" : "every one"));
  line("decode workspace", decode_workspace, "split-KV partials (most splits a plan can take)");
  line("cuBLAS workspace", cublas_workspace, "cublasSetWorkspace");
  line("CUDA context", cuda_context, "context, cuBLAS handle, kernel images (kvq_plan's figure, measured on an H200)");
  line("total", total(), "");
  return out;
}

std::int64_t parse_bytes(std::string_view text) {
  const std::string original(text);
  while (!text.empty() && std::isspace(static_cast<unsigned char>(text.back()))) text.remove_suffix(1);
  std::size_t digits = 0;
  while (digits < text.size() && (std::isdigit(static_cast<unsigned char>(text[digits])) || text[digits] == '.'))
    ++digits;
  double value = 0;
  const auto [end, error] = std::from_chars(text.data(), text.data() + digits, value);
  require(digits > 0 && error == std::errc() && end == text.data() + digits, ErrorCode::invalid_argument,
          "--mem-budget: \"" + original + "\" is not a size (e.g. 80GiB, 16GB, 512MiB, 1073741824)");
  std::string_view unit = text.substr(digits);
  while (!unit.empty() && std::isspace(static_cast<unsigned char>(unit.front()))) unit.remove_prefix(1);
  struct Unit {
    std::string_view name;
    double scale;
  };
  constexpr Unit units[] = {{"", 1},         {"B", 1},    {"KiB", 0x1p10}, {"MiB", 0x1p20}, {"GiB", 0x1p30},
                            {"TiB", 0x1p40}, {"KB", 1e3}, {"MB", 1e6},     {"GB", 1e9},     {"TB", 1e12}};
  double scale = 0;
  for (const Unit& u : units)
    if (unit == u.name) scale = u.scale;
  require(scale > 0, ErrorCode::invalid_argument,
          "--mem-budget: unknown unit \"" + std::string(unit) + "\" in \"" + original +
              "\" (B, KiB, MiB, GiB, TiB, KB, MB, GB, TB)");
  const double bytes = std::floor(value * scale);
  require(bytes > 0 && bytes < 9.0e18, ErrorCode::invalid_argument,
          "--mem-budget: \"" + original + "\" is out of range");
  return static_cast<std::int64_t>(bytes);
}

std::string format_bytes(std::int64_t bytes) {
  const double b = static_cast<double>(bytes);
  if (b >= 1024.0 * 1024 * 1024) return fmt::format("{:.2f} GiB", b / (1024.0 * 1024 * 1024));
  if (b >= 1024.0 * 1024) return fmt::format("{:.2f} MiB", b / (1024.0 * 1024));
  if (b >= 1024.0) return fmt::format("{:.1f} KiB", b / 1024.0);
  return fmt::format("{} B", bytes);
}

}  // namespace kvq::llama

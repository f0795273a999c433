// The paged quantized KV cache in host memory: the reference implementation (the GPU cache must produce the same
// bytes) and the CPU fallback. Layout: page_layout.hpp and docs/cache-layout.md; bookkeeping: sequence_table.hpp.
//
// Appending is two steps, as in an engine's forward pass: reserve() once per step for the whole batch (allocates
// pages, advances lengths), then write() once per layer with that layer's keys and values. Each write puts tokens
// into the fp16 sinks and window and quantizes the units of `flush_tokens` that leave the window.
#pragma once

#include <algorithm>
#include <cstdint>
#include <span>
#include <string>
#include <tuple>
#include <type_traits>
#include <vector>

#include "kvq/cache/cache_config.hpp"
#include "kvq/cache/layer_tiers.hpp"
#include "kvq/cache/layer_view.hpp"
#include "kvq/cache/page_layout.hpp"
#include "kvq/cache/sequence_table.hpp"
#include "kvq/core/element.hpp"
#include "kvq/core/error.hpp"
#include "kvq/core/float16.hpp"
#include "kvq/core/float_ops.hpp"
#include "kvq/core/rope.hpp"
#include "kvq/host/quantize_tensor.hpp"
#include "kvq/quant/concept.hpp"
#include "kvq/quant/tensor_layout.hpp"

namespace kvq {

// Bytes a cache needs, computed before anything is allocated.
struct CacheMemory {
  std::int64_t pool_bytes = 0;    // quantized pages, all layers
  std::int64_t sink_bytes = 0;    // fp16 sinks, all layers
  std::int64_t window_bytes = 0;  // fp16 windows, all layers
  std::int64_t bookkeeping_bytes = 0;  // device caches: page-table mirror and plan buffer
  std::vector<std::int64_t> layer_bytes;
  int pool_pages = 0;
  [[nodiscard]] std::int64_t total_bytes() const { return pool_bytes + sink_bytes + window_bytes + bookkeeping_bytes; }
};

template <class Tiers>
class HostPagedKVCache {
 public:
  static constexpr int head_dim = Tiers::head_dim;
  static constexpr int flush_tokens = Tiers::flush_tokens;

  // The layer's tier index after defaulting.
  static int tier_of(const CacheConfig& config, int layer) {
    return config.layer_tier.empty() ? 0 : config.layer_tier[static_cast<std::size_t>(layer)];
  }

  // Every sequence at its maximum length (validate_cache_config keeps this below 2^31).
  static int default_pool_pages(const CacheConfig& config) {
    const std::int64_t per_sequence =
        (std::max<std::int64_t>(0, config.max_tokens_per_sequence - config.sink_tokens) + config.page_tokens - 1) /
        config.page_tokens;
    return static_cast<int>(per_sequence * config.max_sequences);
  }

  static CacheMemory required_memory(const CacheConfig& config) {
    detail::validate_cache_config(config, Tiers::count, flush_tokens);
    CacheMemory memory;
    memory.pool_pages = config.pool_pages > 0 ? config.pool_pages : default_pool_pages(config);
    const std::int64_t fp16_row = std::int64_t{config.kv_heads} * head_dim * 2 * 2;  // key + value, 2 bytes each
    const int window_capacity = config.window_tokens + flush_tokens - 1;
    for (int layer = 0; layer < config.layers; ++layer) {
      const std::int64_t page = Tiers::visit(tier_of(config, layer), [&]<class Tier>() {
        return TierPageLayout<Tier>::page_bytes(config.page_tokens, config.kv_heads);
      });
      const std::int64_t pool = page * memory.pool_pages;
      const std::int64_t sinks = fp16_row * config.sink_tokens * config.max_sequences;
      const std::int64_t window = fp16_row * window_capacity * config.max_sequences;
      memory.pool_bytes += pool;
      memory.sink_bytes += sinks;
      memory.window_bytes += window;
      memory.layer_bytes.push_back(pool + sinks + window);
    }
    return memory;
  }

  // Throws kvq::Error(out_of_memory) before allocating anything if the cache needs more than `memory_budget` bytes.
  HostPagedKVCache(CacheConfig config, std::int64_t memory_budget)
      : config_(std::move(config)),
        memory_(required_memory(config_)),
        table_(config_.max_sequences, memory_.pool_pages, geometry(config_)),
        rope_(make_rope_table<head_dim>(config_.rope)) {
    require(memory_.total_bytes() <= memory_budget, ErrorCode::out_of_memory,
            "cache needs " + std::to_string(memory_.total_bytes()) + " bytes (pages " + std::to_string(memory_.pool_bytes) +
                ", sinks " + std::to_string(memory_.sink_bytes) + ", windows " + std::to_string(memory_.window_bytes) +
                ") but the budget is " + std::to_string(memory_budget));
    layers_.resize(static_cast<std::size_t>(config_.layers));
    for (int layer = 0; layer < config_.layers; ++layer) {
      Layer& l = layers_[static_cast<std::size_t>(layer)];
      l.tier = tier_of(config_, layer);
      l.page_bytes = Tiers::visit(l.tier, [&]<class Tier>() {
        return TierPageLayout<Tier>::page_bytes(config_.page_tokens, config_.kv_heads);
      });
      l.pages.assign(static_cast<std::size_t>(l.page_bytes * memory_.pool_pages), 0);
      l.sinks.assign(static_cast<std::size_t>(2 * std::int64_t{config_.max_sequences} * config_.sink_tokens * row_elements()), f16{0});
      l.window.assign(static_cast<std::size_t>(2 * std::int64_t{config_.max_sequences} * window_capacity() * row_elements()), f16{0});
      l.params_set = Tiers::visit(l.tier, [&]<class Tier>() { return !needs_params<Tier>(); });
    }
    params_ = ParamsStorage(static_cast<std::size_t>(config_.layers));
    mirror_.resize(config_.max_sequences, max_pages_per_sequence(config_));
  }

  [[nodiscard]] const CacheConfig& config() const { return config_; }
  [[nodiscard]] const CacheMemory& memory() const { return memory_; }
  [[nodiscard]] const SequenceTable& sequences() const { return table_; }
  [[nodiscard]] const RopeTable<head_dim>& rope_table() const { return rope_; }
  [[nodiscard]] int window_capacity() const { return config_.window_tokens + flush_tokens - 1; }
  // Bytes actually held, which tests compare with required_memory().
  [[nodiscard]] std::int64_t allocated_bytes() const {
    std::int64_t total = 0;
    for (const Layer& l : layers_)
      total += static_cast<std::int64_t>(l.pages.size() + 2 * l.sinks.size() + 2 * l.window.size());
    return total;
  }

  // Policy parameters (codebooks, thresholds, rotation seeds) of one layer; `Tier` must be that layer's tier.
  template <class Tier>
  void set_params(int layer, const typename Tier::KeyPolicy::Params& key, const typename Tier::ValuePolicy::Params& value) {
    check_layer(layer);
    Layer& l = layers_[static_cast<std::size_t>(layer)];
    Tiers::visit(l.tier, [&]<class Actual>() {
      require(std::is_same_v<Actual, Tier>, ErrorCode::invalid_argument,
              "set_params: layer " + std::to_string(layer) + " uses tier " + std::to_string(l.tier) + ", not the one given");
      if constexpr (std::is_same_v<Actual, Tier>) std::get<PerTier<Tier>>(params_[static_cast<std::size_t>(layer)]) = {key, value};
    });
    l.params_set = true;
  }

  AppendPlan reserve(std::span<const int> sequences, std::span<const std::int64_t> counts) {
    require_no_pending_append("append");
    AppendPlan plan = table_.reserve(sequences, counts);
    for (const AppendEntry& e : plan.entries) mirror_.update(table_, e.sequence);
    return plan;
  }

  // Writes one layer's keys and values ([plan.total_tokens, kv_heads, head_dim], rows in plan order).
  template <TensorElement T>
  void write(const AppendPlan& plan, int layer, std::span<const T> keys, std::span<const T> values,
             NonFinitePolicy non_finite = NonFinitePolicy::reject) {
    check_layer(layer);
    Layer& l = layers_[static_cast<std::size_t>(layer)];
    require(plan.generation == table_.generation(), ErrorCode::invalid_argument,
            "write: the plan is not the latest reservation");
    require(l.written < plan.generation, ErrorCode::invalid_argument,
            "write: layer " + std::to_string(layer) + " was already written for this reservation");
    require(l.params_set, ErrorCode::invalid_argument,
            "write: layer " + std::to_string(layer) + " needs set_params() for its policies first");
    const std::int64_t elements = plan.total_tokens * row_elements();
    detail::require_size(keys.size(), elements, "keys");
    detail::require_size(values.size(), elements, "values");
    if (non_finite == NonFinitePolicy::reject) {
      const TensorShape shape{plan.total_tokens, config_.kv_heads, head_dim};
      detail::require_finite(keys, shape);
      detail::require_finite(values, shape);
    }
    Tiers::visit(l.tier, [&]<class Tier>() {
      for (const AppendEntry& entry : plan.entries) write_entry<Tier>(l, layer, entry, keys.data(), values.data());
    });
    l.written = plan.generation;
  }

  // Shortens a sequence (rollback). Quantized tokens that end up inside the fp16 window again come back as their
  // dequantized values; everything else below the new length is untouched.
  void truncate(int sequence, std::int64_t new_length) {
    require_no_pending_append("truncate");
    const std::vector<std::int32_t> old_pages = table_.sequence(sequence).pages;
    const auto t = table_.truncate(sequence, new_length);
    mirror_.update(table_, sequence);
    const std::int64_t restore_end = std::min(t.new_length - config_.sink_tokens, t.old_quantized);
    for (int layer = 0; layer < config_.layers; ++layer) {
      Layer& l = layers_[static_cast<std::size_t>(layer)];
      Tiers::visit(l.tier, [&]<class Tier>() {
        float key[head_dim], value[head_dim];
        for (std::int64_t q = t.new_quantized; q < restore_end; ++q)
          for (int head = 0; head < config_.kv_heads; ++head) {
            read_quantized<Tier>(l, layer, old_pages, q, head, key, value, Domain::original);
            const std::int64_t slot = q % window_capacity();
            for (int c = 0; c < head_dim; ++c) {
              window_key(l, sequence, slot, head)[c] = to_f16(key[c]);
              window_value(l, sequence, slot, head)[c] = to_f16(value[c]);
            }
          }
      });
    }
  }

  void reset(int sequence) {
    require_no_pending_append("reset");
    table_.reset(sequence);
    mirror_.update(table_, sequence);
  }

  // Token `token` of a sequence as attention sees it: fp16 sinks and window exactly, quantized tokens dequantized.
  void read_token(int layer, int sequence, std::int64_t token, float* key, float* value,
                  Domain domain = Domain::original) const {
    check_layer(layer);
    const auto& s = table_.sequence(sequence);
    require(token >= 0 && token < s.length, ErrorCode::invalid_argument,
            "read_token: token " + std::to_string(token) + " of a sequence of " + std::to_string(s.length));
    const Layer& l = layers_[static_cast<std::size_t>(layer)];
    for (int head = 0; head < config_.kv_heads; ++head) {
      float* k = key + head * head_dim;
      float* v = value + head * head_dim;
      if (token < config_.sink_tokens) {
        copy_row(sink_key(l, sequence, token, head), k);
        copy_row(sink_value(l, sequence, token, head), v);
      } else if (token - config_.sink_tokens < s.quantized) {
        Tiers::visit(l.tier, [&]<class Tier>() {
          read_quantized<Tier>(l, layer, s.pages, token - config_.sink_tokens, head, k, v, domain);
        });
      } else {
        const std::int64_t slot = (token - config_.sink_tokens) % window_capacity();
        copy_row(window_key(l, sequence, slot, head), k);
        copy_row(window_value(l, sequence, slot, head), v);
      }
    }
  }

  // Raw storage of one layer, for attention kernels and byte-for-byte comparisons.
  struct LayerStorage {
    std::span<const std::uint8_t> pages;
    std::span<const f16> sinks;   // keys [max_sequences][sink_tokens][kv_heads][head_dim], then values
    std::span<const f16> window;  // keys [max_sequences][window_capacity][kv_heads][head_dim], then values
    std::int64_t page_bytes;
    int tier;
  };
  [[nodiscard]] LayerStorage storage(int layer) const {
    check_layer(layer);
    const Layer& l = layers_[static_cast<std::size_t>(layer)];
    return {l.pages, l.sinks, l.window, l.page_bytes, l.tier};
  }

  // Pointers into this cache's host memory; valid until the cache is destroyed, contents as of the last call.
  [[nodiscard]] CacheLayerView view(int layer) const {
    check_layer(layer);
    const Layer& l = layers_[static_cast<std::size_t>(layer)];
    CacheLayerView v = layer_view<Tiers>(config_, l.tier, l.page_bytes);
    v.pages = l.pages.data();
    v.page_table = mirror_.page_table.data();
    v.lengths = mirror_.lengths.data();
    v.quantized = mirror_.quantized.data();
    v.sink_keys = l.sinks.data();
    v.sink_values = l.sinks.data() + l.sinks.size() / 2;
    v.window_keys = l.window.data();
    v.window_values = l.window.data() + l.window.size() / 2;
    return v;
  }

 private:
  template <class Tier>
  struct PerTier {
    typename Tier::KeyPolicy::Params key{};
    typename Tier::ValuePolicy::Params value{};
  };
  template <class List>
  struct ParamsTuple;
  template <class... Ts>
  struct ParamsTuple<LayerTiers<Ts...>> {
    using type = std::tuple<PerTier<Ts>...>;
  };
  using ParamsStorage = std::vector<typename ParamsTuple<Tiers>::type>;

  template <class Tier>
  static constexpr bool needs_params() {
    return !std::is_empty_v<typename Tier::KeyPolicy::Params> || !std::is_empty_v<typename Tier::ValuePolicy::Params>;
  }

  struct Layer {
    int tier = 0;
    std::int64_t page_bytes = 0;
    std::vector<std::uint8_t> pages;
    std::vector<f16> sinks;
    std::vector<f16> window;
    bool params_set = false;
    std::uint64_t written = 0;  // generation of the last plan written to this layer
  };

  static SequenceGeometry geometry(const CacheConfig& c) {
    return {c.sink_tokens, c.window_tokens, flush_tokens, c.page_tokens, c.max_tokens_per_sequence};
  }
  [[nodiscard]] std::int64_t row_elements() const { return std::int64_t{config_.kv_heads} * head_dim; }
  // An append is complete once every layer has been written; until then lengths already include it, so nothing
  // else may change the sequences. A failed write() changes nothing and can be repeated with valid input.
  void require_no_pending_append(const char* operation) const {
    for (int layer = 0; layer < config_.layers; ++layer)
      require(layers_[static_cast<std::size_t>(layer)].written == table_.generation(), ErrorCode::invalid_argument,
              std::string(operation) + ": layer " + std::to_string(layer) +
                  " has not been written for the current append yet; write every layer first");
  }
  void check_layer(int layer) const {
    require(layer >= 0 && layer < config_.layers, ErrorCode::invalid_argument,
            "layer " + std::to_string(layer) + " is outside [0, " + std::to_string(config_.layers) + ")");
  }

  // fp16 rows of the sinks and window: keys in the first half of each buffer, values in the second.
  f16* sink_key(Layer& l, int s, std::int64_t t, int h) { return l.sinks.data() + fp16_offset(s, config_.sink_tokens, t, h); }
  f16* sink_value(Layer& l, int s, std::int64_t t, int h) { return sink_key(l, s, t, h) + l.sinks.size() / 2; }
  f16* window_key(Layer& l, int s, std::int64_t slot, int h) { return l.window.data() + fp16_offset(s, window_capacity(), slot, h); }
  f16* window_value(Layer& l, int s, std::int64_t slot, int h) { return window_key(l, s, slot, h) + l.window.size() / 2; }
  const f16* sink_key(const Layer& l, int s, std::int64_t t, int h) const { return l.sinks.data() + fp16_offset(s, config_.sink_tokens, t, h); }
  const f16* sink_value(const Layer& l, int s, std::int64_t t, int h) const { return sink_key(l, s, t, h) + l.sinks.size() / 2; }
  const f16* window_key(const Layer& l, int s, std::int64_t slot, int h) const { return l.window.data() + fp16_offset(s, window_capacity(), slot, h); }
  const f16* window_value(const Layer& l, int s, std::int64_t slot, int h) const { return window_key(l, s, slot, h) + l.window.size() / 2; }
  [[nodiscard]] std::int64_t fp16_offset(int sequence, std::int64_t rows_per_sequence, std::int64_t row, int head) const {
    return ((sequence * rows_per_sequence + row) * config_.kv_heads + head) * head_dim;
  }
  static void copy_row(const f16* row, float* out) {
    for (int c = 0; c < head_dim; ++c) out[c] = to_float(row[c]);
  }

  // The fp16 form of an input row as the cache keeps it: keys rotated first when stored post-RoPE.
  template <TensorElement T>
  void cache_form(const T* row, std::int64_t position, bool is_key, f16* out) const {
    float x[head_dim];
    for (int c = 0; c < head_dim; ++c) x[c] = to_float(row[c]);
    if (is_key && config_.key_position == KeyPosition::post_rope) apply_rope<head_dim>(x, position, rope_, config_.rope.style);
    for (int c = 0; c < head_dim; ++c) out[c] = to_f16_saturating(x[c]);
  }

  template <class Tier>
  std::uint8_t* page_head(Layer& l, std::int32_t page, int head) {
    return l.pages.data() + page * l.page_bytes + head * TierPageLayout<Tier>::head_bytes(config_.page_tokens);
  }
  template <class Tier>
  const std::uint8_t* page_head(const Layer& l, std::int32_t page, int head) const {
    return l.pages.data() + page * l.page_bytes + head * TierPageLayout<Tier>::head_bytes(config_.page_tokens);
  }

  template <class Tier, TensorElement T>
  void write_entry(Layer& l, int layer, const AppendEntry& e, const T* keys, const T* values) {
    using Key = typename Tier::KeyPolicy;
    using Value = typename Tier::ValuePolicy;
    using Layout = TierPageLayout<Tier>;
    const auto& params = std::get<PerTier<Tier>>(params_[static_cast<std::size_t>(layer)]);
    const int sinks = config_.sink_tokens;
    const int heads = config_.kv_heads;
    const auto& pages = table_.sequence(e.sequence).pages;
    auto input_row = [&](const T* base, std::int64_t token, int head) {
      return base + ((e.input_offset + token - e.old_length) * heads + head) * head_dim;
    };
    // 1. Sinks.
    for (std::int64_t t = e.old_length; t < std::min<std::int64_t>(e.old_length + e.count, sinks); ++t)
      for (int h = 0; h < heads; ++h) {
        cache_form(input_row(keys, t, h), t, true, sink_key(l, e.sequence, t, h));
        cache_form(input_row(values, t, h), t, false, sink_value(l, e.sequence, t, h));
      }
    // 2. Units leaving the window: gathered from the old window or the new input, in their fp16 cache form.
    std::vector<float> key_tile(static_cast<std::size_t>(flush_tokens) * head_dim), value_tile(key_tile.size());
    for (std::int64_t q0 = e.old_quantized; q0 < e.new_quantized; q0 += flush_tokens) {
      const std::int32_t page = pages[static_cast<std::size_t>(q0 / config_.page_tokens)];
      const std::int64_t in_page = q0 % config_.page_tokens;
      for (int h = 0; h < heads; ++h) {
        for (int r = 0; r < flush_tokens; ++r) {
          const std::int64_t t = sinks + q0 + r;
          f16 key[head_dim], value[head_dim];
          if (t < e.old_length) {
            const std::int64_t slot = (q0 + r) % window_capacity();
            std::copy_n(window_key(l, e.sequence, slot, h), head_dim, key);
            std::copy_n(window_value(l, e.sequence, slot, h), head_dim, value);
          } else {
            cache_form(input_row(keys, t, h), t, true, key);
            cache_form(input_row(values, t, h), t, false, value);
          }
          for (int c = 0; c < head_dim; ++c) {
            key_tile[static_cast<std::size_t>(r) * head_dim + c] = to_float(key[c]);
            value_tile[static_cast<std::size_t>(r) * head_dim + c] = to_float(value[c]);
          }
        }
        std::uint8_t* base = page_head<Tier>(l, page, h);
        for (int b = 0; b < flush_tokens / Key::tokens_per_block; ++b) {
          const std::int64_t block = in_page / Key::tokens_per_block + b;
          quantize_block<Key>(key_tile.data() + b * Key::tokens_per_block * head_dim, Key::tokens_per_block,
                              {base + block * Key::code_bytes_per_block,
                               base + Layout::key_meta_offset(config_.page_tokens) + block * Key::meta_bytes_per_block},
                              params.key);
        }
        for (int b = 0; b < flush_tokens / Value::tokens_per_block; ++b) {
          const std::int64_t block = in_page / Value::tokens_per_block + b;
          quantize_block<Value>(value_tile.data() + b * Value::tokens_per_block * head_dim, Value::tokens_per_block,
                                {base + Layout::value_code_offset(config_.page_tokens) + block * Value::code_bytes_per_block,
                                 base + Layout::value_meta_offset(config_.page_tokens) + block * Value::meta_bytes_per_block},
                                params.value);
        }
      }
    }
    // 3. New tokens that stay in the window (after the units above have read the slots they reuse).
    for (std::int64_t t = std::max<std::int64_t>({e.old_length, sinks + e.new_quantized}); t < e.old_length + e.count; ++t) {
      const std::int64_t slot = (t - sinks) % window_capacity();
      for (int h = 0; h < heads; ++h) {
        cache_form(input_row(keys, t, h), t, true, window_key(l, e.sequence, slot, h));
        cache_form(input_row(values, t, h), t, false, window_value(l, e.sequence, slot, h));
      }
    }
  }

  template <class Tier>
  void read_quantized(const Layer& l, int layer, const std::vector<std::int32_t>& pages, std::int64_t q, int head,
                      float* key, float* value, Domain domain) const {
    using Key = typename Tier::KeyPolicy;
    using Value = typename Tier::ValuePolicy;
    using Layout = TierPageLayout<Tier>;
    const auto& params = std::get<PerTier<Tier>>(params_[static_cast<std::size_t>(layer)]);
    const std::uint8_t* base = page_head<Tier>(l, pages[static_cast<std::size_t>(q / config_.page_tokens)], head);
    const std::int64_t in_page = q % config_.page_tokens;
    const std::int64_t key_block = in_page / Key::tokens_per_block;
    dequantize_row<Key>({base + key_block * Key::code_bytes_per_block,
                         base + Layout::key_meta_offset(config_.page_tokens) + key_block * Key::meta_bytes_per_block},
                        static_cast<int>(in_page % Key::tokens_per_block), key, params.key, domain);
    const std::int64_t value_block = in_page / Value::tokens_per_block;
    dequantize_row<Value>({base + Layout::value_code_offset(config_.page_tokens) + value_block * Value::code_bytes_per_block,
                           base + Layout::value_meta_offset(config_.page_tokens) + value_block * Value::meta_bytes_per_block},
                          static_cast<int>(in_page % Value::tokens_per_block), value, params.value, domain);
  }

  CacheConfig config_;
  CacheMemory memory_;
  SequenceTable table_;
  RopeTable<head_dim> rope_;
  std::vector<Layer> layers_;
  ParamsStorage params_;
  SequenceMirror mirror_;
};

}  // namespace kvq

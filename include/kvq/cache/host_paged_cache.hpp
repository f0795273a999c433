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
#include "kvq/cache/cache_state.hpp"
#include "kvq/cache/layer_tiers.hpp"
#include "kvq/cache/layer_view.hpp"
#include "kvq/cache/page_layout.hpp"
#include "kvq/cache/sequence_table.hpp"
#include "kvq/cache/token_selection.hpp"
#include "kvq/core/element.hpp"
#include "kvq/core/error.hpp"
#include "kvq/core/float16.hpp"
#include "kvq/core/float_ops.hpp"
#include "kvq/core/rope.hpp"
#include "kvq/host/quantize_tensor.hpp"
#include "kvq/quant/concept.hpp"
#include "kvq/quant/tensor_layout.hpp"

namespace kvq {

template <class Tiers>
class HostPagedKVCache {
 public:
  static constexpr int head_dim = Tiers::head_dim;
  static constexpr int flush_tokens = Tiers::flush_tokens;

  static CacheMemory required_memory(const CacheConfig& config) { return CacheState<Tiers>::storage_memory(config); }

  // Throws kvq::Error(out_of_memory) before allocating anything if the cache needs more than `memory_budget` bytes.
  HostPagedKVCache(CacheConfig config, std::int64_t memory_budget)
      : state_(config, required_memory(config), memory_budget) {
    const CacheConfig& c = state_.config();
    layers_.resize(static_cast<std::size_t>(c.layers));
    for (int layer = 0; layer < c.layers; ++layer) {
      Layer& l = layers_[static_cast<std::size_t>(layer)];
      l.tier = state_.tier(layer);
      l.page_bytes = Tiers::visit(l.tier, [&]<class Tier>() { return TierPageLayout<Tier>::page_bytes(c.page_tokens, c.kv_heads); });
      l.pages.assign(static_cast<std::size_t>(l.page_bytes * state_.memory().pool_pages), 0);
      l.sinks.assign(static_cast<std::size_t>(2 * std::int64_t{c.max_sequences} * c.sink_tokens * row_elements()), f16{0});
      l.window.assign(static_cast<std::size_t>(2 * std::int64_t{c.max_sequences} * window_capacity() * row_elements()), f16{0});
    }
  }

  [[nodiscard]] const CacheConfig& config() const { return state_.config(); }
  [[nodiscard]] const CacheMemory& memory() const { return state_.memory(); }
  [[nodiscard]] const SequenceTable& sequences() const { return state_.sequences(); }
  [[nodiscard]] const RopeTable<head_dim>& rope_table() const { return state_.rope_table(); }
  [[nodiscard]] int window_capacity() const { return state_.window_capacity(); }
  // Bytes actually held, which tests compare with required_memory().
  [[nodiscard]] std::int64_t allocated_bytes() const {
    std::int64_t total = 0;
    for (const Layer& l : layers_)
      total += static_cast<std::int64_t>(l.pages.size() + 2 * l.sinks.size() + 2 * l.window.size());
    return total;
  }

  // Bytes of the pool's pages that sequences hold now, all layers: what eviction gives back (allocated_bytes() is
  // the fixed allocation; the pool's free pages are what another sequence can take).
  [[nodiscard]] std::int64_t pages_in_use_bytes() const {
    std::int64_t page_bytes = 0;
    for (const Layer& l : layers_) page_bytes += l.page_bytes;
    return (memory().pool_pages - sequences().free_pages()) * page_bytes;
  }

  // Policy parameters (codebooks, thresholds, rotation seeds) of one layer; `Tier` must be that layer's tier.
  template <class Tier>
  void set_params(int layer, const typename Tier::KeyPolicy::Params& key, const typename Tier::ValuePolicy::Params& value) {
    state_.template set_params<Tier>(layer, key, value);
  }
  template <class Tier>
  [[nodiscard]] const TierParams<Tier>& params(int layer) const {
    return state_.template params<Tier>(layer);
  }

  AppendPlan reserve(std::span<const int> sequences, std::span<const std::int64_t> counts) {
    return state_.reserve(sequences, counts);
  }

  // Writes one layer's keys and values ([plan.total_tokens, kv_heads, head_dim], rows in plan order).
  template <TensorElement T>
  void write(const AppendPlan& plan, int layer, std::span<const T> keys, std::span<const T> values,
             NonFinitePolicy non_finite = NonFinitePolicy::reject) {
    state_.check_write(plan, layer);
    Layer& l = layers_[static_cast<std::size_t>(layer)];
    const std::int64_t elements = plan.total_tokens * row_elements();
    detail::require_size(keys.size(), elements, "keys");
    detail::require_size(values.size(), elements, "values");
    if (non_finite == NonFinitePolicy::reject) {
      const TensorShape shape{plan.total_tokens, config().kv_heads, head_dim};
      detail::require_finite(keys, shape);
      detail::require_finite(values, shape);
    }
    Tiers::visit(l.tier, [&]<class Tier>() {
      for (const AppendEntry& entry : plan.entries) write_entry<Tier>(l, layer, entry, keys.data(), values.data());
    });
    state_.mark_written(plan, layer);
  }

  // Shortens a sequence (rollback). Quantized tokens that end up inside the fp16 window again come back as their
  // dequantized values; everything else below the new length is untouched.
  void truncate(int sequence, std::int64_t new_length) {
    const std::vector<std::int32_t> old_pages = sequences().sequence(sequence).pages;
    const auto t = state_.truncate(sequence, new_length);
    const std::int64_t restore_end = std::min(t.new_length - config().sink_tokens, t.old_quantized);
    for (int layer = 0; layer < config().layers; ++layer) {
      Layer& l = layers_[static_cast<std::size_t>(layer)];
      Tiers::visit(l.tier, [&]<class Tier>() {
        float key[head_dim], value[head_dim];
        for (std::int64_t q = t.new_quantized; q < restore_end; ++q)
          for (int head = 0; head < config().kv_heads; ++head) {
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

  void reset(int sequence) { state_.reset(sequence); }

  // Eviction: keeps exactly the tokens `keep` names for each layer and KV head, in their order, and drops the rest;
  // pages the shorter sequence no longer needs go back to the pool. Kept token j of a row takes position j (the
  // StreamingLLM choice, docs/importance.md): pre-RoPE keys need nothing, since attention rotates by the position
  // at read time; post-RoPE keys that move are rotated back from their old position and forward to the new one.
  // The kept tokens are laid out by the flush rule of a sequence of their count (SequenceTable::compact): a
  // quantized block whose tokens were one whole block before (same order, keys not re-rotated) is copied byte for
  // byte, so per-token policies lose nothing; any other quantized block is re-quantized from its tokens as
  // attention read them (dequantized, or the fp16 window's values), and tokens that land in the fp16 sinks or
  // window are stored as fp16 of what attention read. Everything is validated first: a selection that does not fit
  // (unknown tokens, rows out of order, counts that differ) throws kvq::Error and changes nothing.
  void retain(int sequence, const TokenSelection& keep) {
    const auto& s = sequences().sequence(sequence);
    keep.validate(config().layers, config().kv_heads, s.length);
    if (keep.kept() == s.length) return;  // strictly ascending rows of every token: nothing to drop
    const std::vector<std::int32_t> old_pages = s.pages;
    const std::int64_t old_quantized = s.quantized;
    const auto c = state_.compact(sequence, keep.kept());
    for (int layer = 0; layer < config().layers; ++layer) {
      Layer& l = layers_[static_cast<std::size_t>(layer)];
      Tiers::visit(l.tier, [&]<class Tier>() {
        for (int head = 0; head < config().kv_heads; ++head)
          compact_head<Tier>(l, layer, sequence, head, keep.row(layer, head), old_pages, old_quantized, c.new_quantized);
      });
    }
  }


  // Token `token` of a sequence as attention sees it: fp16 sinks and window exactly, quantized tokens dequantized.
  void read_token(int layer, int sequence, std::int64_t token, float* key, float* value,
                  Domain domain = Domain::original) const {
    state_.check_layer(layer);
    const auto& s = sequences().sequence(sequence);
    const int sinks = config().sink_tokens;
    require(token >= 0 && token < s.length, ErrorCode::invalid_argument,
            "read_token: token " + std::to_string(token) + " of a sequence of " + std::to_string(s.length));
    const Layer& l = layers_[static_cast<std::size_t>(layer)];
    for (int head = 0; head < config().kv_heads; ++head) {
      float* k = key + head * head_dim;
      float* v = value + head * head_dim;
      if (token < sinks) {
        copy_row(sink_key(l, sequence, token, head), k);
        copy_row(sink_value(l, sequence, token, head), v);
      } else if (token - sinks < s.quantized) {
        Tiers::visit(l.tier, [&]<class Tier>() {
          read_quantized<Tier>(l, layer, s.pages, token - sinks, head, k, v, domain);
        });
      } else {
        const std::int64_t slot = (token - sinks) % window_capacity();
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
    state_.check_layer(layer);
    const Layer& l = layers_[static_cast<std::size_t>(layer)];
    return {l.pages, l.sinks, l.window, l.page_bytes, l.tier};
  }

  // Pointers into this cache's host memory; valid until the cache is destroyed, contents as of the last call.
  [[nodiscard]] CacheLayerView view(int layer) const {
    state_.check_layer(layer);
    const Layer& l = layers_[static_cast<std::size_t>(layer)];
    CacheLayerView v = layer_view<Tiers>(config(), l.tier, l.page_bytes);
    v.pages = l.pages.data();
    v.page_table = state_.mirror().page_table.data();
    v.lengths = state_.mirror().lengths.data();
    v.quantized = state_.mirror().quantized.data();
    v.sink_keys = l.sinks.data();
    v.sink_values = l.sinks.data() + l.sinks.size() / 2;
    v.window_keys = l.window.data();
    v.window_values = l.window.data() + l.window.size() / 2;
    return v;
  }

 private:
  struct Layer {
    int tier = 0;
    std::int64_t page_bytes = 0;
    std::vector<std::uint8_t> pages;
    std::vector<f16> sinks;
    std::vector<f16> window;
  };

  [[nodiscard]] std::int64_t row_elements() const { return std::int64_t{config().kv_heads} * head_dim; }

  // fp16 rows of the sinks and window: keys in the first half of each buffer, values in the second.
  f16* sink_key(Layer& l, int s, std::int64_t t, int h) { return l.sinks.data() + fp16_offset(s, config().sink_tokens, t, h); }
  f16* sink_value(Layer& l, int s, std::int64_t t, int h) { return sink_key(l, s, t, h) + l.sinks.size() / 2; }
  f16* window_key(Layer& l, int s, std::int64_t slot, int h) { return l.window.data() + fp16_offset(s, window_capacity(), slot, h); }
  f16* window_value(Layer& l, int s, std::int64_t slot, int h) { return window_key(l, s, slot, h) + l.window.size() / 2; }
  const f16* sink_key(const Layer& l, int s, std::int64_t t, int h) const { return l.sinks.data() + fp16_offset(s, config().sink_tokens, t, h); }
  const f16* sink_value(const Layer& l, int s, std::int64_t t, int h) const { return sink_key(l, s, t, h) + l.sinks.size() / 2; }
  const f16* window_key(const Layer& l, int s, std::int64_t slot, int h) const { return l.window.data() + fp16_offset(s, window_capacity(), slot, h); }
  const f16* window_value(const Layer& l, int s, std::int64_t slot, int h) const { return window_key(l, s, slot, h) + l.window.size() / 2; }
  [[nodiscard]] std::int64_t fp16_offset(int sequence, std::int64_t rows_per_sequence, std::int64_t row, int head) const {
    return ((sequence * rows_per_sequence + row) * config().kv_heads + head) * head_dim;
  }
  static void copy_row(const f16* row, float* out) {
    for (int c = 0; c < head_dim; ++c) out[c] = to_float(row[c]);
  }

  // The fp16 form of an input row as the cache keeps it: keys rotated first when stored post-RoPE.
  template <TensorElement T>
  void cache_form(const T* row, std::int64_t position, bool is_key, f16* out) const {
    float x[head_dim];
    for (int c = 0; c < head_dim; ++c) x[c] = to_float(row[c]);
    if (is_key && config().key_position == KeyPosition::post_rope) apply_rope<head_dim>(x, position, rope_table(), config().rope.style);
    for (int c = 0; c < head_dim; ++c) out[c] = to_f16_saturating(x[c]);
  }

  template <class Tier>
  std::uint8_t* page_head(Layer& l, std::int32_t page, int head) {
    return l.pages.data() + page * l.page_bytes + head * TierPageLayout<Tier>::head_bytes(config().page_tokens);
  }
  template <class Tier>
  const std::uint8_t* page_head(const Layer& l, std::int32_t page, int head) const {
    return l.pages.data() + page * l.page_bytes + head * TierPageLayout<Tier>::head_bytes(config().page_tokens);
  }

  template <class Tier, TensorElement T>
  void write_entry(Layer& l, int layer, const AppendEntry& e, const T* keys, const T* values) {
    using Key = typename Tier::KeyPolicy;
    using Value = typename Tier::ValuePolicy;
    using Layout = TierPageLayout<Tier>;
    const auto& params = state_.template params<Tier>(layer);
    const int sinks = config().sink_tokens;
    const int heads = config().kv_heads;
    const auto& pages = sequences().sequence(e.sequence).pages;
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
      const std::int32_t page = pages[static_cast<std::size_t>(q0 / config().page_tokens)];
      const std::int64_t in_page = q0 % config().page_tokens;
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
                               base + Layout::key_meta_offset(config().page_tokens) + block * Key::meta_bytes_per_block},
                              params.key);
        }
        for (int b = 0; b < flush_tokens / Value::tokens_per_block; ++b) {
          const std::int64_t block = in_page / Value::tokens_per_block + b;
          quantize_block<Value>(value_tile.data() + b * Value::tokens_per_block * head_dim, Value::tokens_per_block,
                                {base + Layout::value_code_offset(config().page_tokens) + block * Value::code_bytes_per_block,
                                 base + Layout::value_meta_offset(config().page_tokens) + block * Value::meta_bytes_per_block},
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

  // One KV head of one layer of an eviction (retain): gathers every kept token (and the raw bytes of blocks that
  // survive whole) before writing anything, since the compacted rows overwrite the rows they come from.
  template <class Tier>
  void compact_head(Layer& l, int layer, int sequence, int head, std::span<const std::int64_t> kept,
                    const std::vector<std::int32_t>& old_pages, std::int64_t old_quantized, std::int64_t new_quantized) {
    using Key = typename Tier::KeyPolicy;
    using Value = typename Tier::ValuePolicy;
    using Layout = TierPageLayout<Tier>;
    const int sinks = config().sink_tokens;
    const int page_tokens = config().page_tokens;
    const auto count = static_cast<std::int64_t>(kept.size());
    const bool post_rope = config().key_position == KeyPosition::post_rope;
    std::vector<float> keys(static_cast<std::size_t>(count) * head_dim), values(keys.size());
    for (std::int64_t j = 0; j < count; ++j) {
      const std::int64_t from = kept[static_cast<std::size_t>(j)];
      float* key = keys.data() + j * head_dim;
      float* value = values.data() + j * head_dim;
      if (from < sinks) {
        copy_row(sink_key(l, sequence, from, head), key);
        copy_row(sink_value(l, sequence, from, head), value);
      } else if (from - sinks < old_quantized) {
        read_quantized<Tier>(l, layer, old_pages, from - sinks, head, key, value, Domain::original);
      } else {
        const std::int64_t slot = (from - sinks) % window_capacity();
        copy_row(window_key(l, sequence, slot, head), key);
        copy_row(window_value(l, sequence, slot, head), value);
      }
      if (post_rope && from != j) {
        apply_inverse_rope<head_dim>(key, from, rope_table(), config().rope.style);
        apply_rope<head_dim>(key, j, rope_table(), config().rope.style);
      }
    }
    // A new quantized block can keep its old bytes if its tokens are one old quantized block, in order (and, for
    // keys, not re-rotated). block_source[b] is that old block's quantized index, or -1.
    auto block_source = [&](int tokens_per_block, std::int64_t first, bool keys_moved_matter) -> std::int64_t {
      const std::int64_t source = kept[static_cast<std::size_t>(sinks + first)] - sinks;
      if (source < 0 || source % tokens_per_block != 0 || source + tokens_per_block > old_quantized) return -1;
      for (int r = 0; r < tokens_per_block; ++r) {
        const std::int64_t from = kept[static_cast<std::size_t>(sinks + first + r)];
        if (from - sinks != source + r) return -1;
        if (keys_moved_matter && post_rope && from != sinks + first + r) return -1;
      }
      return source;
    };
    struct SavedBlock {
      std::int64_t first;  // new quantized index of its first token
      std::vector<std::uint8_t> codes, meta;
    };
    auto save = [&](int tokens_per_block, int code_bytes, int meta_bytes, std::int64_t code_offset, std::int64_t meta_offset,
                    bool is_key, std::vector<SavedBlock>& saved, std::vector<bool>& copied) {
      const std::int64_t blocks = new_quantized / tokens_per_block;
      copied.assign(static_cast<std::size_t>(blocks), false);
      for (std::int64_t b = 0; b < blocks; ++b) {
        const std::int64_t source = block_source(tokens_per_block, b * tokens_per_block, is_key);
        if (source < 0) continue;
        const std::uint8_t* base = page_head<Tier>(l, old_pages[static_cast<std::size_t>(source / page_tokens)], head);
        const std::int64_t block = source % page_tokens / tokens_per_block;
        const std::uint8_t* codes = base + code_offset + block * code_bytes;
        const std::uint8_t* meta = base + meta_offset + block * meta_bytes;
        saved.push_back({b * tokens_per_block, {codes, codes + code_bytes}, {meta, meta + meta_bytes}});
        copied[static_cast<std::size_t>(b)] = true;
      }
    };
    std::vector<SavedBlock> saved_keys, saved_values;
    std::vector<bool> key_copied, value_copied;
    save(Key::tokens_per_block, Key::code_bytes_per_block, Key::meta_bytes_per_block, 0,
         Layout::key_meta_offset(page_tokens), true, saved_keys, key_copied);
    save(Value::tokens_per_block, Value::code_bytes_per_block, Value::meta_bytes_per_block,
         Layout::value_code_offset(page_tokens), Layout::value_meta_offset(page_tokens), false, saved_values, value_copied);

    // Write: sinks, quantized blocks (saved bytes or re-quantized), window.
    const auto& pages = sequences().sequence(sequence).pages;
    auto store_fp16 = [](const float* from, f16* to) {
      for (int c = 0; c < head_dim; ++c) to[c] = to_f16_saturating(from[c]);
    };
    for (std::int64_t j = 0; j < std::min<std::int64_t>(count, sinks); ++j) {
      store_fp16(keys.data() + j * head_dim, sink_key(l, sequence, j, head));
      store_fp16(values.data() + j * head_dim, sink_value(l, sequence, j, head));
    }
    const auto& params = state_.template params<Tier>(layer);
    auto write_blocks = [&]<class Policy>(const std::vector<float>& rows, const std::vector<SavedBlock>& saved,
                                          const std::vector<bool>& copied, std::int64_t code_offset, std::int64_t meta_offset,
                                          const typename Policy::Params& policy_params) {
      constexpr int T = Policy::tokens_per_block;
      std::vector<float> tile(static_cast<std::size_t>(T) * head_dim);
      std::size_t next_saved = 0;
      for (std::int64_t b = 0; b < static_cast<std::int64_t>(copied.size()); ++b) {
        const std::int64_t first = b * T;
        std::uint8_t* base = page_head<Tier>(l, pages[static_cast<std::size_t>(first / page_tokens)], head);
        const std::int64_t block = first % page_tokens / T;
        std::uint8_t* codes = base + code_offset + block * Policy::code_bytes_per_block;
        std::uint8_t* meta = base + meta_offset + block * Policy::meta_bytes_per_block;
        if (copied[static_cast<std::size_t>(b)]) {
          const SavedBlock& s = saved[next_saved++];
          std::copy(s.codes.begin(), s.codes.end(), codes);
          std::copy(s.meta.begin(), s.meta.end(), meta);
        } else {
          const float* source = rows.data() + (sinks + first) * head_dim;
          std::copy(source, source + tile.size(), tile.begin());
          quantize_block<Policy>(tile.data(), T, {codes, meta}, policy_params);
        }
      }
    };
    write_blocks.template operator()<Key>(keys, saved_keys, key_copied, 0, Layout::key_meta_offset(page_tokens), params.key);
    write_blocks.template operator()<Value>(values, saved_values, value_copied, Layout::value_code_offset(page_tokens),
                                            Layout::value_meta_offset(page_tokens), params.value);
    for (std::int64_t j = sinks + new_quantized; j < count; ++j) {
      const std::int64_t slot = (j - sinks) % window_capacity();
      store_fp16(keys.data() + j * head_dim, window_key(l, sequence, slot, head));
      store_fp16(values.data() + j * head_dim, window_value(l, sequence, slot, head));
    }
  }

  template <class Tier>
  void read_quantized(const Layer& l, int layer, const std::vector<std::int32_t>& pages, std::int64_t q, int head,
                      float* key, float* value, Domain domain) const {
    using Key = typename Tier::KeyPolicy;
    using Value = typename Tier::ValuePolicy;
    using Layout = TierPageLayout<Tier>;
    const auto& params = state_.template params<Tier>(layer);
    const std::uint8_t* base = page_head<Tier>(l, pages[static_cast<std::size_t>(q / config().page_tokens)], head);
    const std::int64_t in_page = q % config().page_tokens;
    const std::int64_t key_block = in_page / Key::tokens_per_block;
    dequantize_row<Key>({base + key_block * Key::code_bytes_per_block,
                         base + Layout::key_meta_offset(config().page_tokens) + key_block * Key::meta_bytes_per_block},
                        static_cast<int>(in_page % Key::tokens_per_block), key, params.key, domain);
    const std::int64_t value_block = in_page / Value::tokens_per_block;
    dequantize_row<Value>({base + Layout::value_code_offset(config().page_tokens) + value_block * Value::code_bytes_per_block,
                           base + Layout::value_meta_offset(config().page_tokens) + value_block * Value::meta_bytes_per_block},
                          static_cast<int>(in_page % Value::tokens_per_block), value, params.value, domain);
  }

  CacheState<Tiers> state_;
  std::vector<Layer> layers_;
};

}  // namespace kvq

// What the host and device caches share: the config and its memory accounting, the sequence table and its flat
// mirror (for views), the RoPE table, each layer's tier and policy parameters, and the rules that keep an append
// consistent across layers (reserve once, write every layer once, nothing else in between). The caches add only
// their storage and the code that writes it.
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
#include "kvq/core/error.hpp"
#include "kvq/core/rope.hpp"

namespace kvq {

// Bytes a cache needs, computed before anything is allocated.
struct CacheMemory {
  std::int64_t pool_bytes = 0;         // quantized pages, all layers
  std::int64_t sink_bytes = 0;         // fp16 sinks, all layers
  std::int64_t window_bytes = 0;       // fp16 windows, all layers
  std::int64_t bookkeeping_bytes = 0;  // device caches: page table, lengths and the plan buffer
  std::vector<std::int64_t> layer_bytes;
  int pool_pages = 0;
  [[nodiscard]] std::int64_t total_bytes() const { return pool_bytes + sink_bytes + window_bytes + bookkeeping_bytes; }
};

// The plan of one sequence's append as the device cache's kernels read it (kvq::cuda::PagedKVCache keeps one per
// sequence slot in device memory). Here, not in the device header, so that host code that sizes a device cache
// (the memory planner) counts the same bytes.
struct DeviceAppendEntry {
  int sequence;
  std::int64_t old_length, count, old_quantized, new_quantized, input_offset;
  std::int64_t first_unit;  // index of this entry's first flushed unit among all the plan's units
};

// Device memory a device cache holds besides its storage: the int32 page-table rows, the int64 lengths and
// quantized counts (for views) and the plan buffer, for every sequence slot.
[[nodiscard]] inline std::int64_t device_cache_bookkeeping_bytes(const CacheConfig& config) {
  return std::int64_t{config.max_sequences} * max_pages_per_sequence(config) * 4 +
         std::int64_t{config.max_sequences} * (8 + 8 + static_cast<std::int64_t>(sizeof(DeviceAppendEntry)));
}

// A layer's key and value policy parameters.
template <class Tier>
struct TierParams {
  typename Tier::KeyPolicy::Params key{};
  typename Tier::ValuePolicy::Params value{};
};

template <class Tiers>
class CacheState {
 public:
  static constexpr int head_dim = Tiers::head_dim;
  static constexpr int flush_tokens = Tiers::flush_tokens;

  static int tier_of(const CacheConfig& config, int layer) {
    return config.layer_tier.empty() ? 0 : config.layer_tier[static_cast<std::size_t>(layer)];
  }

  // Pages, sinks and windows of every layer (validate_cache_config keeps page counts below 2^31).
  static CacheMemory storage_memory(const CacheConfig& config) {
    detail::validate_cache_config(config, Tiers::count, flush_tokens);
    CacheMemory memory;
    memory.pool_pages = config.pool_pages > 0 ? config.pool_pages : max_pages_per_sequence(config) * config.max_sequences;
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

  // Throws kvq::Error(out_of_memory), naming every part, if `memory` exceeds `budget`.
  CacheState(CacheConfig config, CacheMemory memory, std::int64_t budget)
      : config_(std::move(config)),
        memory_(std::move(memory)),
        table_(config_.max_sequences, memory_.pool_pages,
               {config_.sink_tokens, config_.window_tokens, flush_tokens, config_.page_tokens,
                config_.max_tokens_per_sequence}),
        rope_(make_rope_table<head_dim>(config_.rope)),
        layers_(static_cast<std::size_t>(config_.layers)),
        params_(static_cast<std::size_t>(config_.layers)) {
    require(memory_.total_bytes() <= budget, ErrorCode::out_of_memory,
            "cache needs " + std::to_string(memory_.total_bytes()) + " bytes (pages " + std::to_string(memory_.pool_bytes) +
                ", sinks " + std::to_string(memory_.sink_bytes) + ", windows " + std::to_string(memory_.window_bytes) +
                ", bookkeeping " + std::to_string(memory_.bookkeeping_bytes) + ") but the budget is " +
                std::to_string(budget));
    for (int layer = 0; layer < config_.layers; ++layer) {
      LayerState& l = layers_[static_cast<std::size_t>(layer)];
      l.tier = tier_of(config_, layer);
      // Policies with parameters (codebooks, thresholds, seeds) must get them before the first write.
      l.params_set = Tiers::visit(l.tier, [&]<class Tier>() {
        return std::is_empty_v<typename Tier::KeyPolicy::Params> && std::is_empty_v<typename Tier::ValuePolicy::Params>;
      });
    }
    mirror_.resize(config_.max_sequences, max_pages_per_sequence(config_));
  }

  [[nodiscard]] const CacheConfig& config() const { return config_; }
  [[nodiscard]] const CacheMemory& memory() const { return memory_; }
  [[nodiscard]] const SequenceTable& sequences() const { return table_; }
  [[nodiscard]] const SequenceMirror& mirror() const { return mirror_; }
  [[nodiscard]] const RopeTable<head_dim>& rope_table() const { return rope_; }
  [[nodiscard]] int window_capacity() const { return config_.window_tokens + flush_tokens - 1; }
  [[nodiscard]] int tier(int layer) const {
    check_layer(layer);
    return layers_[static_cast<std::size_t>(layer)].tier;
  }

  template <class Tier>
  void set_params(int layer, const typename Tier::KeyPolicy::Params& key, const typename Tier::ValuePolicy::Params& value) {
    check_layer(layer);
    LayerState& l = layers_[static_cast<std::size_t>(layer)];
    Tiers::visit(l.tier, [&]<class Actual>() {
      require(std::is_same_v<Actual, Tier>, ErrorCode::invalid_argument,
              "set_params: layer " + std::to_string(layer) + " uses tier " + std::to_string(l.tier) + ", not the one given");
      if constexpr (std::is_same_v<Actual, Tier>) std::get<TierParams<Tier>>(params_[static_cast<std::size_t>(layer)]) = {key, value};
    });
    l.params_set = true;
  }
  template <class Tier>
  [[nodiscard]] const TierParams<Tier>& params(int layer) const {
    return std::get<TierParams<Tier>>(params_[static_cast<std::size_t>(layer)]);
  }

  AppendPlan reserve(std::span<const int> sequences, std::span<const std::int64_t> counts) {
    require_no_pending_append("append");
    AppendPlan plan = table_.reserve(sequences, counts);
    for (const AppendEntry& e : plan.entries) mirror_.update(table_, e.sequence);
    return plan;
  }

  // Everything that must hold before a layer is written for `plan`.
  void check_write(const AppendPlan& plan, int layer) const {
    check_layer(layer);
    const LayerState& l = layers_[static_cast<std::size_t>(layer)];
    require(plan.generation == table_.generation(), ErrorCode::invalid_argument, "write: the plan is not the latest reservation");
    require(l.written < plan.generation, ErrorCode::invalid_argument,
            "write: layer " + std::to_string(layer) + " was already written for this reservation");
    require(l.params_set, ErrorCode::invalid_argument,
            "write: layer " + std::to_string(layer) + " needs set_params() for its policies first");
  }
  void mark_written(const AppendPlan& plan, int layer) { layers_[static_cast<std::size_t>(layer)].written = plan.generation; }

  SequenceTable::Truncation truncate(int sequence, std::int64_t new_length) {
    require_no_pending_append("truncate");
    const auto truncation = table_.truncate(sequence, new_length);
    mirror_.update(table_, sequence);
    return truncation;
  }

  SequenceTable::Compaction compact(int sequence, std::int64_t new_length) {
    require_no_pending_append("evict");
    const auto compaction = table_.compact(sequence, new_length);
    mirror_.update(table_, sequence);
    return compaction;
  }

  void reset(int sequence) {
    require_no_pending_append("reset");
    table_.reset(sequence);
    mirror_.update(table_, sequence);
  }

  void check_layer(int layer) const {
    require(layer >= 0 && layer < config_.layers, ErrorCode::invalid_argument,
            "layer " + std::to_string(layer) + " is outside [0, " + std::to_string(config_.layers) + ")");
  }

 private:
  template <class List>
  struct ParamsTuple;
  template <class... Ts>
  struct ParamsTuple<LayerTiers<Ts...>> {
    using type = std::tuple<TierParams<Ts>...>;
  };

  struct LayerState {
    int tier = 0;
    bool params_set = false;
    std::uint64_t written = 0;  // generation of the last plan written to this layer
  };

  // An append is complete once every layer has been written; until then lengths already include it, so nothing
  // else may change the sequences. A failed write() changes nothing and can be repeated with valid input.
  void require_no_pending_append(const char* operation) const {
    for (int layer = 0; layer < config_.layers; ++layer)
      require(layers_[static_cast<std::size_t>(layer)].written == table_.generation(), ErrorCode::invalid_argument,
              std::string(operation) + ": layer " + std::to_string(layer) +
                  " has not been written for the current append yet; write every layer first");
  }

  CacheConfig config_;
  CacheMemory memory_;
  SequenceTable table_;
  RopeTable<head_dim> rope_;
  std::vector<LayerState> layers_;
  std::vector<typename ParamsTuple<Tiers>::type> params_;
  SequenceMirror mirror_;
};

}  // namespace kvq

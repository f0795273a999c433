// A read-only view of one layer of a paged cache, for attention kernels and other readers: plain pointers (host
// memory for the host cache, device memory for the device cache) and the geometry to find any token without
// copying. docs/cache-layout.md gives the layout these pointers address.
#pragma once

#include <cstdint>

#include <algorithm>
#include <vector>

#include "kvq/cache/cache_config.hpp"
#include "kvq/cache/page_layout.hpp"
#include "kvq/cache/sequence_table.hpp"
#include "kvq/core/float16.hpp"

namespace kvq {

struct CacheLayerView {
  // Pages: page p at pages + p * page_bytes; head h of it at + h * head_bytes; planes at the four offsets.
  const std::uint8_t* pages = nullptr;
  std::int64_t page_bytes = 0, head_bytes = 0;
  std::int64_t key_meta_offset = 0, value_code_offset = 0, value_meta_offset = 0;  // key codes are at offset 0
  // Per sequence: page table row (max_pages_per_sequence pool page ids), length, tokens in pages.
  const std::int32_t* page_table = nullptr;
  const std::int64_t* lengths = nullptr;
  const std::int64_t* quantized = nullptr;
  int max_pages_per_sequence = 0;
  // fp16 rows [max_sequences][rows][kv_heads][head_dim]: sinks (rows = sink_tokens), window (rows = window_capacity).
  const f16* sink_keys = nullptr;
  const f16* sink_values = nullptr;
  const f16* window_keys = nullptr;
  const f16* window_values = nullptr;
  int sink_tokens = 0, window_capacity = 0, page_tokens = 0, kv_heads = 0, head_dim = 0, max_sequences = 0;
  int tier = 0;  // index into the cache's LayerTiers: which key and value policies this layer uses
  KeyPosition key_position = KeyPosition::post_rope;
};

inline int max_pages_per_sequence(const CacheConfig& c) {
  return static_cast<int>((std::max<std::int64_t>(0, c.max_tokens_per_sequence - c.sink_tokens) + c.page_tokens - 1) /
                          c.page_tokens);
}

// The geometry part of a view: everything but the pointers.
template <class Tiers>
CacheLayerView layer_view(const CacheConfig& c, int tier, std::int64_t page_bytes) {
  CacheLayerView v;
  Tiers::visit(tier, [&]<class Tier>() {
    using Layout = TierPageLayout<Tier>;
    v.head_bytes = Layout::head_bytes(c.page_tokens);
    v.key_meta_offset = Layout::key_meta_offset(c.page_tokens);
    v.value_code_offset = Layout::value_code_offset(c.page_tokens);
    v.value_meta_offset = Layout::value_meta_offset(c.page_tokens);
  });
  v.page_bytes = page_bytes;
  v.max_pages_per_sequence = max_pages_per_sequence(c);
  v.sink_tokens = c.sink_tokens;
  v.window_capacity = c.window_tokens + Tiers::flush_tokens - 1;
  v.page_tokens = c.page_tokens;
  v.kv_heads = c.kv_heads;
  v.head_dim = Tiers::head_dim;
  v.max_sequences = c.max_sequences;
  v.tier = tier;
  v.key_position = c.key_position;
  return v;
}

// Flat copies of the sequence table (page-table rows, lengths, quantized counts) in the array form views expose.
struct SequenceMirror {
  std::vector<std::int32_t> page_table;
  std::vector<std::int64_t> lengths, quantized;
  int max_pages = 0;

  void resize(int max_sequences, int pages_per_sequence) {
    max_pages = pages_per_sequence;
    page_table.assign(static_cast<std::size_t>(max_sequences) * static_cast<std::size_t>(pages_per_sequence), -1);
    lengths.assign(static_cast<std::size_t>(max_sequences), 0);
    quantized.assign(static_cast<std::size_t>(max_sequences), 0);
  }
  // Copies one sequence's state; page-table entries past its pages are -1.
  void update(const SequenceTable& table, int sequence) {
    const auto& s = table.sequence(sequence);
    std::int32_t* row = page_table.data() + static_cast<std::size_t>(sequence) * static_cast<std::size_t>(max_pages);
    std::fill(row, row + max_pages, -1);
    std::copy(s.pages.begin(), s.pages.end(), row);
    lengths[static_cast<std::size_t>(sequence)] = s.length;
    quantized[static_cast<std::size_t>(sequence)] = s.quantized;
  }
};

}  // namespace kvq

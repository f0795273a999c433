// Byte layout of one layer's storage (see docs/cache-layout.md for the picture):
//   page pool: pool_pages pages; page p at p * page_bytes; inside a page, head h at h * head_bytes, and inside
//              that four 16-byte-aligned planes: key codes, key meta, value codes, value meta, each holding the
//              page's blocks in token order (block b = quantized tokens [b*T, b*T+T) of the page).
//   sinks:     [max_sequences][sink_tokens][kv_heads][head_dim] fp16, keys then values
//   window:    [max_sequences][window_capacity][kv_heads][head_dim] fp16, keys then values; token t of a sequence
//              lives in slot (t - sink_tokens) mod window_capacity
#pragma once

#include <cstdint>

#include "kvq/core/alignment.hpp"
#include "kvq/core/macros.hpp"
#include "kvq/quant/concept.hpp"

namespace kvq {

template <class Tier>
struct TierPageLayout {
  using Key = typename Tier::KeyPolicy;
  using Value = typename Tier::ValuePolicy;
  static constexpr int head_dim = Key::head_dim;

  KVQ_HOST_DEVICE static constexpr std::int64_t key_code_bytes(int page_tokens) {
    return std::int64_t{page_tokens} / Key::tokens_per_block * Key::code_bytes_per_block;
  }
  KVQ_HOST_DEVICE static constexpr std::int64_t key_meta_bytes(int page_tokens) {
    return std::int64_t{page_tokens} / Key::tokens_per_block * Key::meta_bytes_per_block;
  }
  KVQ_HOST_DEVICE static constexpr std::int64_t value_code_bytes(int page_tokens) {
    return std::int64_t{page_tokens} / Value::tokens_per_block * Value::code_bytes_per_block;
  }
  KVQ_HOST_DEVICE static constexpr std::int64_t value_meta_bytes(int page_tokens) {
    return std::int64_t{page_tokens} / Value::tokens_per_block * Value::meta_bytes_per_block;
  }
  // Plane offsets inside one head's part of a page.
  KVQ_HOST_DEVICE static constexpr std::int64_t key_meta_offset(int p) { return align16(key_code_bytes(p)); }
  KVQ_HOST_DEVICE static constexpr std::int64_t value_code_offset(int p) { return key_meta_offset(p) + align16(key_meta_bytes(p)); }
  KVQ_HOST_DEVICE static constexpr std::int64_t value_meta_offset(int p) { return value_code_offset(p) + align16(value_code_bytes(p)); }
  KVQ_HOST_DEVICE static constexpr std::int64_t head_bytes(int p) { return value_meta_offset(p) + align16(value_meta_bytes(p)); }
  KVQ_HOST_DEVICE static constexpr std::int64_t page_bytes(int page_tokens, int kv_heads) { return kv_heads * head_bytes(page_tokens); }

  // Exact bytes one quantized token costs in this layer, all metadata and page padding included.
  KVQ_HOST_DEVICE static constexpr double bytes_per_quantized_token(int page_tokens, int kv_heads) {
    return static_cast<double>(page_bytes(page_tokens, kv_heads)) / page_tokens;
  }
};

// KV bytes one token of one KV head costs in a tier's policy records (codes and metadata of keys and values, no
// page padding): the per-token cost plan_decode weighs splits by.
template <class Tier>
constexpr double kv_bytes_per_token_head() {
  using K = typename Tier::KeyPolicy;
  using V = typename Tier::ValuePolicy;
  return static_cast<double>(K::code_bytes_per_block + K::meta_bytes_per_block) / K::tokens_per_block +
         static_cast<double>(V::code_bytes_per_block + V::meta_bytes_per_block) / V::tokens_per_block;
}

}  // namespace kvq

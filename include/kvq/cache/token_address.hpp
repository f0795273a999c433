// Where one token of one KV head lives in a CacheLayerView: a sink row, a window row, or a row of a quantized
// block in a page. Shared by every reader (host reference attention, device attention, the dequantize-range
// interop kernel), so the addressing rules of docs/cache-layout.md are written once.
#pragma once

#include <cstdint>

#include "kvq/cache/layer_view.hpp"
#include "kvq/cache/page_layout.hpp"
#include "kvq/core/float16.hpp"
#include "kvq/core/macros.hpp"
#include "kvq/quant/concept.hpp"

namespace kvq {

// Which part of a sequence a token is in. Tokens [0, sinks) are sinks, the next `quantized` tokens are in pages,
// the rest (up to the length) are in the fp16 window.
enum class TokenSegment { sink, quantized, window };

KVQ_HOST_DEVICE KVQ_INLINE TokenSegment token_segment(const CacheLayerView& v, std::int64_t quantized,
                                                      std::int64_t token) {
  if (token < v.sink_tokens) return TokenSegment::sink;
  return token - v.sink_tokens < quantized ? TokenSegment::quantized : TokenSegment::window;
}

// fp16 rows of a sink or window token (keys; values are at the same offset from the value base).
KVQ_HOST_DEVICE KVQ_INLINE std::int64_t sink_row_offset(const CacheLayerView& v, int sequence, std::int64_t token,
                                                         int head) {
  return ((std::int64_t{sequence} * v.sink_tokens + token) * v.kv_heads + head) * v.head_dim;
}
KVQ_HOST_DEVICE KVQ_INLINE std::int64_t window_row_offset(const CacheLayerView& v, int sequence, std::int64_t slot,
                                                           int head) {
  return ((std::int64_t{sequence} * v.window_capacity + slot) * v.kv_heads + head) * v.head_dim;
}
KVQ_HOST_DEVICE KVQ_INLINE std::int64_t window_slot(const CacheLayerView& v, std::int64_t token) {
  return (token - v.sink_tokens) % v.window_capacity;
}

// The key and value blocks holding quantized token `index` (counted from the first token after the sinks) of a
// sequence whose pages are `page_row`, for head `head`, and the token's row inside each block.
template <class Tier>
struct QuantizedTokenRef {
  ConstBlockRef key, value;
  int key_row, value_row;
};

template <class Tier>
KVQ_HOST_DEVICE KVQ_INLINE QuantizedTokenRef<Tier> quantized_token_in_page(const CacheLayerView& v, std::int32_t page,
                                                                           int token_in_page, int head) {
  using K = typename Tier::KeyPolicy;
  using V = typename Tier::ValuePolicy;
  const std::uint8_t* base = v.pages + page * v.page_bytes + head * v.head_bytes;
  const int key_block = token_in_page / K::tokens_per_block, value_block = token_in_page / V::tokens_per_block;
  return {{base + key_block * K::code_bytes_per_block, base + v.key_meta_offset + key_block * K::meta_bytes_per_block},
          {base + v.value_code_offset + value_block * V::code_bytes_per_block,
           base + v.value_meta_offset + value_block * V::meta_bytes_per_block},
          token_in_page % K::tokens_per_block,
          token_in_page % V::tokens_per_block};
}

template <class Tier>
KVQ_HOST_DEVICE KVQ_INLINE QuantizedTokenRef<Tier> quantized_token(const CacheLayerView& v, int sequence,
                                                                   std::int64_t index, int head) {
  const std::int32_t* row = v.page_table + std::int64_t{sequence} * v.max_pages_per_sequence;
  return quantized_token_in_page<Tier>(v, row[index / v.page_tokens], static_cast<int>(index % v.page_tokens), head);
}

}  // namespace kvq

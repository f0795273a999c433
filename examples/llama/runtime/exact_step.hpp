// Scoring a chunk with the semantics of token-by-token decode. Both backends run a chunk by writing all its tokens
// to the cache and then letting every query attend to the cache as it stands; decode would have let query t read
// it right after token t. The two differ only where the chunk moves tokens at or before t from the fp16 sinks or
// window into quantized pages after t arrived (an fp16 window, per-channel key groups waiting in fp16 until
// complete). exact_step() is the longest step from a sequence's current length in which that cannot happen, so a
// backend that cuts its chunks there scores every token exactly as decode would (forward_logits).
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <optional>

#include "kvq/cache/sequence_table.hpp"

namespace kvq::llama {

// The longest step (at most `limit` tokens, at least 1) appended to `sequence` in which every query sees the
// tokens before it stored as token-by-token decode would have them: once a query has fp16 window tokens behind it,
// the step ends before the next token that would change the quantized count. Per-token presets without a window
// quantize each token as it arrives and never end a step early.
[[nodiscard]] inline std::size_t exact_step(const SequenceTable& table, int sequence, std::size_t limit) {
  const SequenceGeometry& geometry = table.geometry();
  const auto& s = table.sequence(sequence);
  std::optional<std::int64_t> required;  // the quantized count every later token of the step must keep
  std::size_t size = 0;
  for (; size < limit; ++size) {
    const std::int64_t length = s.length + static_cast<std::int64_t>(size) + 1;  // after this token
    const std::int64_t quantized = geometry.quantized_after(length, s.quantized);
    if (required && quantized != *required) break;
    const bool window_behind = geometry.sink_tokens + quantized < length;  // fp16 window tokens this query reads
    if (window_behind && !required) required = quantized;
  }
  return std::max<std::size_t>(size, 1);
}

}  // namespace kvq::llama

// Host-side bookkeeping of a paged cache: sequence lengths, how many of their tokens are quantized, page tables,
// and the free-page pool. Shared by the host and device caches, so both allocate the same page ids for the same
// operations. Every mutation validates first and changes nothing when it throws.
#pragma once

#include <algorithm>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "kvq/core/error.hpp"

namespace kvq {

// What one append does to one sequence; the same for every layer.
struct AppendEntry {
  int sequence = 0;
  std::int64_t old_length = 0;     // tokens before the append
  std::int64_t count = 0;          // tokens appended
  std::int64_t old_quantized = 0;  // tokens after the sinks already in pages
  std::int64_t new_quantized = 0;  // ... after the append (a multiple of the flush unit)
  std::int64_t input_offset = 0;   // first row of this sequence in the batch's [tokens, heads, head_dim] input
};

struct AppendPlan {
  std::vector<AppendEntry> entries;
  std::int64_t total_tokens = 0;
  std::int64_t flush_units = 0;  // units of flush_tokens quantized by this append, over all entries
  std::uint64_t generation = 0;  // which reservation this is (a plan is written once per layer)
};

struct SequenceGeometry {
  int sink_tokens = 0;
  int window_tokens = 0;
  int flush_tokens = 1;
  int page_tokens = 1;
  std::int64_t max_tokens = 0;

  [[nodiscard]] int window_capacity() const { return window_tokens + flush_tokens - 1; }
  // Quantized tokens once a sequence of `length` tokens, `quantized` of them in pages, has flushed what it must:
  // the window keeps fewer than window_tokens + flush_tokens tokens.
  [[nodiscard]] std::int64_t quantized_after(std::int64_t length, std::int64_t quantized) const {
    const std::int64_t in_window = std::max<std::int64_t>(0, length - sink_tokens) - quantized;
    if (in_window < window_tokens + flush_tokens) return quantized;
    return quantized + ((in_window - window_tokens - flush_tokens) / flush_tokens + 1) * flush_tokens;
  }
  [[nodiscard]] std::int64_t pages_for(std::int64_t quantized) const { return (quantized + page_tokens - 1) / page_tokens; }
};

class SequenceTable {
 public:
  SequenceTable(int max_sequences, int pool_pages, SequenceGeometry geometry)
      : geometry_(geometry), sequences_(static_cast<std::size_t>(max_sequences)) {
    free_pages_.reserve(static_cast<std::size_t>(pool_pages));
    for (int page = pool_pages - 1; page >= 0; --page) free_pages_.push_back(page);  // page 0 is handed out first
  }

  struct Sequence {
    std::int64_t length = 0;
    std::int64_t quantized = 0;
    std::vector<std::int32_t> pages;
  };

  [[nodiscard]] const SequenceGeometry& geometry() const { return geometry_; }
  [[nodiscard]] int max_sequences() const { return static_cast<int>(sequences_.size()); }
  [[nodiscard]] int free_pages() const { return static_cast<int>(free_pages_.size()); }
  [[nodiscard]] const Sequence& sequence(int index) const {
    check_index(index);
    return sequences_[static_cast<std::size_t>(index)];
  }

  AppendPlan reserve(std::span<const int> sequences, std::span<const std::int64_t> counts) {
    require(sequences.size() == counts.size(), ErrorCode::invalid_argument,
            "append: " + std::to_string(sequences.size()) + " sequences but " + std::to_string(counts.size()) + " token counts");
    AppendPlan plan;
    std::vector<bool> seen(sequences_.size(), false);
    std::int64_t pages_needed = 0;
    for (std::size_t i = 0; i < sequences.size(); ++i) {
      const int index = sequences[i];
      check_index(index);
      require(!seen[static_cast<std::size_t>(index)], ErrorCode::invalid_argument,
              "append: sequence " + std::to_string(index) + " appears twice in one batch");
      seen[static_cast<std::size_t>(index)] = true;
      require(counts[i] >= 0, ErrorCode::invalid_argument,
              "append: negative token count " + std::to_string(counts[i]) + " for sequence " + std::to_string(index));
      const Sequence& s = sequences_[static_cast<std::size_t>(index)];
      require(counts[i] <= geometry_.max_tokens - s.length, ErrorCode::capacity_exceeded,
              "append: sequence " + std::to_string(index) + " holds " + std::to_string(s.length) + " tokens; " +
                  std::to_string(counts[i]) + " more would exceed max_tokens_per_sequence " +
                  std::to_string(geometry_.max_tokens));
      AppendEntry entry{index, s.length, counts[i], s.quantized, geometry_.quantized_after(s.length + counts[i], s.quantized),
                        plan.total_tokens};
      pages_needed += geometry_.pages_for(entry.new_quantized) - static_cast<std::int64_t>(s.pages.size());
      plan.total_tokens += counts[i];
      plan.flush_units += (entry.new_quantized - entry.old_quantized) / geometry_.flush_tokens;
      plan.entries.push_back(entry);
    }
    require(pages_needed <= static_cast<std::int64_t>(free_pages_.size()), ErrorCode::capacity_exceeded,
            "append: needs " + std::to_string(pages_needed) + " new pages but only " +
                std::to_string(free_pages_.size()) + " of the pool are free");
    for (const AppendEntry& entry : plan.entries) {
      Sequence& s = sequences_[static_cast<std::size_t>(entry.sequence)];
      while (static_cast<std::int64_t>(s.pages.size()) < geometry_.pages_for(entry.new_quantized)) {
        s.pages.push_back(free_pages_.back());
        free_pages_.pop_back();
      }
      s.length += entry.count;
      s.quantized = entry.new_quantized;
    }
    plan.generation = ++generation_;
    return plan;
  }

  // What truncate() and compact() did to a sequence: its length and quantized count before and after.
  struct Shortening {
    std::int64_t old_length, new_length, old_quantized, new_quantized;
  };
  using Truncation = Shortening;
  using Compaction = Shortening;

  // Shortens a sequence. Returns the quantized tokens that move back into the window: [new_quantized, old_quantized)
  // is dropped from the pages, and the part of it below the new length must be restored into the window.
  Truncation truncate(int index, std::int64_t new_length) {
    check_index(index);
    Sequence& s = sequences_[static_cast<std::size_t>(index)];
    require(new_length >= 0 && new_length <= s.length, ErrorCode::invalid_argument,
            "truncate: sequence " + std::to_string(index) + " has " + std::to_string(s.length) +
                " tokens; cannot truncate to " + std::to_string(new_length));
    const std::int64_t after_sinks = std::max<std::int64_t>(0, new_length - geometry_.sink_tokens);
    const std::int64_t new_quantized =
        after_sinks >= s.quantized ? s.quantized : after_sinks / geometry_.flush_tokens * geometry_.flush_tokens;
    const Truncation result{s.length, new_length, s.quantized, new_quantized};
    release_pages_beyond(s, geometry_.pages_for(new_quantized));
    s.length = new_length;
    s.quantized = new_quantized;
    return result;
  }

  // Eviction: the sequence keeps `new_length` of its tokens (which ones is the cache's business), stored by the
  // canonical flush rule of a sequence of that length (quantized_after(new_length, 0): the most recent
  // window_tokens .. window_tokens + flush_tokens - 1 tokens in the window). Pages past the new quantized count go
  // back to the pool; pages it needs beyond those the sequence holds (possible only after a truncate left the
  // window short) come from the pool, checked before anything changes.
  Compaction compact(int index, std::int64_t new_length) {
    check_index(index);
    Sequence& s = sequences_[static_cast<std::size_t>(index)];
    require(new_length >= 0 && new_length <= s.length, ErrorCode::invalid_argument,
            "evict: sequence " + std::to_string(index) + " has " + std::to_string(s.length) + " tokens; cannot keep " +
                std::to_string(new_length));
    const std::int64_t new_quantized = geometry_.quantized_after(new_length, 0);
    const std::int64_t pages = geometry_.pages_for(new_quantized);
    const std::int64_t extra = pages - static_cast<std::int64_t>(s.pages.size());
    require(extra <= static_cast<std::int64_t>(free_pages_.size()), ErrorCode::capacity_exceeded,
            "evict: the compacted sequence " + std::to_string(index) + " needs " + std::to_string(extra) +
                " more pages but only " + std::to_string(free_pages_.size()) + " are free");
    const Compaction result{s.length, new_length, s.quantized, new_quantized};
    release_pages_beyond(s, pages);
    while (static_cast<std::int64_t>(s.pages.size()) < pages) {
      s.pages.push_back(free_pages_.back());
      free_pages_.pop_back();
    }
    s.length = new_length;
    s.quantized = new_quantized;
    return result;
  }

  void reset(int index) {
    check_index(index);
    Sequence& s = sequences_[static_cast<std::size_t>(index)];
    release_pages_beyond(s, 0);
    s.length = 0;
    s.quantized = 0;
  }

  [[nodiscard]] std::uint64_t generation() const { return generation_; }

 private:
  void check_index(int index) const {
    require(index >= 0 && index < max_sequences(), ErrorCode::invalid_argument,
            "sequence " + std::to_string(index) + " is outside [0, " + std::to_string(max_sequences()) + ")");
  }
  void release_pages_beyond(Sequence& s, std::int64_t keep) {
    while (static_cast<std::int64_t>(s.pages.size()) > keep) {
      free_pages_.push_back(s.pages.back());
      s.pages.pop_back();
    }
  }

  SequenceGeometry geometry_;
  std::vector<Sequence> sequences_;
  std::vector<std::int32_t> free_pages_;
  std::uint64_t generation_ = 0;
};

}  // namespace kvq

// The paged quantized KV cache in device memory. Same layout, bookkeeping and semantics as the host cache
// (cache/host_paged_cache.hpp), which is its reference: after the same operations both hold the same bytes.
//
// Bookkeeping (lengths, page tables, the free pool) lives on the host in a SequenceTable; reserve() uploads the
// plan and the page-table rows it changed. write() launches, per layer: one staged quantize kernel for the keys and
// one for the values of the units leaving the window (gathered from the old window or the new input, keys rotated
// on the way when stored post-RoPE), then one kernel that puts the remaining new tokens into the sinks and window.
#pragma once

#include <cuda_runtime.h>

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
#include "kvq/core/element.hpp"
#include "kvq/core/rope.hpp"
#include "kvq/cuda/error.cuh"
#include "kvq/cuda/quantize_tensor.cuh"

namespace kvq::cuda {

namespace detail {

using kvq::DeviceAppendEntry;  // the plan of one sequence as the kernels read it (cache_state.hpp)

// One channel of apply_rope(): the same rounded cosine and sine and the same float operations, so an element
// computed alone equals the element of the whole-vector rotation.
template <int HeadDim>
__device__ __forceinline__ float rope_channel(float value, float partner, int channel, std::int64_t position,
                                              const RopeTable<HeadDim>& table, RopeStyle style) {
  const bool interleaved = style == RopeStyle::interleaved;
  const int pair = interleaved ? channel / 2 : channel % (HeadDim / 2);
  const bool first = interleaved ? channel % 2 == 0 : channel < HeadDim / 2;
  double sine, cosine;
  sincos_exact(kvq::detail::double_mul_rn(static_cast<double>(position), table.inverse_frequency[pair]), &sine, &cosine);
  const float s = static_cast<float>(sine), c = static_cast<float>(cosine);
  using kvq::detail::add_rn, kvq::detail::mul_rn, kvq::detail::sub_rn;
  return first ? sub_rn(mul_rn(value, c), mul_rn(partner, s)) : add_rn(mul_rn(partner, s), mul_rn(value, c));
}

template <int HeadDim>
__device__ __forceinline__ int rope_partner(int channel, RopeStyle style) {
  return style == RopeStyle::interleaved ? channel ^ 1 : (channel + HeadDim / 2) % HeadDim;
}

// What every cache kernel needs to know about one layer and one append.
template <int HeadDim>
struct LayerWrite {
  const DeviceAppendEntry* entries;
  int entry_count;
  const std::int32_t* page_table;  // [max_sequences][max_pages]
  int max_pages;
  std::uint8_t* pages;
  std::int64_t page_bytes, head_bytes;
  f16* sinks;   // keys [max_sequences][sink_tokens][heads][d], then values
  f16* window;  // keys [max_sequences][window_capacity][heads][d], then values
  std::int64_t sink_half, window_half;  // elements in the key half of each
  int sink_tokens, window_capacity, page_tokens, heads, max_sequences;
  bool rotate_keys;
  RopeStyle style;
  RopeTable<HeadDim> rope;

  // The last entry whose `Field` is <= value: entries are in plan order, so first_unit and input_offset ascend.
  template <std::int64_t DeviceAppendEntry::*Field>
  __device__ const DeviceAppendEntry& last_entry_at_most(std::int64_t value) const {
    int low = 0, high = entry_count - 1;
    while (low < high) {
      const int mid = (low + high + 1) / 2;
      if (entries[mid].*Field <= value) low = mid; else high = mid - 1;
    }
    return entries[low];
  }
  __device__ const DeviceAppendEntry& entry_of_unit(std::int64_t unit) const {
    return last_entry_at_most<&DeviceAppendEntry::first_unit>(unit);
  }
  __device__ const DeviceAppendEntry& entry_of_row(std::int64_t row) const {
    return last_entry_at_most<&DeviceAppendEntry::input_offset>(row);
  }
};

// The fp16 cache form of input element (row, head, channel), as a float: keys rotated first when stored post-RoPE.
template <int HeadDim, TensorElement T>
__device__ __forceinline__ float cache_form(const T* input, std::int64_t row, int heads, int head, int channel,
                                            std::int64_t position, bool rotate, const LayerWrite<HeadDim>& w) {
  const T* base = input + (row * heads + head) * HeadDim;
  float x = to_float(base[channel]);
  if (rotate) x = rope_channel<HeadDim>(x, to_float(base[rope_partner<HeadDim>(channel, w.style)]), channel, position, w.rope, w.style);
  return to_float(to_f16_saturating(x));
}

// Blocks of policy P (keys or values) in the units leaving the window, for the staged quantize kernel.
template <QuantizationPolicy P, TensorElement T, int Flush>
struct FlushSource {
  LayerWrite<P::head_dim> w;
  const T* input;
  std::int64_t total_units;
  std::int64_t code_offset, meta_offset;  // this policy's planes inside a head's part of a page
  bool is_key;
  static constexpr int blocks_per_unit = Flush / P::tokens_per_block;

  struct Cursor {
    const DeviceAppendEntry* entry;
    std::int64_t quantized;  // quantized index of the block's first row
    int head;
    BlockRef destination;
  };
  __device__ std::int64_t blocks() const { return total_units * w.heads * blocks_per_unit; }
  __device__ Cursor cursor(std::int64_t block) const {
    const std::int64_t unit = block / (w.heads * blocks_per_unit);
    const int head = static_cast<int>(block / blocks_per_unit % w.heads);
    const int sub = static_cast<int>(block % blocks_per_unit);
    const DeviceAppendEntry& e = w.entry_of_unit(unit);
    const std::int64_t quantized = e.old_quantized + (unit - e.first_unit) * Flush + sub * P::tokens_per_block;
    const std::int32_t page = w.page_table[e.sequence * std::int64_t{w.max_pages} + quantized / w.page_tokens];
    const std::int64_t index = quantized % w.page_tokens / P::tokens_per_block;
    std::uint8_t* base = w.pages + page * w.page_bytes + head * w.head_bytes;
    return {&e, quantized, head,
            {base + code_offset + index * P::code_bytes_per_block, base + meta_offset + index * P::meta_bytes_per_block}};
  }
  __device__ int rows(const Cursor&) const { return P::tokens_per_block; }
  __device__ float load(const Cursor& c, int row, int channel) const {
    const std::int64_t q = c.quantized + row;
    const std::int64_t token = w.sink_tokens + q;
    if (token < c.entry->old_length) {  // still in the old window: already in cache form
      const f16* window = w.window + (is_key ? 0 : w.window_half);
      return to_float(window[((c.entry->sequence * std::int64_t{w.window_capacity} + q % w.window_capacity) * w.heads +
                               c.head) * P::head_dim + channel]);
    }
    return cache_form(input, c.entry->input_offset + token - c.entry->old_length, w.heads, c.head, channel, token,
                      is_key && w.rotate_keys, w);
  }
  __device__ BlockRef destination(const Cursor& c) const { return c.destination; }
};

// New tokens that stay in fp16: into the sinks, or the window if they are not already in a flushed unit.
template <int HeadDim, TensorElement T>
__global__ void write_fp16_kernel(LayerWrite<HeadDim> w, const T* __restrict__ keys, const T* __restrict__ values,
                                  std::int64_t total_rows) {
  const std::int64_t items = total_rows * w.heads * HeadDim;
  for (std::int64_t item = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; item < items;
       item += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const int channel = static_cast<int>(item % HeadDim);
    const int head = static_cast<int>(item / HeadDim % w.heads);
    const std::int64_t row = item / (HeadDim * w.heads);
    const DeviceAppendEntry& e = w.entry_of_row(row);
    const std::int64_t token = e.old_length + row - e.input_offset;
    std::int64_t offset;
    f16* key_base;
    std::int64_t value_shift;
    if (token < w.sink_tokens) {
      offset = ((e.sequence * std::int64_t{w.sink_tokens} + token) * w.heads + head) * HeadDim + channel;
      key_base = w.sinks;
      value_shift = w.sink_half;
    } else if (token - w.sink_tokens >= e.new_quantized) {
      const std::int64_t slot = (token - w.sink_tokens) % w.window_capacity;
      offset = ((e.sequence * std::int64_t{w.window_capacity} + slot) * w.heads + head) * HeadDim + channel;
      key_base = w.window;
      value_shift = w.window_half;
    } else {
      continue;  // quantized straight from the input by the flush kernels
    }
    key_base[offset] = to_f16(cache_form(keys, row, w.heads, head, channel, token, w.rotate_keys, w));
    key_base[offset + value_shift] = to_f16(cache_form(values, row, w.heads, head, channel, token, false, w));
  }
}

// Truncation: quantized tokens [first, first + count) of a sequence go back into the window as fp16 of their
// dequantized values (original domain), read through the page-table row as it was before the truncation.
template <class Tier>
__global__ void restore_window_kernel(LayerWrite<Tier::KeyPolicy::head_dim> w, int sequence, std::int64_t first,
                                      std::int64_t count, typename Tier::KeyPolicy::Params key_params,
                                      typename Tier::ValuePolicy::Params value_params) {
  using Key = typename Tier::KeyPolicy;
  using Value = typename Tier::ValuePolicy;
  using Layout = TierPageLayout<Tier>;
  constexpr int d = Key::head_dim;
  for (std::int64_t item = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; item < count * w.heads;
       item += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const std::int64_t q = first + item / w.heads;
    const int head = static_cast<int>(item % w.heads);
    const std::int32_t page = w.page_table[sequence * std::int64_t{w.max_pages} + q / w.page_tokens];
    const std::uint8_t* base = w.pages + page * w.page_bytes + head * w.head_bytes;
    const std::int64_t in_page = q % w.page_tokens;
    float row[d];
    f16* slot = w.window + ((sequence * std::int64_t{w.window_capacity} + q % w.window_capacity) * w.heads + head) * d;
    const std::int64_t key_block = in_page / Key::tokens_per_block;
    dequantize_row<Key>({base + key_block * Key::code_bytes_per_block,
                         base + Layout::key_meta_offset(w.page_tokens) + key_block * Key::meta_bytes_per_block},
                        static_cast<int>(in_page % Key::tokens_per_block), row, key_params, Domain::original);
    for (int c = 0; c < d; ++c) slot[c] = to_f16(row[c]);
    const std::int64_t value_block = in_page / Value::tokens_per_block;
    dequantize_row<Value>({base + Layout::value_code_offset(w.page_tokens) + value_block * Value::code_bytes_per_block,
                           base + Layout::value_meta_offset(w.page_tokens) + value_block * Value::meta_bytes_per_block},
                          static_cast<int>(in_page % Value::tokens_per_block), row, value_params, Domain::original);
    for (int c = 0; c < d; ++c) slot[w.window_half + c] = to_f16(row[c]);
  }
}

}  // namespace detail

template <class Tiers>
class PagedKVCache {
 public:
  static constexpr int head_dim = Tiers::head_dim;
  static constexpr int flush_tokens = Tiers::flush_tokens;

  // Bytes of device memory the cache allocates: the pages, sinks and windows the host cache would hold, plus the
  // page-table rows, lengths and quantized counts (for views) and the plan buffer.
  static CacheMemory required_memory(const CacheConfig& config) {
    CacheMemory memory = CacheState<Tiers>::storage_memory(config);
    memory.bookkeeping_bytes = device_cache_bookkeeping_bytes(config);
    return memory;
  }

  // Refuses, before allocating anything, a cache larger than `memory_budget` or than the device's free memory.
  PagedKVCache(CacheConfig config, std::int64_t memory_budget)
      : state_(config, required_memory(config), memory_budget) {
    const CacheConfig& c = state_.config();
    const std::int64_t total = state_.memory().total_bytes();
    std::size_t free_bytes = 0, total_bytes = 0;
    check(cudaMemGetInfo(&free_bytes, &total_bytes), "cudaMemGetInfo");
    require(total <= static_cast<std::int64_t>(free_bytes), ErrorCode::out_of_memory,
            "device cache needs " + std::to_string(total) + " bytes but the device has " + std::to_string(free_bytes) +
                " free");
    try {
      layers_.resize(static_cast<std::size_t>(c.layers));
      for (int layer = 0; layer < c.layers; ++layer) {
        Layer& l = layers_[static_cast<std::size_t>(layer)];
        l.tier = state_.tier(layer);
        Tiers::visit(l.tier, [&]<class Tier>() {
          l.page_bytes = TierPageLayout<Tier>::page_bytes(c.page_tokens, c.kv_heads);
          l.head_bytes = TierPageLayout<Tier>::head_bytes(c.page_tokens);
        });
        l.pages = allocate<std::uint8_t>(l.page_bytes * state_.memory().pool_pages);
        l.sink_elements = 2 * std::int64_t{c.max_sequences} * c.sink_tokens * row_elements();
        l.window_elements = 2 * std::int64_t{c.max_sequences} * window_capacity() * row_elements();
        l.sinks = allocate<f16>(l.sink_elements);
        l.window = allocate<f16>(l.window_elements);
      }
      const std::int64_t table_entries = std::int64_t{c.max_sequences} * max_pages_per_sequence(c);
      page_table_ = allocate<std::int32_t>(table_entries);
      // -1 (all bits set) past every sequence's pages, as in the host mirror.
      check(cudaMemset(page_table_, 0xFF, static_cast<std::size_t>(table_entries) * 4), "device cache: cudaMemset page table");
      lengths_ = allocate<std::int64_t>(c.max_sequences);
      quantized_ = allocate<std::int64_t>(c.max_sequences);
      entries_ = allocate<detail::DeviceAppendEntry>(c.max_sequences);
    } catch (...) {
      release();
      throw;
    }
  }

  PagedKVCache(const PagedKVCache&) = delete;
  PagedKVCache& operator=(const PagedKVCache&) = delete;
  ~PagedKVCache() { release(); }

  [[nodiscard]] const CacheConfig& config() const { return state_.config(); }
  [[nodiscard]] const CacheMemory& memory() const { return state_.memory(); }
  [[nodiscard]] const SequenceTable& sequences() const { return state_.sequences(); }
  [[nodiscard]] int window_capacity() const { return state_.window_capacity(); }
  [[nodiscard]] std::int64_t allocated_bytes() const { return allocated_; }
  [[nodiscard]] const RopeTable<head_dim>& rope_table() const { return state_.rope_table(); }
  [[nodiscard]] int tier(int layer) const { return state_.tier(layer); }
  template <class Tier>
  [[nodiscard]] const TierParams<Tier>& params(int layer) const {
    return state_.template params<Tier>(layer);
  }

  // Device pointers in the parameters (codebooks, thresholds) must stay valid while the cache is used.
  template <class Tier>
  void set_params(int layer, const typename Tier::KeyPolicy::Params& key, const typename Tier::ValuePolicy::Params& value) {
    state_.template set_params<Tier>(layer, key, value);
  }

  // As HostPagedKVCache::reserve; uploads the plan and the changed page-table rows on `stream`.
  AppendPlan reserve(std::span<const int> sequences, std::span<const std::int64_t> counts, cudaStream_t stream) {
    AppendPlan plan = state_.reserve(sequences, counts);
    host_entries_.clear();
    std::int64_t unit = 0;
    for (const AppendEntry& e : plan.entries) {
      host_entries_.push_back({e.sequence, e.old_length, e.count, e.old_quantized, e.new_quantized, e.input_offset, unit});
      unit += (e.new_quantized - e.old_quantized) / flush_tokens;
    }
    // Pageable sources: the copies are complete (staged) when the calls return, so the host vectors can change.
    if (!host_entries_.empty())
      check(cudaMemcpyAsync(entries_, host_entries_.data(), host_entries_.size() * sizeof(detail::DeviceAppendEntry),
                            cudaMemcpyHostToDevice, stream), "upload append plan");
    upload_mirror(sequences, stream);
    return plan;
  }

  // Writes one layer's keys and values (device memory, [plan.total_tokens, kv_heads, head_dim]). Non-finite inputs
  // are not checked here (that would cost a pass and a synchronisation per layer): they poison the groups that
  // hold them, and the count is added to `poisoned_groups` if it is not null.
  template <TensorElement T>
  void write(const AppendPlan& plan, int layer, const T* keys, const T* values, cudaStream_t stream,
             unsigned long long* poisoned_groups = nullptr) {
    state_.check_write(plan, layer);
    Layer& l = layers_[static_cast<std::size_t>(layer)];
    require(plan.total_tokens == 0 || (keys != nullptr && values != nullptr), ErrorCode::invalid_argument,
            "write: null keys or values");
    if (plan.total_tokens > 0) {
      const auto w = layer_write(l, static_cast<int>(plan.entries.size()));
      Tiers::visit(l.tier, [&]<class Tier>() {
        using Key = typename Tier::KeyPolicy;
        using Value = typename Tier::ValuePolicy;
        using Layout = TierPageLayout<Tier>;
        const auto& params = state_.template params<Tier>(layer);
        if (plan.flush_units > 0) {
          // Keys and values of the units leaving the window, in one launch.
          using KeySource = detail::FlushSource<Key, T, flush_tokens>;
          using ValueSource = detail::FlushSource<Value, T, flush_tokens>;
          const KeySource key_source{w, keys, plan.flush_units, 0, Layout::key_meta_offset(config().page_tokens), true};
          const ValueSource value_source{w, values, plan.flush_units, Layout::value_code_offset(config().page_tokens),
                                         Layout::value_meta_offset(config().page_tokens), false};
          namespace staged = kvq::cuda::detail;
          const int key_ctas = staged::grid_for_tiles(
              plan.flush_units * config().kv_heads * (flush_tokens / Key::tokens_per_block), staged::blocks_per_tile<Key>);
          const int value_ctas = staged::grid_for_tiles(
              plan.flush_units * config().kv_heads * (flush_tokens / Value::tokens_per_block), staged::blocks_per_tile<Value>);
          constexpr int threads = std::max(staged::quantize_threads<Key>, staged::quantize_threads<Value>);
          staged::staged_quantize_pair_kernel<Key, KeySource, Value, ValueSource>
              <<<key_ctas + value_ctas, threads, 0, stream>>>(key_source, params.key, key_ctas, value_source,
                                                             params.value, poisoned_groups);
          check_launch("kvq::cuda::PagedKVCache::write (quantize)");
        }
      });
      // Rows that end in the sinks or the window; none when every new token is quantized straight away.
      std::int64_t fp16_rows = 0;
      for (const AppendEntry& e : plan.entries)
        fp16_rows += std::max<std::int64_t>(0, std::min<std::int64_t>(e.old_length + e.count, config().sink_tokens) - e.old_length) +
                     std::max<std::int64_t>(0, e.old_length + e.count -
                                                   std::max<std::int64_t>(e.old_length, config().sink_tokens + e.new_quantized));
      if (fp16_rows > 0) {
        constexpr int threads = 256;
        detail::write_fp16_kernel<head_dim, T>
            <<<grid_for(plan.total_tokens * config().kv_heads * head_dim, threads), threads, 0, stream>>>(
                w, keys, values, plan.total_tokens);
        check_launch("kvq::cuda::PagedKVCache::write (fp16)");
      }
    }
    state_.mark_written(plan, layer);
  }

  void truncate(int sequence, std::int64_t new_length, cudaStream_t stream) {
    const auto t = state_.truncate(sequence, new_length);
    const std::int64_t restore_end = std::min(t.new_length - config().sink_tokens, t.old_quantized);
    for (int layer = 0; layer < config().layers; ++layer) {
      Layer& l = layers_[static_cast<std::size_t>(layer)];
      if (restore_end > t.new_quantized) {
        Tiers::visit(l.tier, [&]<class Tier>() {
          const auto& params = state_.template params<Tier>(layer);
          const std::int64_t count = restore_end - t.new_quantized;
          detail::restore_window_kernel<Tier><<<grid_for(count * config().kv_heads, 128), 128, 0, stream>>>(
              layer_write(l, 0), sequence, t.new_quantized, count, params.key, params.value);
          check_launch("kvq::cuda::PagedKVCache::truncate");
        });
      }
    }
    // After the restore kernels, which read the rows as they were (stream order).
    upload_mirror(std::span(&sequence, 1), stream);
  }

  void reset(int sequence, cudaStream_t stream) {
    state_.reset(sequence);
    upload_mirror(std::span(&sequence, 1), stream);
  }

  // Device pointers for attention kernels; contents as of the last call on this cache's stream.
  [[nodiscard]] CacheLayerView view(int layer) const {
    state_.check_layer(layer);
    const Layer& l = layers_[static_cast<std::size_t>(layer)];
    CacheLayerView v = layer_view<Tiers>(config(), l.tier, l.page_bytes);
    v.pages = l.pages;
    v.page_table = page_table_;
    v.lengths = lengths_;
    v.quantized = quantized_;
    v.sink_keys = l.sinks;
    v.sink_values = l.sinks + l.sink_elements / 2;
    v.window_keys = l.window;
    v.window_values = l.window + l.window_elements / 2;
    return v;
  }

  // Copies of one layer's storage, for comparisons with the host cache (synchronous).
  struct HostCopy {
    std::vector<std::uint8_t> pages;
    std::vector<f16> sinks, window;
  };
  [[nodiscard]] HostCopy download(int layer) const {
    state_.check_layer(layer);
    const Layer& l = layers_[static_cast<std::size_t>(layer)];
    HostCopy copy{std::vector<std::uint8_t>(static_cast<std::size_t>(l.page_bytes * memory().pool_pages)),
                  std::vector<f16>(static_cast<std::size_t>(l.sink_elements)),
                  std::vector<f16>(static_cast<std::size_t>(l.window_elements))};
    check(cudaDeviceSynchronize(), "download: synchronize");
    check(cudaMemcpy(copy.pages.data(), l.pages, copy.pages.size(), cudaMemcpyDeviceToHost), "download pages");
    check(cudaMemcpy(copy.sinks.data(), l.sinks, copy.sinks.size() * sizeof(f16), cudaMemcpyDeviceToHost), "download sinks");
    check(cudaMemcpy(copy.window.data(), l.window, copy.window.size() * sizeof(f16), cudaMemcpyDeviceToHost), "download window");
    return copy;
  }

 private:
  struct Layer {
    int tier = 0;
    std::int64_t page_bytes = 0, head_bytes = 0, sink_elements = 0, window_elements = 0;
    std::uint8_t* pages = nullptr;
    f16* sinks = nullptr;
    f16* window = nullptr;
  };

  // Uploads the page-table rows of `sequences` and all lengths and quantized counts. Pageable sources: the copies
  // are complete (staged) when the calls return, so the mirror can change afterwards.
  void upload_mirror(std::span<const int> sequences, cudaStream_t stream) {
    const SequenceMirror& mirror = state_.mirror();
    const std::size_t row = static_cast<std::size_t>(mirror.max_pages);
    for (int sequence : sequences)
      check(cudaMemcpyAsync(page_table_ + sequence * row, mirror.page_table.data() + sequence * row,
                            row * sizeof(std::int32_t), cudaMemcpyHostToDevice, stream), "upload page table");
    check(cudaMemcpyAsync(lengths_, mirror.lengths.data(), mirror.lengths.size() * sizeof(std::int64_t),
                          cudaMemcpyHostToDevice, stream), "upload lengths");
    check(cudaMemcpyAsync(quantized_, mirror.quantized.data(), mirror.quantized.size() * sizeof(std::int64_t),
                          cudaMemcpyHostToDevice, stream), "upload quantized counts");
  }
  static int grid_for(std::int64_t items, int threads) {
    const std::int64_t blocks = (items + threads - 1) / threads;
    return static_cast<int>(std::clamp<std::int64_t>(blocks, 1, 65535 * 16));
  }
  [[nodiscard]] std::int64_t row_elements() const { return std::int64_t{config().kv_heads} * head_dim; }

  template <class T>
  T* allocate(std::int64_t count) {
    if (count == 0) return nullptr;
    void* pointer = nullptr;
    const cudaError_t status = cudaMalloc(&pointer, static_cast<std::size_t>(count) * sizeof(T));
    if (status != cudaSuccess) {
      cudaGetLastError();  // clear the sticky allocation error
      throw Error(ErrorCode::out_of_memory, "device cache: cudaMalloc of " + std::to_string(count * sizeof(T)) +
                                                " bytes failed: " + cudaGetErrorString(status));
    }
    allocations_.push_back(pointer);
    allocated_ += count * static_cast<std::int64_t>(sizeof(T));
    check(cudaMemset(pointer, 0, static_cast<std::size_t>(count) * sizeof(T)), "device cache: cudaMemset");
    return static_cast<T*>(pointer);
  }
  void release() noexcept {
    for (void* pointer : allocations_) cudaFree(pointer);
    allocations_.clear();
  }

  detail::LayerWrite<head_dim> layer_write(const Layer& l, int entry_count) const {
    const CacheConfig& c = config();
    return {entries_, entry_count, page_table_, max_pages_per_sequence(c), l.pages, l.page_bytes, l.head_bytes,
            l.sinks, l.window, l.sink_elements / 2, l.window_elements / 2, c.sink_tokens, window_capacity(),
            c.page_tokens, c.kv_heads, c.max_sequences, c.key_position == KeyPosition::post_rope, c.rope.style,
            state_.rope_table()};
  }

  CacheState<Tiers> state_;
  std::vector<Layer> layers_;
  std::int32_t* page_table_ = nullptr;
  std::int64_t* lengths_ = nullptr;
  std::int64_t* quantized_ = nullptr;
  detail::DeviceAppendEntry* entries_ = nullptr;
  std::vector<detail::DeviceAppendEntry> host_entries_;
  std::vector<void*> allocations_;
  std::int64_t allocated_ = 0;
};

}  // namespace kvq::cuda

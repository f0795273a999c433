// The seam between the generation loop and where the model runs. A backend owns the KV cache and its scratch
// buffers and runs tokens through the model; generate() (generate.hpp) only sees this interface.
//
// Backends: the CPU backend (make_cpu_backend in cpu_backend.hpp: BLAS matrix products, kvq::HostPagedKVCache, kvq's
// host attention), which is also the reference for checking others. A GPU backend (cuBLAS, kvq::cuda::PagedKVCache, the
// kvq decode and chunked-prefill attention kernels) goes beside it: a make_gpu_backend() with the same options
// returning this interface, built only when CUDA is enabled. Nothing above this file changes.
#pragma once

#include <algorithm>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "kvq/core/error.hpp"
#include "model/llama_model.hpp"
#include "runtime/kv_calibration.hpp"

namespace kvq::llama {

struct KvCacheOptions {
  std::string preset = "fp16";                             // a kvq preset name (kvq/cache/presets.hpp)
  std::vector<std::pair<int, std::string>> layer_presets;  // per-layer overrides: (layer, preset)
  std::int64_t max_tokens = 4096;                          // capacity of the sequence
  int page_tokens = 256;
  int sink_tokens = 0;    // first tokens kept in fp16, at least (the presets may ask for more)
  int window_tokens = 0;  // most recent tokens kept in fp16, at least (the presets may ask for more)
  // Calibrated codebooks for a preset that takes them (nuq*), instead of its calibration-free defaults; null = the
  // defaults. Shared because the cache's parameters point into it.
  std::shared_ptr<const KvCalibration> calibration;
  // Token eviction (runtime/kv_importance.hpp, "h2o:256" etc.); empty = keep every token. CPU backend only: the GPU
  // backend refuses it.
  std::string evict;
  // Per-token precision tiers (runtime/kv_importance.hpp, "0.1" or "0.1:32"); empty = none. CPU backend only.
  std::string promote;
};

struct KvCacheReport {
  std::string format;                // "int8 x30" or "int8 x28, fp16 x2"
  std::int64_t allocated_bytes = 0;  // what the cache holds, all layers (kvq::CacheMemory::total_bytes)
  double bytes_per_token = 0;        // quantized bytes one token costs, all layers, metadata included
  std::int64_t tokens = 0;           // tokens in the cache now
};

// Token eviction and promoted copies exist only for the host cache; a backend over the device cache calls this
// first and refuses them with this message.
inline void require_host_only_schemes_absent(const KvCacheOptions& kv) {
  require(kv.evict.empty() && kv.promote.empty(), ErrorCode::invalid_argument,
          "--evict and --promote run on the CPU backend only (the device cache cannot compact or hold promoted "
          "copies yet); add --backend cpu");
}

class Backend {
 public:
  virtual ~Backend() = default;
  [[nodiscard]] virtual std::string name() const = 0;
  // Runs `tokens` (one or more) through the model at the next positions of the sequence, appends their keys and
  // values to the cache, and returns the logits of the last one (valid until the next call). The caller chunks
  // long prompts; a chunk attends to every token before it and causally within itself.
  virtual std::span<const float> forward(std::span<const TokenId> tokens) = 0;
  // The same step, with the logits of EVERY token: logits[i * vocabulary + j] is token j's logit after tokens[i]
  // (logits.size() = tokens.size() * vocabulary). This default runs the tokens one at a time through forward(), i.e.
  // token-by-token decode, the exact semantics of a cache (sinks, window and group flushes as each token arrives);
  // a backend that scores a whole chunk at once overrides it and documents how a chunk sees the cache.
  virtual void forward_logits(std::span<const TokenId> tokens, std::span<float> logits) {
    std::size_t offset = 0;
    for (const TokenId& token : tokens) {
      const std::span<const float> row = forward({&token, 1});
      require(logits.size() == tokens.size() * row.size(), ErrorCode::invalid_argument,
              "forward_logits: the output must hold tokens x vocabulary floats");
      std::copy(row.begin(), row.end(), logits.begin() + static_cast<std::ptrdiff_t>(offset));
      offset += row.size();
    }
  }
  // The next sequence (after reset()) starts with a prompt of `tokens` tokens: a backend whose cache compresses the
  // prompt once it is complete (--evict snapkv) does so when its position reaches it. Others ignore it.
  virtual void set_prompt_length(std::int64_t tokens) { static_cast<void>(tokens); }
  // Tokens in the cache, which is also the position the next token takes (with eviction, fewer than the tokens run
  // since reset(): kept tokens are re-positioned contiguously, docs/importance.md).
  [[nodiscard]] virtual std::int64_t position() const = 0;
  [[nodiscard]] virtual KvCacheReport kv_cache() const = 0;
  virtual void reset() = 0;  // empties the sequence
};

}  // namespace kvq::llama

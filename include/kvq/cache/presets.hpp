// Named KV-cache presets: the vocabulary that the evaluation harness, the memory planner and users share
// ("run nuq3", "plan for kivi-2"). A preset is a TYPE, templated on head_dim: a Tier (key and value policies), the
// cache-level settings it needs (fp16 attention sinks, an fp16 window of recent tokens, keys before or after
// RoPE), a one-line description, and the calibration-free default parameters of policies that take runtime data.
// Bits per element always come from the policy types; nothing here re-types a number.
//
// Runtime names (and head_dim) become preset types in visit_preset() and nowhere else; the supported names are
// the list BuiltinPresets below, the supported head_dims PresetHeadDims.
#pragma once

#include <algorithm>
#include <array>
#include <concepts>
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>

#include "kvq/cache/cache_config.hpp"
#include "kvq/cache/cache_state.hpp"
#include "kvq/cache/layer_tiers.hpp"
#include "kvq/cache/sequence_table.hpp"
#include "kvq/core/error.hpp"
#include "kvq/quant/codebook.hpp"
#include "kvq/quant/concept.hpp"
#include "kvq/quant/fp16.hpp"
#include "kvq/quant/fp8.hpp"
#include "kvq/quant/gaussian_codebook.hpp"
#include "kvq/quant/outliers.hpp"
#include "kvq/quant/rotation.hpp"
#include "kvq/quant/uniform.hpp"

namespace kvq {

// The cache-level part of a preset; everything else in a CacheConfig (layers, heads, batch, pages) is the model's
// and the caller's.
struct PresetSettings {
  int sink_tokens = 0;    // first tokens of a sequence kept in fp16
  int window_tokens = 0;  // most recent tokens kept in fp16
  KeyPosition key_position = KeyPosition::post_rope;

  [[nodiscard]] CacheConfig applied_to(CacheConfig config) const {
    config.sink_tokens = sink_tokens;
    config.window_tokens = window_tokens;
    config.key_position = key_position;
    return config;
  }
};

template <class P>
concept KVPreset = requires {
  { P::name } -> std::convertible_to<std::string_view>;
  { P::description } -> std::convertible_to<std::string_view>;
  { P::runtime_params } -> std::convertible_to<std::string_view>;  // what default_params() fills in, and with what
  { P::settings } -> std::convertible_to<PresetSettings>;
  typename P::Tier;
  { P::default_params() } -> std::same_as<TierParams<typename P::Tier>>;
} && QuantizationPolicy<typename P::Tier::KeyPolicy> && QuantizationPolicy<typename P::Tier::ValuePolicy>;

// The cache type list of a one-tier cache that uses preset P in every layer.
template <KVPreset P>
using PresetTiers = LayerTiers<typename P::Tier>;

namespace presets {

template <int HeadDim>
struct Fp16 {
  static constexpr std::string_view name = "fp16";
  static constexpr std::string_view description = "unquantized fp16 keys and values: the baseline";
  static constexpr std::string_view runtime_params = "none";
  using Tier = kvq::Tier<Fp16Policy<HeadDim>, Fp16Policy<HeadDim>>;
  static constexpr PresetSettings settings{};
  static TierParams<Tier> default_params() { return {}; }
};

template <int HeadDim>
struct Int8 {
  static constexpr std::string_view name = "int8";
  static constexpr std::string_view description =
      "8-bit uniform, one asymmetric group per token and head (fp16 scale and zero)";
  static constexpr std::string_view runtime_params = "none";
  using Policy = UniformPolicy<UniformConfig{.bits = 8, .group_size = HeadDim, .head_dim = HeadDim}>;
  using Tier = kvq::Tier<Policy, Policy>;
  static constexpr PresetSettings settings{};
  static TierParams<Tier> default_params() { return {}; }
};

template <int HeadDim>
struct Fp8E4m3 {
  static constexpr std::string_view name = "fp8-e4m3";
  static constexpr std::string_view description = "FP8 E4M3 codes with one fp16 scale per token and head";
  static constexpr std::string_view runtime_params = "none";
  using Policy = Fp8Policy<Fp8Config{.format = Fp8Format::e4m3, .head_dim = HeadDim}>;
  using Tier = kvq::Tier<Policy, Policy>;
  static constexpr PresetSettings settings{};
  static TierParams<Tier> default_params() { return {}; }
};

// llama.cpp's q4_0 block is 32 weights in 16 bytes of 4-bit codes plus one fp16 scale, symmetric: 18 bytes per 32
// elements, 4.5 bits. Same storage here; the rounding differs slightly (kvq's symmetric grid leaves code 0 unused,
// llama.cpp maps the largest magnitude to -8).
template <int HeadDim>
struct Q4_0 {
  static constexpr std::string_view name = "q4_0";
  static constexpr std::string_view description =
      "llama.cpp q4_0 equivalent: 4-bit symmetric, per-token groups of 32, fp16 scale";
  static constexpr std::string_view runtime_params = "none";
  using Policy =
      UniformPolicy<UniformConfig{.bits = 4, .group_size = 32, .head_dim = HeadDim, .symmetric = true}>;
  using Tier = kvq::Tier<Policy, Policy>;
  static constexpr PresetSettings settings{};
  static TierParams<Tier> default_params() { return {}; }
};

// KIVI (Liu et al., 2024): keys per channel (their outliers sit in fixed channels), values per token, group 32,
// asymmetric, the most recent 128 tokens in fp16. The cache quantizes keys after RoPE, as KIVI's cache does.
template <int HeadDim, int Bits>
struct Kivi {
  static_assert(Bits == 2 || Bits == 4, "kvq: the KIVI presets are 2 and 4 bits");
  static constexpr std::string_view name = Bits == 4 ? "kivi-4" : "kivi-2";
  static constexpr std::string_view description =
      Bits == 4 ? "KIVI 4-bit: per-channel keys, per-token values, group 32, fp16 window of 128 tokens"
                : "KIVI 2-bit: per-channel keys, per-token values, group 32, fp16 window of 128 tokens";
  static constexpr std::string_view runtime_params = "none";
  using Key = UniformPolicy<UniformConfig{.bits = Bits, .group_size = 32, .head_dim = HeadDim, .axis = Axis::per_channel}>;
  using Value = UniformPolicy<UniformConfig{.bits = Bits, .group_size = 32, .head_dim = HeadDim}>;
  using Tier = kvq::Tier<Key, Value>;
  static constexpr PresetSettings settings{.window_tokens = 128};
  static TierParams<Tier> default_params() { return {}; }
};

// KVQuant-style (Hooper et al., 2024) with the policies kvq has:
//   keys:   pre-RoPE (KVQuant quantizes keys before RoPE, where outlier channels stay put), per-channel groups of
//           128 tokens, normalised non-uniform codebook, one fp16 outlier per token;
//   values: per-token groups of head_dim, normalised non-uniform codebook, one fp16 outlier per token;
//   the first token in fp16 (KVQuant's attention-sink-aware quantization keeps exactly one).
// One outlier slot is 0.78% of the channels at head_dim 128 and 1.56% at 64: the whole slot count nearest
// KVQuant's 1%. Differences from the paper, because kvq has no policy for them: KVQuant scales keys with offline
// per-channel statistics (here each 128-token group stores its own fp16 scale and offset, 0.25 bits at d = 128),
// stores a variable number of outliers in a sparse matrix (here a fixed capacity per token, 4 bytes a slot), and
// picks key outliers by calibrated per-channel thresholds (here the largest magnitude of each token, which needs no
// calibration; OutlierSelection::thresholds with calibrated Params::lower/upper is the calibrated variant).
// Per-channel groups of 128 make the flush unit 128 tokens: up to 127 pending tokens stay fp16 in the window.
template <int HeadDim, int Bits>
struct Nuq {
  static_assert(Bits >= 2 && Bits <= 4, "kvq: the nuq presets are 2, 3 and 4 bits");
  static constexpr std::string_view name = Bits == 4 ? "nuq4" : Bits == 3 ? "nuq3" : "nuq2";
  static constexpr std::string_view description =
      Bits == 4   ? "KVQuant-style 4-bit codebook: pre-RoPE per-channel keys, per-token values, 1 fp16 outlier/token, 1 sink"
      : Bits == 3 ? "KVQuant-style 3-bit codebook: pre-RoPE per-channel keys, per-token values, 1 fp16 outlier/token, 1 sink"
                  : "KVQuant-style 2-bit codebook: pre-RoPE per-channel keys, per-token values, 1 fp16 outlier/token, 1 sink";
  static constexpr std::string_view runtime_params =
      "key and value codebooks (2^bits ascending centroids in [-1, 1]); default gaussian_codebook for groups of "
      "128 (keys) and head_dim (values); outliers by largest magnitude need no thresholds";
  static constexpr OutlierConfig outliers{.capacity = 1, .selection = OutlierSelection::largest_magnitude};
  using Key = OutlierPolicy<
      CodebookPolicy<CodebookConfig{.bits = Bits, .group_size = 128, .head_dim = HeadDim, .axis = Axis::per_channel}>,
      outliers>;
  using Value = OutlierPolicy<CodebookPolicy<CodebookConfig{.bits = Bits, .group_size = HeadDim, .head_dim = HeadDim}>, outliers>;
  using Tier = kvq::Tier<Key, Value>;
  static constexpr PresetSettings settings{.sink_tokens = 1, .key_position = KeyPosition::pre_rope};
  // Host pointers: a device cache needs the same centroids copied to device memory.
  static TierParams<Tier> default_params() {
    TierParams<Tier> params;
    params.key.inner.centroids = gaussian_codebook<Bits, 128>().data();
    params.value.inner.centroids = gaussian_codebook<Bits, HeadDim>().data();
    return params;
  }
};

// Walsh-Hadamard rotation (QuaRot-style) in front of plain uniform codes: the rotation flattens outlier channels,
// so one asymmetric group per token and head (QuaRot's KV group of 128 at d = 128) is enough.
template <int HeadDim, int Bits>
struct Rotated {
  static_assert(Bits == 3 || Bits == 4, "kvq: the rotated presets are 3 and 4 bits");
  static constexpr std::string_view name = Bits == 4 ? "rot4" : "rot3";
  static constexpr std::string_view description =
      Bits == 4 ? "Hadamard-rotated 4-bit uniform, one asymmetric group per token and head"
                : "Hadamard-rotated 3-bit uniform, one asymmetric group per token and head";
  static constexpr std::string_view runtime_params =
      "rotation seed (default RotationParams' fixed seed; queries and outputs use the same one)";
  using Policy = RotatedPolicy<UniformPolicy<UniformConfig{.bits = Bits, .group_size = HeadDim, .head_dim = HeadDim}>>;
  using Tier = kvq::Tier<Policy, Policy>;
  static constexpr PresetSettings settings{};
  static TierParams<Tier> default_params() { return {}; }
};

}  // namespace presets

// A list of presets for one head_dim, and the name -> type step of the dispatch.
template <KVPreset... Presets>
struct PresetList {
  static constexpr int count = static_cast<int>(sizeof...(Presets));
  static constexpr std::array<std::string_view, sizeof...(Presets)> names{Presets::name...};
  static_assert(
      [] {
        for (std::size_t i = 0; i < names.size(); ++i)
          for (std::size_t j = i + 1; j < names.size(); ++j)
            if (names[i] == names[j]) return false;
        return true;
      }(),
      "kvq: preset names must be unique");

  [[nodiscard]] static bool contains(std::string_view name) {
    return std::find(names.begin(), names.end(), name) != names.end();
  }

  // Place of the preset called `name` in the list: its tier in PresetListTiers. kvq::Error for an unknown name.
  [[nodiscard]] static int index_of(std::string_view name) {
    require(contains(name), ErrorCode::invalid_argument,
            "unknown KV preset \"" + std::string(name) + "\"; known presets: " + joined_names());
    return static_cast<int>(std::find(names.begin(), names.end(), name) - names.begin());
  }

  // Calls visitor.template operator()<Preset>() for the preset called `name`.
  template <class Visitor>
  static decltype(auto) visit(std::string_view name, Visitor&& visitor) {
    require(contains(name), ErrorCode::invalid_argument,
            "unknown KV preset \"" + std::string(name) + "\"; known presets: " + joined_names());
    return visit_from<Presets...>(name, std::forward<Visitor>(visitor));
  }

  [[nodiscard]] static std::string joined_names() {
    std::string result;
    for (std::string_view n : names) result += (result.empty() ? "" : ", ") + std::string(n);
    return result;
  }

 private:
  template <class Head, class... Rest, class Visitor>
  static decltype(auto) visit_from(std::string_view name, Visitor&& visitor) {
    if constexpr (sizeof...(Rest) == 0) {
      return visitor.template operator()<Head>();
    } else {
      if (name == Head::name) return visitor.template operator()<Head>();
      return visit_from<Rest...>(name, std::forward<Visitor>(visitor));
    }
  }
};

// The cache type list whose tier i is preset i of a PresetList: one cache that can give each layer any of them
// (CacheConfig::layer_tier = PresetList::index_of(name)).
template <class List>
struct PresetListTiersOf;
template <KVPreset... Presets>
struct PresetListTiersOf<PresetList<Presets...>> {
  using type = LayerTiers<typename Presets::Tier...>;
};
template <class List>
using PresetListTiers = typename PresetListTiersOf<List>::type;

// Every built-in preset, in the order tools list them.
template <int HeadDim>
using BuiltinPresets =
    PresetList<presets::Fp16<HeadDim>, presets::Int8<HeadDim>, presets::Fp8E4m3<HeadDim>, presets::Q4_0<HeadDim>,
               presets::Kivi<HeadDim, 4>, presets::Kivi<HeadDim, 2>, presets::Nuq<HeadDim, 4>, presets::Nuq<HeadDim, 3>,
               presets::Nuq<HeadDim, 2>, presets::Rotated<HeadDim, 4>, presets::Rotated<HeadDim, 3>>;

// The head_dims the presets are built for (Llama-3 8B/70B/405B/3.2-3B: 128; Llama-3.2-1B, SmolLM2: 64).
using PresetHeadDims = std::integer_sequence<int, 64, 128>;

namespace detail {

template <int... HeadDims>
std::string joined_head_dims(std::integer_sequence<int, HeadDims...>) {
  std::string result;
  ((result += (result.empty() ? "" : ", ") + std::to_string(HeadDims)), ...);
  return result;
}

template <int Head, int... Rest, class Visitor>
decltype(auto) visit_head_dim_from(int head_dim, Visitor&& visitor) {
  if constexpr (sizeof...(Rest) == 0) {
    return visitor.template operator()<Head>();
  } else {
    if (head_dim == Head) return visitor.template operator()<Head>();
    return visit_head_dim_from<Rest...>(head_dim, std::forward<Visitor>(visitor));
  }
}

template <int... HeadDims>
constexpr bool is_preset_head_dim(int head_dim, std::integer_sequence<int, HeadDims...>) {
  return ((head_dim == HeadDims) || ...);
}

template <int... HeadDims, class Visitor>
decltype(auto) visit_head_dim(int head_dim, std::integer_sequence<int, HeadDims...>, Visitor&& visitor) {
  return visit_head_dim_from<HeadDims...>(head_dim, std::forward<Visitor>(visitor));
}

}  // namespace detail

// The names of the built-in presets (the same for every head_dim).
inline constexpr auto preset_names = BuiltinPresets<128>::names;

// The runtime -> compile-time step for head_dim: calls visitor.template operator()<HeadDim>() for `head_dim`, one
// of PresetHeadDims; any other is a kvq::Error listing them.
template <class Visitor>
decltype(auto) visit_preset_head_dim(int head_dim, Visitor&& visitor) {
  require(detail::is_preset_head_dim(head_dim, PresetHeadDims{}), ErrorCode::invalid_argument,
          "KV presets have no instance for head_dim " + std::to_string(head_dim) + "; they are built for head_dim " +
              detail::joined_head_dims(PresetHeadDims{}));
  return detail::visit_head_dim(head_dim, PresetHeadDims{}, std::forward<Visitor>(visitor));
}

// THE runtime -> compile-time step for presets: calls visitor.template operator()<Preset>() for the built-in
// preset called `name` at `head_dim`. Unknown names and head_dims are a kvq::Error listing what exists.
template <class Visitor>
decltype(auto) visit_preset(std::string_view name, int head_dim, Visitor&& visitor) {
  require(BuiltinPresets<128>::contains(name), ErrorCode::invalid_argument,
          "unknown KV preset \"" + std::string(name) + "\"; known presets: " + BuiltinPresets<128>::joined_names());
  return visit_preset_head_dim(head_dim, [&]<int HeadDim>() -> decltype(auto) {
    return BuiltinPresets<HeadDim>::visit(name, visitor);
  });
}

// ---- what a preset costs ----------------------------------------------------------------------------------------

// Tokens of a sequence of `context` tokens that sit in quantized pages, by the cache's own flush rule: the window
// keeps fewer than window_tokens + flush_tokens tokens after the sinks.
template <KVPreset P>
[[nodiscard]] std::int64_t quantized_tokens(std::int64_t context) {
  const SequenceGeometry geometry{P::settings.sink_tokens, P::settings.window_tokens, PresetTiers<P>::flush_tokens, 1, context};
  return geometry.quantized_after(context, 0);
}

namespace detail {
// Average stored bits of a key or value element: quantized tokens at the policies' bits per element (codes,
// metadata and outliers), the sinks and window at 16 bits.
inline double effective_bits(double key_bits, double value_bits, std::int64_t quantized, std::int64_t context) {
  require(context > 0, ErrorCode::invalid_argument,
          "effective bits per element: context must be > 0 tokens, got " + std::to_string(context));
  const auto q = static_cast<double>(quantized);
  const auto fp16 = static_cast<double>(context - quantized);
  return (q * (key_bits + value_bits) + fp16 * 2 * 16.0) / (2.0 * static_cast<double>(context));
}
}  // namespace detail

// Effective bits per stored key/value element of one sequence at `context` tokens: codes, metadata and outliers of
// the quantized tokens, with the fp16 sinks and window amortised over the context. Page padding and pages reserved
// for tokens still in the window are the allocator's business (see the memory planner), not counted here.
template <KVPreset P>
[[nodiscard]] double effective_bits_per_element(std::int64_t context) {
  return detail::effective_bits(P::Tier::KeyPolicy::bits_per_element, P::Tier::ValuePolicy::bits_per_element,
                                context > 0 ? quantized_tokens<P>(context) : 0, context);
}

// A preset's numbers as runtime values, for tools and reports.
struct PresetInfo {
  std::string_view name, description, runtime_params;
  int head_dim = 0;
  double key_bits = 0, value_bits = 0;  // the policies' bits_per_element
  int flush_tokens = 1;                 // tokens quantized together (LayerTiers::flush_tokens)
  PresetSettings settings;

  [[nodiscard]] double mean_bits() const { return 0.5 * (key_bits + value_bits); }
};

template <KVPreset P>
[[nodiscard]] PresetInfo preset_info() {
  using Tier = typename P::Tier;
  return {P::name,
          P::description,
          P::runtime_params,
          Tier::KeyPolicy::head_dim,
          Tier::KeyPolicy::bits_per_element,
          Tier::ValuePolicy::bits_per_element,
          PresetTiers<P>::flush_tokens,
          P::settings};
}

[[nodiscard]] inline PresetInfo preset_info(std::string_view name, int head_dim) {
  return visit_preset(name, head_dim, [&]<class P>() { return preset_info<P>(); });
}

[[nodiscard]] inline double effective_bits_per_element(std::string_view name, int head_dim, std::int64_t context) {
  return visit_preset(name, head_dim, [&]<class P>() { return effective_bits_per_element<P>(context); });
}

}  // namespace kvq

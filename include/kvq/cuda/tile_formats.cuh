// Page formats the tensor-core attention kernel reads directly: how one lane turns its words of a token's codes
// into fp16 operand registers. A format is a `TileFormat<Policy>` specialisation with `supported = true`;
// every other policy (per-channel, 3-bit, codebooks, fp8, outliers, rotation, user policies) uses the generic
// kernel. Supported: `Fp16Policy` and per-token `UniformPolicy` with 2, 4 or 8 bits (values: fp16 scales).
//
// Keys: the kernel scores Q.K^T with exact integer codes and applies each group's scale and zero point in fp32
// after the mma, so the key path adds no rounding. Integer keys (`integer_keys`) expand a key word to
// `octets_per_word` registers of four 8-bit codes for the integer mma (key_octet_channel says which codes);
// fp16 keys give `codes_per_word / 2` registers of two fp16 channels (key_channel). The order is whatever the bit
// tricks give cheaply, and the query operand is laid out in the same order.
// Values: a lane holds two tokens side by side (the mma wants token pairs), so value words of two tokens expand
// to registers of (token a, token b) of one channel, channels in order, dequantized to fp16 with each token's
// scale and zero point.
#pragma once

#include <cuda_fp16.h>

#include <cstdint>

#include "kvq/core/float16.hpp"
#include "kvq/cuda/mma_fragments.cuh"
#include "kvq/quant/fp16.hpp"
#include "kvq/quant/uniform.hpp"

namespace kvq::cuda::detail {

template <class Policy>
struct TileFormat {
  static constexpr bool supported = false;
};

// Raw metadata fields as loaded (decoded only when used, so loads stay in flight across a tile's compute).
struct KeyMetaRaw {
  std::uint32_t scale, zero;
};
struct KeyScale {
  float scale, zero;  // score contribution = scale * (q . codes) + zero * sum(q)
};

template <int HeadDim>
struct TileFormat<Fp16Policy<HeadDim>> {
  static constexpr bool supported = true;
  static constexpr bool value_supported = true;
  static constexpr int bits = 16;
  static constexpr int codes_per_word = 2;
  static constexpr int group_size = HeadDim;  // one "group" with scale 1
  static constexpr int key_groups = 1;

  static constexpr bool integer_keys = false;  // fp16 keys enter the fp16 mma as they are
  __host__ __device__ static constexpr int key_channel(int pair, int half) { return 2 * pair + half; }
  __device__ __forceinline__ static void key_pairs(std::uint32_t w, std::uint32_t (&out)[1]) { out[0] = w; }
  __device__ __forceinline__ static KeyMetaRaw load_key_meta(const std::uint8_t*, int) { return {0, 0}; }
  __device__ __forceinline__ static KeyScale key_scale(KeyMetaRaw) { return {1.0f, 0.0f}; }

  __device__ __forceinline__ static std::uint32_t load_value_meta(const std::uint8_t*, int) { return 0; }
  __device__ __forceinline__ static void value_pairs(std::uint32_t a, std::uint32_t b, std::uint32_t, std::uint32_t,
                                                     std::uint32_t (&out)[2]) {
    out[0] = __byte_perm(a, b, 0x5410);
    out[1] = __byte_perm(a, b, 0x7632);
  }
};

template <UniformConfig Config>
  requires(Config.axis == Axis::per_token && Config.bits != 3)
struct TileFormat<UniformPolicy<Config>> {
  using P = UniformPolicy<Config>;
  using Scale = typename P::Scale;
  static constexpr bool supported = true;
  static constexpr bool value_supported = Config.scale_type == ScaleType::f16;  // values are dequantized in fp16
  static constexpr int bits = Config.bits;
  static constexpr int codes_per_word = 32 / bits;
  static constexpr int group_size = Config.group_size;
  static constexpr int key_groups = Config.head_dim / Config.group_size;
  static constexpr int offset = Config.symmetric ? P::symmetric_offset : 0;

  // Register `pair` of a word holds codes (key_channel(pair, 0), key_channel(pair, 1)) counted from the word's
  // first code: 8-bit words give codes (0,2), (1,3); 4-bit (0,4) ... (3,7); 2-bit (0,8) ... (7,15).
  __host__ __device__ static constexpr int key_channel(int pair, int half) {
    constexpr int pairs_per_word = codes_per_word / 2;
    return codes_per_word * (pair / pairs_per_word) + pair % pairs_per_word + pairs_per_word * half;
  }

  // Every field of one word of two tokens' codes (`x` holds token a in its low, token b in its high 16 bits, or
  // one token's codes k and k + codes_per_word/2), in the order key_channel and value_pairs document.
  template <int Offset, int N>
  __device__ __forceinline__ static void expand(std::uint32_t x, std::uint32_t (&out)[N], int first) {
    if constexpr (bits == 8) {
      out[first] = half2_bits(magic_codes<0xFFu, 1, Offset>(x));
      out[first + 1] = half2_bits(magic_codes<0xFFu, 1, Offset>(x >> 8));
    } else if constexpr (bits == 4) {
      out[first] = half2_bits(magic_codes<0x0Fu, 1, Offset>(x));
      out[first + 1] = half2_bits(magic_codes<0xF0u, 16, Offset>(x));
      out[first + 2] = half2_bits(magic_codes<0x0Fu, 1, Offset>(x >> 8));
      out[first + 3] = half2_bits(magic_codes<0xF0u, 16, Offset>(x >> 8));
    } else {
      out[first] = half2_bits(magic_codes<0x03u, 1, Offset>(x));
      out[first + 1] = half2_bits(magic_codes<0x0Cu, 4, Offset>(x));
      out[first + 2] = half2_bits(magic_codes<0x30u, 16, Offset>(x));
      out[first + 3] = half2_bits(magic_codes<0xC0u, 64, Offset>(x));
      out[first + 4] = half2_bits(magic_codes<0x03u, 1, Offset>(x >> 8));
      out[first + 5] = half2_bits(magic_codes<0x0Cu, 4, Offset>(x >> 8));
      out[first + 6] = half2_bits(magic_codes<0x30u, 16, Offset>(x >> 8));
      out[first + 7] = half2_bits(magic_codes<0xC0u, 64, Offset>(x >> 8));
    }
  }

  __device__ __forceinline__ static void key_pairs(std::uint32_t w, std::uint32_t (&out)[codes_per_word / 2]) {
    expand<0>(w, out, 0);  // exact codes; the zero point (or the symmetric offset) is applied in fp32
  }

  // Integer keys (the 8-bit integer mma): a key word expands to `octets_per_word` registers of four unsigned 8-bit
  // codes, one mask (and shift) each; byte j of register i holds code key_octet_channel(i, j) of the word.
  static constexpr bool integer_keys = true;
  static constexpr int octets_per_word = codes_per_word / 4;
  __host__ __device__ static constexpr int key_octet_channel(int octet, int byte) {
    return bits == 8 ? byte : bits == 4 ? 2 * byte + octet : 4 * byte + octet;
  }
  __device__ __forceinline__ static void key_octets(std::uint32_t w, std::uint32_t (&out)[octets_per_word]) {
    if constexpr (bits == 8) {
      out[0] = w;
    } else if constexpr (bits == 4) {
      out[0] = w & 0x0F0F0F0Fu;
      out[1] = (w >> 4) & 0x0F0F0F0Fu;
    } else {
#pragma unroll
      for (int k = 0; k < 4; ++k) out[k] = (w >> (2 * k)) & 0x03030303u;
    }
  }

  __device__ __forceinline__ static std::uint32_t field_bits(const std::uint8_t* meta, int index) {
    using T = typename Scale::type;
    const T value = reinterpret_cast<const T*>(meta)[index];
    if constexpr (sizeof(T) == 4) {
      return __float_as_uint(value);
    } else {
      return value.bits;
    }
  }
  __device__ __forceinline__ static KeyMetaRaw load_key_meta(const std::uint8_t* meta, int group) {
    return {field_bits(meta, group), Config.symmetric ? 0u : field_bits(meta, P::quantization_groups + group)};
  }
  __device__ __forceinline__ static KeyScale key_scale(KeyMetaRaw raw) {
    using T = typename Scale::type;
    auto decode = [](std::uint32_t b) {
      if constexpr (sizeof(T) == 4) {
        return __uint_as_float(b);
      } else {
        return Scale::decode(T{static_cast<std::uint16_t>(b)});
      }
    };
    const float scale = decode(raw.scale);
    return {scale, Config.symmetric ? -static_cast<float>(offset) * scale : decode(raw.zero)};
  }

  // Value metadata of one token for one group: fp16 scale in the low, fp16 zero point in the high half.
  __device__ __forceinline__ static std::uint32_t load_value_meta(const std::uint8_t* meta, int group) {
    return field_bits(meta, group) | (Config.symmetric ? 0u : field_bits(meta, P::quantization_groups + group) << 16);
  }
  // Word w of tokens a and b (same channels) -> codes_per_word registers (a, b) of consecutive channels.
  __device__ __forceinline__ static void value_pairs(std::uint32_t a, std::uint32_t b, std::uint32_t meta_a,
                                                     std::uint32_t meta_b, std::uint32_t (&out)[codes_per_word]) {
    expand<offset>(__byte_perm(a, b, 0x5410), out, 0);
    expand<offset>(__byte_perm(a, b, 0x7632), out, codes_per_word / 2);
    const __half2 scale = bits_half2(__byte_perm(meta_a, meta_b, 0x5410));
    const __half2 zero = bits_half2(__byte_perm(meta_a, meta_b, 0x7632));
#pragma unroll
    for (int i = 0; i < codes_per_word; ++i)
      out[i] = half2_bits(Config.symmetric ? __hmul2(bits_half2(out[i]), scale) : __hfma2(bits_half2(out[i]), scale, zero));
  }
};

}  // namespace kvq::cuda::detail

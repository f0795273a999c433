#include "runtime/cpu_backend.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <limits>
#include <map>
#include <optional>

#include "kvq/cache/eviction.hpp"
#include "kvq/cache/host_paged_cache.hpp"
#include "kvq/cache/importance_scores.hpp"
#include "kvq/cache/promoted_tokens.hpp"
#include "kvq/host/decode_attention.hpp"
#include "kvq/host/promoted_attention.hpp"
#include "runtime/calibrated_params.hpp"
#include "runtime/cpu_math.hpp"
#include "runtime/exact_step.hpp"
#include "runtime/kv_importance.hpp"
#include "runtime/kv_presets.hpp"
#include "runtime/prefill_attention.hpp"

namespace kvq::llama {
namespace {

template <KVPreset Preset, class Tiers>
class CpuBackend final : public Backend {
 public:
  static constexpr int head_dim = Tiers::head_dim;

  CpuBackend(const LlamaModel& model, const CacheConfig& cache_config,
             std::shared_ptr<const KvCalibration> calibration, KvObserver observer, EvictionScheme scheme,
             PromotionScheme promotion)
      : model_(model),
        cache_(cache_config, std::numeric_limits<std::int64_t>::max()),
        calibration_(std::move(calibration)),
        observer_(std::move(observer)),
        scheme_(scheme),
        promotion_(promotion) {
    if (promotion_.enabled()) promoted_.emplace(cache_config, promotion_.fraction);
    if (scheme_.needs_importance() || promotion_.enabled())
      importance_.emplace(cache_config.layers, 1, cache_config.kv_heads, cache_config.max_tokens_per_sequence);
    logits_.resize(static_cast<std::size_t>(model.config.vocabulary));
    // The preset's layers get its calibration-free parameters (codebooks, rotation seed), or the calibrated
    // codebooks of their layer; fp16 and int8 have none.
    const TierParams<typename Preset::Tier> defaults = Preset::default_params();
    for (int layer = 0; layer < cache_config.layers; ++layer)
      if (cache_.storage(layer).tier == tier_of<Preset>(LayerFormat::preset)) {
        const TierParams<typename Preset::Tier> params =
            calibration_ ? calibrated_params<Preset>(defaults, *calibration_, layer, model.config) : defaults;
        cache_.template set_params<typename Preset::Tier>(layer, params.key, params.value);
      }
  }

  [[nodiscard]] std::string name() const override { return "cpu (OpenBLAS, kvq host cache and host attention)"; }
  [[nodiscard]] std::int64_t position() const override { return cache_.sequences().sequence(0).length; }

  [[nodiscard]] KvCacheReport kv_cache() const override {
    std::vector<int> layer_tier;
    for (int layer = 0; layer < model_.config.layers; ++layer) layer_tier.push_back(cache_.storage(layer).tier);
    KvCacheReport report = kv_cache_format<Preset>(layer_tier, cache_.config().page_tokens, cache_.config().kv_heads);
    report.allocated_bytes = cache_.memory().total_bytes();
    report.tokens = position();
    if (scheme_.enabled()) report.format += ", evict " + scheme_.describe();
    if (promoted_) report.format += ", " + promotion_.describe();
    return report;
  }

  void reset() override {
    cache_.reset(0);
    if (importance_) importance_->clear(0);
    if (promoted_) promoted_->reset(0);
    consumed_ = 0;
    prompt_length_ = 0;
  }

  void set_prompt_length(std::int64_t tokens) override {
    require(tokens >= 0, ErrorCode::invalid_argument, "set_prompt_length: negative prompt length");
    prompt_length_ = tokens;
  }

  std::span<const float> forward(std::span<const TokenId> tokens) override {
    require(!tokens.empty(), ErrorCode::invalid_argument, "forward: no tokens");
    std::size_t size = 0;  // of the last step, whose hidden states hidden_ holds
    for (std::size_t begin = 0; begin < tokens.size(); begin += size) {
      size = eviction_step(tokens.size() - begin);
      step(tokens.subspan(begin, size));
    }
    const LlamaConfig& c = model_.config;
    const float* last = hidden_.data() + (static_cast<std::int64_t>(size) - 1) * c.hidden;
    rms_norm(last, model_.weights.output_norm.data(), 1, c.hidden, c.rms_epsilon, normed_.data());
    project(model_.weights.logits_matrix(), normed_.data(), 1, logits_.data());
    return logits_;
  }

  // One token is decode (forward()); more are chunks cut where decode semantics need it (runtime/exact_step.hpp).
  void forward_logits(std::span<const TokenId> tokens, std::span<float> logits) override {
    const LlamaConfig& c = model_.config;
    require(logits.size() == tokens.size() * static_cast<std::size_t>(c.vocabulary), ErrorCode::invalid_argument,
            "forward_logits: the output must hold tokens x vocabulary floats");
    if (tokens.size() == 1) {
      const std::span<const float> row = forward(tokens);
      std::copy(row.begin(), row.end(), logits.begin());
      return;
    }
    // Steps that end where the cache would flush: every query then sees the cache exactly as in token-by-token
    // decode (cpu_backend.hpp), at the speed of chunks.
    for (std::size_t begin = 0; begin < tokens.size();) {
      const std::size_t size = eviction_step(exact_step(cache_.sequences(), 0, tokens.size() - begin));
      step(tokens.subspan(begin, size));
      const auto count = static_cast<std::int64_t>(size);
      rms_norm(hidden_.data(), model_.weights.output_norm.data(), count, c.hidden, c.rms_epsilon, normed_.data());
      project(model_.weights.logits_matrix(), normed_.data(), count,
              logits.data() + begin * static_cast<std::size_t>(c.vocabulary));
      begin += size;
    }
  }

 private:
  // Eviction (runtime/kv_importance.hpp). streaming/h2o: a step never takes the cache past the budget, so while
  // there is room a step may be a chunk, and once the cache is full every step is one token, preceded by the
  // eviction of one (exactly what token-by-token decode with that budget does). snapkv: steps end where the
  // observation window (the prompt's last W tokens) starts and where the prompt ends.
  [[nodiscard]] std::size_t eviction_step(std::size_t limit) const {
    using Kind = EvictionScheme::Kind;
    std::size_t size = limit;
    if (scheme_.kind == Kind::streaming || scheme_.kind == Kind::h2o) {
      const std::int64_t room = scheme_.budget() - position();
      size = std::min<std::size_t>(size, static_cast<std::size_t>(std::max<std::int64_t>(room, 1)));
    } else if (snapkv_compresses()) {
      for (const std::int64_t cut : {prompt_length_ - scheme_.snapkv.window_tokens, prompt_length_})
        if (consumed_ < cut) size = std::min<std::size_t>(size, static_cast<std::size_t>(cut - consumed_));
    }
    return size;
  }
  [[nodiscard]] bool snapkv_compresses() const {
    return scheme_.kind == EvictionScheme::Kind::snapkv && prompt_length_ > scheme_.budget();
  }

  // One step of eviction_step()'s size: evict first if the tokens would not fit, run them, compress a finished
  // prompt (snapkv).
  void step(std::span<const TokenId> tokens) {
    using Kind = EvictionScheme::Kind;
    const auto count = static_cast<std::int64_t>(tokens.size());
    ImportanceScores* importance = importance_ ? &*importance_ : nullptr;
    if (scheme_.kind == Kind::streaming && position() + count > scheme_.budget())
      follow(evict(cache_, importance, 0, scheme_.streaming, scheme_.budget() - count));
    if (scheme_.kind == Kind::h2o && position() + count > scheme_.budget())
      follow(evict(cache_, importance, 0, scheme_.h2o, scheme_.budget() - count));
    const bool observe = snapkv_compresses() && consumed_ >= prompt_length_ - scheme_.snapkv.window_tokens;
    if (observe && consumed_ == prompt_length_ - scheme_.snapkv.window_tokens) importance_->clear(0);
    accumulate_ = scheme_.kind == Kind::h2o || observe || promoted_.has_value();
    run(tokens);
    consumed_ += count;
    if (snapkv_compresses() && consumed_ == prompt_length_)
      follow(evict(cache_, importance, 0, scheme_.snapkv, scheme_.budget()));
  }
  // The promoted copies follow an eviction's selection.
  void follow(const std::optional<TokenSelection>& selection) {
    if (promoted_ && selection) promoted_->retain(0, *selection, cache_.sequences().sequence(0).quantized);
  }

  [[nodiscard]] ImportanceView importance_view(int layer) {
    return accumulate_ && importance_ ? importance_->view(layer) : ImportanceView{};
  }

  // The layers of one step: afterwards the cache holds the tokens and hidden_ their final hidden states.
  void run(std::span<const TokenId> tokens) {
    const LlamaConfig& c = model_.config;
    const auto count = static_cast<std::int64_t>(tokens.size());
    require(count > 0, ErrorCode::invalid_argument, "forward: no tokens");
    const std::int64_t first = position();
    // Checked with if, not require(): these run every step and the messages need formatting.
    if (first + count > cache_.config().max_tokens_per_sequence)
      throw Error(ErrorCode::capacity_exceeded,
                  fmt::format("forward: {} + {} tokens exceed the cache's {} (raise --context)", first, count,
                              cache_.config().max_tokens_per_sequence));
    for (TokenId token : tokens)
      if (token < 0 || token >= c.vocabulary)
        throw Error(ErrorCode::invalid_argument,
                    fmt::format("forward: token {} is outside the vocabulary of {}", token, c.vocabulary));
    resize(count);

    const int sequence = 0;
    const AppendPlan plan = cache_.reserve({&sequence, 1}, {&count, 1});
    int written = 0;
    try {
      for (std::int64_t t = 0; t < count; ++t)
        std::copy_n(model_.weights.embedding.values.data() +
                        static_cast<std::int64_t>(tokens[static_cast<std::size_t>(t)]) * c.hidden,
                    c.hidden, hidden_.data() + t * c.hidden);
      for (int layer = 0; layer < c.layers; ++layer) run_layer(plan, layer, first, count, written);
    } catch (...) {
      // The cache already counts the tokens; fill the layers not yet written and take the tokens back out, so the
      // backend stays usable after a failed step.
      std::fill(key_.begin(), key_.end(), 0.0f);
      std::fill(value_.begin(), value_.end(), 0.0f);
      for (int layer = written; layer < c.layers; ++layer)
        cache_.template write<float>(plan, layer, key_span(count), value_span(count));
      cache_.truncate(0, first);
      if (importance_) importance_->truncate(0, first);
      if (promoted_) promoted_->truncate(0, cache_.sequences().sequence(0).quantized);
      throw;
    }
  }

  void resize(std::int64_t count) {
    const LlamaConfig& c = model_.config;
    const auto rows = static_cast<std::size_t>(count);
    hidden_.resize(rows * static_cast<std::size_t>(c.hidden));
    normed_.resize(hidden_.size());
    projected_.resize(hidden_.size());
    query_.resize(rows * static_cast<std::size_t>(c.q_heads) * head_dim);
    attention_.resize(query_.size());
    key_.resize(rows * static_cast<std::size_t>(c.kv_heads) * head_dim);
    value_.resize(key_.size());
    gate_.resize(rows * static_cast<std::size_t>(c.ffn));
    up_.resize(gate_.size());
  }
  std::span<const float> key_span(std::int64_t count) const {
    return {key_.data(), static_cast<std::size_t>(count) * static_cast<std::size_t>(model_.config.kv_heads) * head_dim};
  }
  std::span<const float> value_span(std::int64_t count) const {
    return {value_.data(),
            static_cast<std::size_t>(count) * static_cast<std::size_t>(model_.config.kv_heads) * head_dim};
  }

  // `written` counts the layers whose keys and values are in the cache, for the clean-up of a failed step.
  void run_layer(const AppendPlan& plan, int layer, std::int64_t first, std::int64_t count, int& written) {
    const LlamaConfig& c = model_.config;
    const LayerWeights& w = model_.weights.layers[static_cast<std::size_t>(layer)];
    rms_norm(hidden_.data(), w.attention_norm.data(), count, c.hidden, c.rms_epsilon, normed_.data());
    project(w.query, normed_.data(), count, query_.data());
    project(w.key, normed_.data(), count, key_.data());
    project(w.value, normed_.data(), count, value_.data());
    if (observer_) observer_(layer, first, count, query_.data(), key_.data(), value_.data());
    for (std::int64_t t = 0; t < count; ++t)
      for (int head = 0; head < c.q_heads; ++head)
        apply_rope<head_dim>(query_.data() + (t * c.q_heads + head) * head_dim, first + t, cache_.rope_table(),
                             c.rope.style);
    if (promoted_) promoted_->before_write(cache_, plan, layer, *importance_);  // the window's last look
    cache_.template write<float>(plan, layer, key_span(count), value_span(count));
    ++written;

    const CacheLayerView view = cache_.view(layer);
    Tiers::visit(view.tier, [&]<class Tier>() {
      if (count == 1) {
        // One token: kvq's host decode attention, as is.
        decoded_.resize(query_.size());
        if (promoted_)
          promoted_decode_attention_reference<Tier>(view, cache_.template params<Tier>(layer), *promoted_, layer,
                                                    cache_.rope_table(), c.rope.style, 0, query_, c.q_heads,
                                                    AttentionParams{}, decoded_, importance_view(layer));
        else
          decode_attention_reference<Tier>(view, cache_.template params<Tier>(layer), cache_.rope_table(),
                                           c.rope.style, 0, query_, c.q_heads, AttentionParams{}, decoded_,
                                           importance_view(layer));
        std::transform(decoded_.begin(), decoded_.end(), attention_.begin(),
                       [](double x) { return static_cast<float>(x); });
      } else {
        const TierParams<Tier>& params = cache_.template params<Tier>(layer);
        prefill_attention_with<head_dim>(
            view,
            [&](std::int64_t t, int kv, float* key, float* value) {
              if (promoted_)
                read_promoted_attention_token<Tier>(view, params, *promoted_, layer, cache_.rope_table(), c.rope.style,
                                                    0, t, kv, key, value);
              else
                read_attention_token<Tier>(view, params, cache_.rope_table(), c.rope.style, 0, t, kv, key, value);
            },
            first, count, query_.data(), c.q_heads, attention_.data(), importance_view(layer));
      }
    });
    project(w.output, attention_.data(), count, projected_.data());
    for (std::size_t i = 0; i < projected_.size(); ++i) hidden_[i] += projected_[i];

    rms_norm(hidden_.data(), w.ffn_norm.data(), count, c.hidden, c.rms_epsilon, normed_.data());
    project(w.gate, normed_.data(), count, gate_.data());
    project(w.up, normed_.data(), count, up_.data());
    swiglu(gate_.data(), up_.data(), static_cast<std::int64_t>(gate_.size()));
    project(w.down, gate_.data(), count, projected_.data());
    for (std::size_t i = 0; i < projected_.size(); ++i) hidden_[i] += projected_[i];
  }

  const LlamaModel& model_;
  HostPagedKVCache<Tiers> cache_;
  std::shared_ptr<const KvCalibration> calibration_;  // the cache's codebook parameters point into it
  KvObserver observer_;
  std::vector<float> hidden_, normed_, projected_, query_, attention_, key_, value_, gate_, up_, logits_;
  std::vector<double> decoded_;
  EvictionScheme scheme_;
  PromotionScheme promotion_;
  std::optional<PromotedTokens<typename presets::Int8<head_dim>::Tier>> promoted_;  // --promote: int8 copies
  std::optional<ImportanceScores> importance_;  // h2o, snapkv: what decode and prefill attention accumulate
  bool accumulate_ = false;                     // whether the current step adds to importance_
  std::int64_t consumed_ = 0;                   // tokens run since reset() (the cache may hold fewer)
  std::int64_t prompt_length_ = 0;              // set_prompt_length(); snapkv compresses when it is reached
};

}  // namespace

std::unique_ptr<Backend> make_cpu_backend(const LlamaModel& model, const KvCacheOptions& options) {
  return make_cpu_backend(model, options, KvObserver{});
}

std::unique_ptr<Backend> make_cpu_backend(const LlamaModel& model, const KvCacheOptions& options, KvObserver observer) {
  return dispatch_kv_cache(
      model.config.head_dim, options.preset, [&]<class Preset, class Tiers>() -> std::unique_ptr<Backend> {
        const PromotionScheme promotion = parse_promotion_scheme(options.promote);
        KvCacheOptions with_window = options;  // promotion observes tokens in the fp16 window before they leave it
        if (promotion.enabled()) with_window.window_tokens = std::max(options.window_tokens, promotion.window_tokens);
        return std::make_unique<CpuBackend<Preset, Tiers>>(model, example_cache_config<Preset>(model.config, with_window),
                                                           options.calibration, std::move(observer),
                                                           parse_eviction_scheme(options.evict), promotion);
      });
}

}  // namespace kvq::llama

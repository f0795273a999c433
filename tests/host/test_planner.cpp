// The memory planner against hand-computed bytes, against the cache's own allocation (a drift between planner and
// cache fails here), the naive formula's 4x for Llama-3 GQA, the largest-context search at its boundary, and every
// input it must refuse.
#include <doctest/doctest.h>

#include <string>
#include <vector>

#include "kvq/cache/host_paged_cache.hpp"
#include "kvq/planner/memory_plan.hpp"
#include "kvq/planner/model_presets.hpp"

using namespace kvq;

namespace {

PlanRequest request(std::string_view model, std::string_view preset, std::int64_t context, int batch = 1) {
  PlanRequest r;
  r.model = published_model(model);
  r.kv_preset = std::string(preset);
  r.context = context;
  r.batch = batch;
  return r;
}

std::string error_of(auto&& call) {
  try {
    call();
  } catch (const Error& error) {
    return error.what();
  }
  return "(no error)";
}

bool contains(const std::string& text, std::string_view part) { return text.find(part) != std::string::npos; }

}  // namespace

TEST_CASE("parameter counts of the published models are the published ones") {
  // Llama-3-8B: embeddings 128256 * 4096 = 525,336,576, twice (untied); per layer q 4096^2 + k, v 4096 * 1024 each +
  // o 4096^2 + 3 * 4096 * 14336 = 218,103,808, times 32; norms 65 * 4096.
  CHECK(parameter_count(published_model("Llama-3-8B")).total() == 8'030'261'248);
  CHECK(parameter_count(published_model("Llama-3.1-8B")).total() == 8'030'261'248);
  CHECK(parameter_count(published_model("Llama-3-70B")).total() == 70'553'706'496);
  CHECK(parameter_count(published_model("Llama-3.1-405B")).total() == 405'853'388'800);
  // Tied: the embedding matrix is counted once.
  CHECK(parameter_count(published_model("Llama-3.2-1B")).total() == 1'235'814'400);
  CHECK(parameter_count(published_model("Llama-3.2-3B")).total() == 3'212'749'824);
  CHECK(parameter_count(published_model("SmolLM2-135M")).total() == 134'515'008);
  CHECK(published_model("llama-3.1-8b").max_context == 131072);  // names are case-insensitive
}

TEST_CASE("weights: 16-bit, and int8/int4 with one fp16 scale per 128 inputs") {
  const ModelShape& m = published_model("Llama-3-8B");
  const WeightBytes bf16 = weight_bytes(m, WeightType::bf16, 128);
  CHECK(bf16.total() == 2 * 8'030'261'248LL);
  CHECK(bf16.linear_scales == 0);
  // int4: 6,979,321,856 projection weights at half a byte, plus per layer out * ceil(in / 128) * 2 bytes of scales:
  // q, o 4096 * 32 * 2 each, k, v 1024 * 32 * 2 each, gate, up 14336 * 32 * 2 each, down 4096 * 112 * 2
  // = 3,407,872 per layer, 109,051,904 in all; embeddings, output and norms stay 16-bit.
  const WeightBytes int4 = weight_bytes(m, WeightType::int4, 128);
  CHECK(int4.linear_scales == 109'051'904);
  CHECK(int4.linear == 3'489'660'928LL + 109'051'904);
  CHECK(int4.total() == int4.linear + 2 * 1'050'673'152LL + 2 * 266'240);
  // int8: a byte per weight, the same scales: 8.125 bits per projection weight.
  const WeightBytes int8 = weight_bytes(m, WeightType::int8, 128);
  CHECK(int8.linear == 6'979'321'856LL + 109'051'904);
  // SmolLM2's 576 inputs are 4.5 groups of 128: rows round up to 5 scales (q: 576 rows * 5 * 2 bytes).
  const ModelShape& smol = published_model("SmolLM2-135M");
  const std::int64_t per_layer = 576 * 5 * 2 + 2 * 192 * 5 * 2 + 576 * 5 * 2 + 2 * 1536 * 5 * 2 + 576 * 12 * 2;
  CHECK(weight_bytes(smol, WeightType::int8, 128).linear_scales == 30 * per_layer);
}

TEST_CASE("Llama-3-8B fp16 KV at 131072 tokens is 16 GiB exactly; the naive formula says 64") {
  const MemoryPlan plan = plan_memory(request("Llama-3-8B", "fp16", 131072));
  // 2 (K, V) * 32 layers * 8 KV heads * 128 * 2 bytes * 131072 tokens = 2^34.
  CHECK(plan.kv.storage.pool_bytes == 2LL * 32 * 8 * 128 * 2 * 131072);
  CHECK(plan.kv.storage.pool_bytes == 16 * gibibyte);
  CHECK(plan.kv.storage.sink_bytes == 0);
  CHECK(plan.kv.storage.window_bytes == 0);  // window capacity 0 + 1 - 1
  CHECK(plan.kv.storage.pool_pages == 512);
  // Device bookkeeping: 512 int32 page ids + int64 length and quantized count + a 56-byte plan entry.
  CHECK(plan.kv.bookkeeping == 512 * 4 + 8 + 8 + 56);
  CHECK(plan.kv.outliers == 0);

  // The founding notes' formula uses the 32 query heads: 2 * 32 * 32 * 128 * 2 * 131072 = 64 GiB, 4x.
  const NaiveEstimate naive = naive_estimate(request("Llama-3-8B", "fp16", 131072), 80 * gibibyte);
  CHECK(naive.kv_bytes == 64 * gibibyte);
  CHECK(naive.kv_bytes == 4 * plan.kv.storage.pool_bytes);
  CHECK(naive.total_bytes == plan.weights.total() + 64 * gibibyte);
  // Largest naive context on 80 GiB: (85,899,345,920 - 16,060,522,496) / 524,288 bytes per token = 133,206.98.
  CHECK(naive.largest_context == 133'206);
  // 70B: 64 query heads over 8 KV heads, 8x.
  const PlanRequest big = request("Llama-3-70B", "fp16", 8192);
  CHECK(naive_estimate(big, 80 * gibibyte).kv_bytes == 8 * plan_memory(big).kv.storage.pool_bytes);
}

TEST_CASE("quantized KV: int8 is 8.25/16 of fp16; metadata and page padding come from the page layout") {
  const MemoryPlan int8 = plan_memory(request("Llama-3-8B", "int8", 131072));
  // Per head and page of 256 tokens: 256 * 128 code bytes + 256 * 4 meta bytes, for keys and values.
  CHECK(int8.kv.storage.pool_bytes == 32LL * 512 * 8 * 2 * (256 * 128 + 256 * 4));
  CHECK(int8.kv.storage.pool_bytes == 8 * gibibyte + gibibyte / 4);
  // q4_0 at d = 128: 4.5 bits per element.
  const MemoryPlan q4 = plan_memory(request("Llama-3-8B", "q4_0", 131072));
  CHECK(q4.kv.storage.pool_bytes == 16 * gibibyte * 45 / 160);
}

TEST_CASE("the planner's KV bytes are what the cache allocates for the same config") {
  // SmolLM2-135M (30 layers, 3 KV heads, head_dim 64), 2 sequences of 3000 tokens, pages of 256.
  SUBCASE("kivi-2: per-channel 2-bit keys, window 128") {
    const MemoryPlan plan = plan_memory(request("SmolLM2-135M", "kivi-2", 3000, 2));
    // Page, per head: keys 8 blocks of 32 tokens x 64 channels: codes 8 * 512, meta 8 * 64 * 4; values 256 tokens:
    // codes 256 * 16, meta 256 * 2 groups * 4 -> 4096 + 2048 + 4096 + 2048 = 12288; x 3 heads = 36864 bytes.
    // ceil(3000 / 256) = 12 pages per sequence, 24 in the pool: 884,736 bytes per layer.
    CHECK(plan.kv.storage.pool_pages == 24);
    CHECK(plan.kv.storage.pool_bytes == 30LL * 24 * 36864);
    // Window: 128 + 32 - 1 slots x 3 heads x 64 x 2 bytes x (K, V) x 2 sequences per layer.
    CHECK(plan.kv.storage.window_bytes == 30LL * 159 * 3 * 64 * 2 * 2 * 2);
    CHECK(plan.kv.storage.pool_bytes + plan.kv.storage.window_bytes == 33'868'800);

    using Cache = HostPagedKVCache<PresetTiers<presets::Kivi<64, 2>>>;
    const CacheConfig config{.layers = 30, .kv_heads = 3, .max_sequences = 2, .max_tokens_per_sequence = 3000,
                             .page_tokens = 256, .window_tokens = 128};
    const Cache cache(config, std::int64_t{1} << 30);
    CHECK(cache.allocated_bytes() == plan.kv.storage.total_bytes());
  }
  SUBCASE("nuq3: codebooks, outliers, one sink, pre-RoPE keys") {
    const MemoryPlan plan = plan_memory(request("SmolLM2-135M", "nuq3", 3000, 2));
    // Page, per head: keys 2 blocks of 128 tokens: codes 2 * 64 * 128 * 3 / 8, meta 2 * (64 * 4 + 128 outlier
    // slots * 4); values 256 tokens: codes 256 * 24, meta 256 * (4 + 4) -> 6144 + 1536 + 6144 + 2048 = 15872;
    // x 3 heads = 47616. ceil((3000 - 1 sink) / 256) = 12 pages per sequence.
    CHECK(plan.kv.storage.pool_bytes == 30LL * 24 * 47616);
    CHECK(plan.kv.storage.sink_bytes == 30LL * 2 * 1 * 3 * 64 * 2 * 2);
    CHECK(plan.kv.storage.window_bytes == 30LL * 2 * 127 * 3 * 64 * 2 * 2);  // 0 + 128 - 1 slots
    // Outlier slots: every token slot of every page, one per key and one per value, 4 bytes each.
    CHECK(plan.kv.outliers == 30LL * 24 * 256 * 3 * (4 + 4));

    using Cache = HostPagedKVCache<PresetTiers<presets::Nuq<64, 3>>>;
    const CacheConfig config{.layers = 30, .kv_heads = 3, .max_sequences = 2, .max_tokens_per_sequence = 3000,
                             .page_tokens = 256, .sink_tokens = 1, .key_position = KeyPosition::pre_rope};
    const Cache cache(config, std::int64_t{1} << 30);
    CHECK(cache.allocated_bytes() == plan.kv.storage.total_bytes());
  }
}

TEST_CASE("workspace: prefill chunk and decode step, by hand") {
  const MemoryPlan plan = plan_memory(request("Llama-3-8B", "fp16", 131072));
  // Prefill, 2048 tokens, the reference engine's buffers: residual fp32 + normed fp16, 2048 * 4096 * (4 + 2);
  // q/k/v product fp32 (4096 + 2 * 1024) * 4, rotated queries fp32 4096 * 4, k and v fp16 2 * 1024 * 2, attention
  // output fp16 4096 * 2 = 53248 bytes a token; gate/up fp32 + SwiGLU fp16 2048 * 14336 * (8 + 2); logits of the
  // last token only 128256 * 4; attention none (the prefill kernel has no workspace).
  CHECK(plan.prefill.tokens == 2048);
  CHECK(plan.prefill.hidden_states == 50'331'648);
  CHECK(plan.prefill.projections == 2048 * 53248);
  CHECK(plan.prefill.mlp == 293'601'280);
  CHECK(plan.prefill.logits == 513'024);
  CHECK(plan.prefill.attention == 0);
  CHECK(plan.prefill.total() == 453'497'856);
  // Scoring every token of the chunk (kvq_eval): 2048 rows of logits, 1 GiB of the 1.4.
  PlanRequest scoring = request("Llama-3-8B", "fp16", 131072);
  scoring.assumptions.prefill_logits = PrefillLogits::every_token;
  const MemoryPlan scored = plan_memory(scoring);
  CHECK(scored.prefill.logits == 1'050'673'152);
  CHECK(scored.prefill.total() == 1'503'657'984);
  CHECK(scored.total() - plan.total() == 1'050'673'152 - 513'024);
  // Decode, batch 1: one token; the split-KV workspace is the decode kernel's own plan (fp16: 512 bytes per token
  // and head), whatever split count it picks.
  CHECK(plan.decode.tokens == 1);
  CHECK(plan.decode.logits == 128256 * 4);
  CHECK(plan.decode.attention == plan_decode({1, 32, 8, 128}, 131072, 512.0, 132).workspace_bytes);
  CHECK(plan.decode.attention > 0);
  CHECK(plan.workspace() == plan.prefill.total());
  CHECK(plan.cuda_context == 630 * mebibyte);
  CHECK(plan.library_workspace == 32 * mebibyte);
  CHECK(plan.total() == plan.weights.total() + plan.kv.total() + plan.prefill.total() + 32 * mebibyte + 630 * mebibyte);
  // A context shorter than the chunk prefills only the context.
  CHECK(plan_memory(request("Llama-3-8B", "fp16", 100)).prefill.tokens == 100);
  // Exact weight bytes (e.g. from a GGUF file) replace the estimate.
  PlanRequest given = request("Llama-3-8B", "fp16", 1000);
  given.weight_bytes = 12345;
  CHECK(plan_memory(given).weights.total() == 12345);
}

TEST_CASE("largest context: monotone, and exact at the boundary") {
  PlanRequest r = request("Llama-3.1-8B", "int8", 1);
  const LargestContext on24 = largest_context(r, 24 * gibibyte);
  REQUIRE(on24.tokens > 0);
  REQUIRE(on24.tokens < on24.search_limit);
  auto total = [&](std::int64_t context) {
    r.context = context;
    return plan_memory(r).total();
  };
  CHECK(total(on24.tokens) <= 24 * gibibyte);
  CHECK(total(on24.tokens + 1) > 24 * gibibyte);
  CHECK(total(on24.tokens + r.assumptions.page_tokens) > 24 * gibibyte);

  // A budget that is exactly some plan's total: that context fits, one token more does not. The total grows a page
  // at a time (the prefill workspace no longer depends on the context), so take a context that fills its last
  // page: 100'096 = 391 pages of 256 tokens; every context of the same pages costs the same.
  const std::int64_t budget = total(100'096);
  CHECK(total(100'000) == budget);
  CHECK(largest_context(r, budget).tokens == 100'096);
  CHECK(largest_context(r, budget - 1).tokens == 99'840);  // 390 full pages

  // Monotone in the context and in the budget.
  std::int64_t previous = 0;
  for (std::int64_t context = 1; context < 2'000'000; context = context * 3 + 7) {
    const std::int64_t t = total(context);
    CHECK(t >= previous);
    previous = t;
  }
  std::int64_t previous_tokens = 0;
  for (std::int64_t gib : {20, 24, 40, 80, 141}) {
    const std::int64_t tokens = largest_context(r, gib * gibibyte).tokens;
    CHECK(tokens >= previous_tokens);
    previous_tokens = tokens;
  }
  // Fewer bits, more context; a bigger batch, less context per sequence.
  CHECK(largest_context(request("Llama-3.1-8B", "kivi-2", 1), 24 * gibibyte).tokens > on24.tokens);
  CHECK(largest_context(request("Llama-3.1-8B", "int8", 1, 4), 24 * gibibyte).tokens < on24.tokens);

  // Nothing fits: 70B in bf16 is 131 GiB of weights.
  CHECK(largest_context(request("Llama-3-70B", "fp16", 1), 24 * gibibyte).tokens == 0);
  // Everything up to the search limit fits: SmolLM2 on a petabyte.
  const LargestContext huge = largest_context(request("SmolLM2-135M", "kivi-2", 1), PlanLimits::max_gpu_bytes);
  CHECK(huge.tokens == huge.search_limit);
  CHECK(huge.search_limit == ModelLimits::max_context);
}

TEST_CASE("impossible and absurd inputs are errors that name the field") {
  CHECK(contains(error_of([] { (void)plan_memory(request("Llama-3-8B", "fp16", 1000, 0)); }), "batch must be in [1, 65536], got 0"));
  CHECK(contains(error_of([] { (void)plan_memory(request("Llama-3-8B", "fp16", -5)); }), "context must be in"));
  CHECK(contains(error_of([] { (void)plan_memory(request("Llama-3-8B", "int3", 1000)); }), "unknown KV preset \"int3\""));
  CHECK(contains(error_of([] { (void)published_model("Llama-4-8B"); }), "unknown model \"Llama-4-8B\"; known models: Llama-3-8B"));
  CHECK(contains(error_of([] { (void)parse_weight_type("fp4"); }), "unknown weight type \"fp4\""));

  PlanRequest odd = request("Llama-3-8B", "int8", 1000);
  odd.model.head_dim = 96;
  CHECK(contains(error_of([&] { (void)plan_memory(odd); }), "head_dim 96"));
  PlanRequest layers = request("Llama-3-8B", "int8", 1000);
  layers.model.layers = 100000;
  CHECK(contains(error_of([&] { (void)plan_memory(layers); }), "model Llama-3-8B: layers must be in [1, 1024], got 100000"));
  PlanRequest heads = request("Llama-3-8B", "int8", 1000);
  heads.model.kv_heads = 6;
  CHECK(contains(error_of([&] { (void)plan_memory(heads); }), "query_heads 32 is not a multiple of kv_heads 6"));
  PlanRequest pages = request("Llama-3-8B", "kivi-2", 1000);
  pages.assumptions.page_tokens = 100;
  CHECK(contains(error_of([&] { (void)plan_memory(pages); }), "page_tokens 100 must be a multiple of 32"));
  PlanRequest chunk = request("Llama-3-8B", "int8", 1000);
  chunk.assumptions.prefill_chunk_tokens = 0;
  CHECK(contains(error_of([&] { (void)plan_memory(chunk); }), "prefill chunk tokens must be in"));
  // 65536 sequences of 2^31 - 1 tokens need more than 2^31 pages.
  PlanRequest wide = request("Llama-3-8B", "int8", ModelLimits::max_context, PlanLimits::max_batch);
  CHECK(contains(error_of([&] { (void)plan_memory(wide); }), "beyond what the cache can address"));
  CHECK(contains(error_of([] { (void)largest_context(request("Llama-3-8B", "int8", 1), 0); }), "GPU bytes must be in"));
  CHECK(contains(error_of([] { (void)largest_context(request("Llama-3-8B", "int8", 1), -1); }), "GPU bytes must be in"));
}

TEST_CASE("eviction budgets: KV sized for the kept tokens, bits per element of the whole context, bits -> tokens") {
  // Llama-3-8B, int8 (8 + 32/128 = 8.25 bits per element, per-token groups of 128, no sinks or window), 256-token
  // pages: a context of 131072 keeping 65536 tokens holds 256 pages per layer instead of 512.
  PlanRequest r = request("Llama-3-8B", "int8", 131072);
  const MemoryPlan all = plan_memory(r);
  r.kept_tokens = 65536;
  const MemoryPlan half = plan_memory(r);
  CHECK(half.kv.storage.pool_pages * 2 == all.kv.storage.pool_pages);
  CHECK(half.kv.storage.pool_bytes * 2 == all.kv.storage.pool_bytes);
  CHECK(half.kv.config.max_tokens_per_sequence == 65536);
  // Page-aligned, no padding: exactly 8.25 bits for every token, 4.125 for the context when half are kept.
  r.kept_tokens.reset();
  CHECK(kv_bits_per_element(r) == doctest::Approx(8.25).epsilon(1e-12));
  r.kept_tokens = 65536;
  CHECK(kv_bits_per_element(r) == doctest::Approx(4.125).epsilon(1e-12));
  // The cache allocates what the plan says for that budget.
  CHECK(HostPagedKVCache<PresetTiers<presets::Int8<128>>>::required_memory(half.kv.config).total_bytes() ==
        half.kv.storage.total_bytes());
  // A budget above the context keeps everything.
  r.kept_tokens = 1 << 20;
  CHECK(plan_memory(r).kv.storage.pool_bytes == all.kv.storage.pool_bytes);

  // Bits -> tokens: int8 at 4.125 bits of a 131072 context is 65536 tokens (whole pages); one token less than a
  // page boundary would do at 4.12 bits: the largest whole-page budget below it.
  r.kept_tokens.reset();
  CHECK(kept_tokens_for_bits(r, 4.125) == 65536);
  const std::int64_t kept = kept_tokens_for_bits(r, 4.12);
  CHECK(kept % 256 == 0);
  r.kept_tokens = kept;
  CHECK(kv_bits_per_element(r) <= 4.12);
  r.kept_tokens = kept + 1;  // one more token takes a new page
  CHECK(kv_bits_per_element(r) > 4.12);
  r.kept_tokens.reset();
  CHECK(kept_tokens_for_bits(r, 20.0) == 131072);
  // kivi-2's fp16 window (128 + 31 slots) alone costs 159 * 16 / 131072 bits per context element: nothing fits below.
  PlanRequest kivi = request("Llama-3-8B", "kivi-2", 131072);
  CHECK(kept_tokens_for_bits(kivi, 0.01) == 0);

  CHECK(contains(error_of([&] { (void)kept_tokens_for_bits(r, 0.0); }), "bits must be in (0, 64]"));
  r.kept_tokens = 0;
  CHECK(contains(error_of([&] { (void)plan_memory(r); }), "kept tokens (eviction budget)"));
}

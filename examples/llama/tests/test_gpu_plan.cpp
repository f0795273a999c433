// The GPU backend's memory plan and --mem-budget, which need no device: the plan is host arithmetic, and an
// over-budget backend is refused before any CUDA call. Run with --test-suite=gpu_plan (CI runs it).
#include <doctest/doctest.h>

#include <string>

#include "kvq/core/error.hpp"
#include "kvq/planner/memory_plan.hpp"
#include "kvq/planner/model_presets.hpp"
#include "runtime/gpu_backend.hpp"

using namespace kvq::llama;

namespace {

LlamaConfig config_of(const kvq::ModelShape& m) {
  LlamaConfig c;
  c.layers = m.layers;
  c.hidden = m.hidden;
  c.ffn = m.intermediate;
  c.q_heads = m.query_heads;
  c.kv_heads = m.kv_heads;
  c.head_dim = m.head_dim;
  c.vocabulary = m.vocab;
  c.tied_embeddings = m.tied_embeddings;
  return c;
}

}  // namespace

TEST_SUITE("gpu_plan") {
  TEST_CASE("--mem-budget sizes: binary and decimal units, refusals name the problem") {
    CHECK(parse_bytes("1073741824") == 1073741824);
    CHECK(parse_bytes("80GiB") == std::int64_t{80} << 30);
    CHECK(parse_bytes("16GB") == 16000000000);
    CHECK(parse_bytes("512 MiB") == std::int64_t{512} << 20);
    CHECK(parse_bytes("1.5GiB") == std::int64_t{3} << 29);
    CHECK(parse_bytes("64KB") == 64000);
    CHECK_THROWS_WITH_AS(parse_bytes("12XB"), doctest::Contains("unknown unit \"XB\""), kvq::Error);
    CHECK_THROWS_WITH_AS(parse_bytes("GiB"), doctest::Contains("is not a size"), kvq::Error);
    CHECK_THROWS_AS(parse_bytes("0"), kvq::Error);
  }

  TEST_CASE("the plan counts the weights and the KV cache as kvq's planner and cache do") {
    const kvq::ModelShape& shape = kvq::published_model("Llama-3-8B");
    const LlamaConfig config = config_of(shape);
    for (const char* preset : {"fp16", "int8", "q4_0", "nuq4"}) {
      CAPTURE(preset);
      KvCacheOptions kv;
      kv.preset = preset;
      kv.max_tokens = 32768;
      GpuOptions gpu;
      gpu.max_chunk_tokens = 1024;
      const GpuMemoryPlan plan = plan_gpu_memory(config, kv, gpu);
      kvq::PlanRequest request;
      request.model = shape;
      request.weights = kvq::WeightType::fp16;
      request.kv_preset = preset;
      request.context = 32768;
      const kvq::MemoryPlan reference = kvq::plan_memory(request);
      // The planner counts RMSNorm weights in 16 bits, the backend keeps them in fp32; every Llama-3 tensor is a
      // multiple of 256 bytes, so the layout adds no padding.
      const kvq::WeightBytes& w = reference.weights;
      CHECK(plan.weights == w.embedding + w.output + w.linear + 2 * w.norms);
      CHECK(plan.weights == 16060522496 + 2 * w.norms - w.norms);  // 8.03B parameters x 2 bytes, norms x 4
      // The same cache config (one sequence, pages of 256, the preset's sinks/window/key position): the same bytes,
      // which is kvq::cuda::PagedKVCache::required_memory.
      CHECK(plan.kv.total_bytes() == reference.kv.total());
      CHECK(plan.kv_format == std::string(preset) + " x32");
      CHECK(plan.activations.max_tokens == 1024);
      CHECK(plan.activations.max_context == 32768);
      // kvq_plan models this backend's buffers (memory_plan.hpp): a prefill chunk of 1024 tokens scoring its last
      // token is the backend's step buffers but for the 256-byte rounding of each of its 13 buffers and the token
      // ids; the cuBLAS workspace is the planner's library workspace.
      kvq::PlanRequest chunked = request;
      chunked.assumptions.prefill_chunk_tokens = 1024;
      const kvq::MemoryPlan with_chunk = kvq::plan_memory(chunked);
      const std::int64_t unplanned = plan.activations.step_bytes - with_chunk.prefill.total();
      CHECK(unplanned >= 1024 * 4);
      CHECK(unplanned <= 1024 * 4 + 16 + 13 * 255);
      CHECK(plan.cublas_workspace == with_chunk.library_workspace);
      CHECK(plan.cuda_context == with_chunk.cuda_context);
      // Scoring every token (kvq_eval --backend gpu): logits for the whole chunk, as kvq_plan --logits every.
      GpuOptions scoring = gpu;
      scoring.score_every_token = true;
      const GpuMemoryPlan scored = plan_gpu_memory(config, kv, scoring);
      CHECK(scored.activations.logit_rows == 1024);
      chunked.assumptions.prefill_logits = kvq::PrefillLogits::every_token;
      const std::int64_t unplanned_scoring = scored.activations.step_bytes - kvq::plan_memory(chunked).prefill.total();
      CHECK(unplanned_scoring >= 1024 * 4);
      CHECK(unplanned_scoring <= 1024 * 4 + 16 + 13 * 255);
      CHECK(plan.total() == plan.allocated() + plan.cuda_context);
    }
  }

  TEST_CASE("--mem-budget: a plan over budget is refused with its breakdown, before any allocation") {
    const LlamaConfig config = config_of(kvq::published_model("Llama-3-70B"));
    KvCacheOptions kv;
    kv.preset = "fp16";
    kv.max_tokens = 32768;
    GpuOptions gpu;
    gpu.memory_budget = std::int64_t{80} << 30;
    try {
      (void)make_synthetic_gpu_backend(config, kv, gpu);
      FAIL("no refusal");
    } catch (const kvq::Error& e) {
      const std::string message = e.what();
      CHECK(e.code() == kvq::ErrorCode::out_of_memory);
      CHECK(message.find("--mem-budget is 80.00 GiB") != std::string::npos);
      CHECK(message.find("weights (fp16)") != std::string::npos);
      CHECK(message.find("131.") != std::string::npos);  // 70.6B parameters in fp16: 131.4 GiB
      CHECK(message.find("KV cache") != std::string::npos);
      CHECK(message.find("fp16 x80") != std::string::npos);
    }
  }
}

// Decode attention with every built-in policy as keys and values (the host reference is the oracle; see
// test_device_attention.cu for the error budget). In its own file so that it compiles in parallel.
#include <doctest/doctest.h>

#include "../support/attention_support.cuh"

using namespace kvq;
using namespace kvq::testing;

TEST_CASE_TEMPLATE("decode attention: every built-in policy as keys and values, GQA 3, sinks and window", P,
                   KVQ_TEST_POLICIES, Fp16Policy<64>) {
  CacheConfig config{.kv_heads = 2, .page_tokens = 64, .sink_tokens = 2, .window_tokens = 8};
  run_case<Tier<P, P>>(config, {1, 3, 45, 300, 1100}, 6);
}


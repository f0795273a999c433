#!/usr/bin/env python3
"""Chunked-prefill attention on one GPU, in one script: kvq's tensor-core kernel (benchmarks/bench_prefill.cu: a
whole T-token prefill of one Llama-3-8B layer in chunks, over the quantized cache) against PyTorch
scaled_dot_product_attention(..., is_causal=True) in fp16 over the same T tokens in one call (32 query heads, 8 KV
heads, head_dim 128). Synthetic data; no model weights. FLOPs are causal: 4 * 32 * 128 * T(T+1)/2.

usage: scripts/bench-prefill.py BENCH_BINARY OUT_DIR [--filter REGEX]
Writes OUT_DIR/bench_prefill.json (kvq), OUT_DIR/prefill_table.md, and prints the table.
"""
import argparse
import datetime
import os

import gbench
import torch
import torch.nn.functional as F


def causal_flops(tokens):
    return 4.0 * 32 * 128 * tokens * (tokens + 1) / 2


def sdpa_prefill_ms(tokens, reps=5):
    """Median of `reps` timed calls after two warm-up calls. GQA through enable_gqa where the flash backend takes
    it; otherwise K and V expanded to 32 heads first (outside the timing), which is what older PyTorch does."""
    q = torch.randn(1, 32, tokens, 128, device="cuda", dtype=torch.float16)
    k = torch.randn(1, 8, tokens, 128, device="cuda", dtype=torch.float16)
    v = torch.randn_like(k)
    try:
        call = lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        call()
        how = "enable_gqa"
    except (RuntimeError, TypeError, torch.OutOfMemoryError):
        k, v = k.repeat_interleave(4, dim=1), v.repeat_interleave(4, dim=1)
        call = lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True)
        how = "expanded K/V"
    for _ in range(2):
        call()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        call()
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop))
    del q, k, v
    torch.cuda.empty_cache()
    return sorted(times)[len(times) // 2], how


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("binary")
    parser.add_argument("out")
    parser.add_argument("--filter", default=".")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    lines, medians = gbench.run_medians(args.binary, args.out, "bench_prefill", args.filter, 3)
    header = [line for line in lines if line.startswith("GPU")]
    results = {}
    for name, b in medians.items():  # prefill/<policy>/context:T/chunk:C/manual_time
        _, policy, context, chunk = name.split("/")[:4]
        results[(policy, int(context.split(":")[1]), int(chunk.split(":")[1]))] = b
    sdpa = {}
    for tokens in sorted({k[1] for k in results}):
        try:
            sdpa[tokens] = sdpa_prefill_ms(tokens)
        except torch.OutOfMemoryError:
            sdpa[tokens] = (None, "out of memory")
    lines = [f"GPU: {torch.cuda.get_device_name()}  date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC  "
             f"torch {torch.__version__}", *header, "",
             "| policy | context | chunk | kvq ms | kvq TFLOP/s | SDPA causal fp16 ms | SDPA TFLOP/s | kvq / SDPA time |",
             "|---|---|---|---|---|---|---|---|"]
    for (policy, context, chunk), b in sorted(results.items()):
        ms = b["real_time"]
        base, how = sdpa[context]
        tflops = causal_flops(context) / (ms * 1e-3) / 1e12
        if base is None:
            lines.append(f"| {policy} | {context} | {chunk} | {ms:.1f} | {tflops:.0f} | {how} | | |")
        else:
            lines.append(f"| {policy} | {context} | {chunk} | {ms:.1f} | {tflops:.0f} | {base:.1f} ({how}) | "
                         f"{causal_flops(context) / (base * 1e-3) / 1e12:.0f} | {ms / base:.2f}x |")
    table = "\n".join(lines)
    open(os.path.join(args.out, "prefill_table.md"), "w").write(table + "\n")
    print(table)


if __name__ == "__main__":
    main()

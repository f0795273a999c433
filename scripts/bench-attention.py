#!/usr/bin/env python3
"""Decode-attention comparison on one GPU, in one script: kvq's fused kernel (benchmarks/bench_attention.cu) against
PyTorch scaled_dot_product_attention(..., enable_gqa=True) in fp16, same shapes (one Llama-3-8B layer: 32 query heads,
8 KV heads, head_dim 128, one query token per sequence). Synthetic data; no model weights.

usage: scripts/bench-attention.py BENCH_BINARY OUT_DIR [--filter REGEX] [--repetitions N]
Writes OUT_DIR/bench_attention.json (kvq), OUT_DIR/sdpa.json and OUT_DIR/attention_table.md, and prints the table.
"""
import argparse
import datetime
import json
import os
import time

import gbench
import torch
import torch.nn.functional as F


def warm_up(q, k, v, seconds):
    """At least `seconds` of back-to-back SDPA calls (and 10 calls), so the clocks have ramped before timing: with
    only a few warm-up calls the first shapes timed after the GPU idled came out ~2x slow (seen 2026-12-01)."""
    start, calls = time.perf_counter(), 0
    while calls < 10 or time.perf_counter() - start < seconds:
        for _ in range(10):
            F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
        torch.cuda.synchronize()
        calls += 10


def sdpa_time(batch, context, calls=20, reps=15):
    q = torch.randn(batch, 32, 1, 128, device="cuda", dtype=torch.float16)
    k = torch.randn(batch, 8, context, 128, device="cuda", dtype=torch.float16)
    v = torch.randn_like(k)
    warm_up(q, k, v, 0.05)
    times = []
    for _ in range(reps):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(calls):
            F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop) / calls * 1e3)  # us
    del q, k, v
    torch.cuda.empty_cache()
    return sorted(times)[len(times) // 2]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("binary")
    parser.add_argument("out")
    parser.add_argument("--filter", default=".")
    parser.add_argument("--repetitions", type=int, default=3)
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    lines, medians = gbench.run_medians(args.binary, args.out, "bench_attention", args.filter, args.repetitions)
    header = [line for line in lines if line.startswith(("GPU", "fp16 copy"))]
    results, importance = {}, {}
    for name, b in medians.items():  # attention|importance/<policy>/batch:B/context:T/manual_time
        kind, policy, batch, context = name.split("/")[:4]
        key = (policy, int(batch.split(":")[1]), int(context.split(":")[1]))
        (importance if kind == "importance" else results)[key] = b
    for key in importance:  # an importance row without its plain row still gets a line
        results.setdefault(key, None)
    shapes = sorted({(k[1], k[2]) for k in results})
    # The GPU idled while kvq's benchmark set up: spin it up on the largest batch-1 shape first.
    spin = [torch.randn(1, 32, 1, 128, device="cuda", dtype=torch.float16),
            torch.randn(1, 8, 131072, 128, device="cuda", dtype=torch.float16)]
    warm_up(spin[0], spin[1], spin[1], 0.3)
    del spin
    sdpa = {}
    for batch, context in shapes:
        try:
            sdpa[(batch, context)] = sdpa_time(batch, context)
        except torch.OutOfMemoryError:
            sdpa[(batch, context)] = None
    json.dump({f"{b}x{t}": us for (b, t), us in sdpa.items()}, open(os.path.join(args.out, "sdpa.json"), "w"), indent=1)

    lines = [f"GPU: {torch.cuda.get_device_name()}  date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC  "
             f"torch {torch.__version__}", *header, "",
             "| policy | batch | context | kvq us | bits/elem | splits | GB/s | % of copy | SDPA fp16 us | speedup vs SDPA | vs kvq fp16 |"
             + (" with importance us | importance cost |" if importance else ""),
             "|---|---|---|---|---|---|---|---|---|---|---|" + ("---|---|" if importance else "")]
    for (policy, batch, context), b in sorted(results.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2])):
        tracked = importance.get((policy, batch, context))
        extra = ""
        if importance:
            extra = (f" {tracked['real_time']:.1f} | {100 * (tracked['real_time'] / b['real_time'] - 1):+.1f}% |"
                     if tracked and b else " n/a | n/a |")
        if b is None:
            lines.append(f"| {policy} | {batch} | {context} | n/a |" + " |" * 7 + extra)
            continue
        us = b["real_time"]
        gbps = b["bytes_read"] / (us * 1e-6) / 1e9
        frac = gbps / b["copy_GB/s"]
        base = sdpa.get((batch, context))
        fp16 = results.get(("fp16", batch, context)) or None
        lines.append(f"| {policy} | {batch} | {context} | {us:.1f} | {b['bits_per_elem']:.2f} | {int(b['splits'])} | "
                     f"{gbps:.0f} | {100 * frac:.0f}% | {base:.1f} | {base / us:.2f}x | "
                     f"{(fp16['real_time'] / us) if fp16 else float('nan'):.2f}x |" + extra if base else
                     f"| {policy} | {batch} | {context} | {us:.1f} | {b['bits_per_elem']:.2f} | {int(b['splits'])} | "
                     f"{gbps:.0f} | {100 * frac:.0f}% | n/a | n/a | n/a |" + extra)
    table = "\n".join(lines)
    open(os.path.join(args.out, "attention_table.md"), "w").write(table + "\n")
    print(table)


if __name__ == "__main__":
    main()

"""Runs a kvq Google Benchmark binary and reads its JSON: shared by scripts/bench-attention.py and
scripts/bench-prefill.py (Google Benchmark 1.7: --benchmark_min_time takes plain seconds)."""
import json
import os
import re
import subprocess
import sys


def run_medians(binary, out_dir, name, bench_filter, repetitions):
    """Runs `binary` with `repetitions` repetitions of every benchmark matching `bench_filter`; writes
    OUT_DIR/NAME.json and NAME.txt; exits on failure. Returns (stdout lines, {run_name: median row})."""
    out_json = os.path.join(out_dir, name + ".json")
    run = subprocess.run([binary, "--benchmark_min_time=0.1", f"--benchmark_repetitions={repetitions}",
                          "--benchmark_report_aggregates_only=true", f"--benchmark_filter={bench_filter}",
                          f"--benchmark_out={out_json}", "--benchmark_out_format=json"],
                         capture_output=True, text=True)
    with open(os.path.join(out_dir, name + ".txt"), "w") as log:
        log.write(run.stdout + run.stderr)
    if run.returncode != 0:
        print(run.stdout[-3000:], run.stderr[-3000:])
        sys.exit(run.returncode)
    # Google Benchmark writes nan/inf unquoted for some aggregates of counters; make the file valid JSON first.
    text = re.sub(r'(?<=[:\[,\s])-?(nan|inf)(?=[,\s\]}])', "null", open(out_json).read())
    medians = {b["run_name"]: b for b in json.loads(text)["benchmarks"] if b.get("aggregate_name", "median") == "median"}
    return run.stdout.splitlines(), medians

// The harness's results as files: a Markdown table (for docs/quality.md), the same numbers as CSV, and a PNG of
// mean KLD against bits per element (gnuplot, the way kvq_plan --plot makes its PNG: examples/gnuplot.hpp).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace kvq::llama {

struct PresetResult {
  std::string preset;            // "nuq4", or "nuq4:cal" with calibrated codebooks
  double key_bits = 0, value_bits = 0;  // the policies' exact bits per element
  double effective_bits = 0;     // keys and values, fp16 sinks and window included, at the run's context
  std::int64_t tokens = 0;       // tokens scored
  double perplexity = 0, mean_kld = 0, p99_kld = 0, top1 = 0;
  double seconds = 0;            // wall time of this preset's runs
};

struct PerplexityReport {
  std::string title;     // what was measured: model, text, subset
  std::string subset;    // "16 windows of 512 tokens (stride 256), 4096 scored tokens, spread over the whole text"
  std::string brief;     // the subset in a few words, for the plot: "16 windows x 512 tokens, 4096 scored"
  std::string how;       // chunking and backend
  std::int64_t context = 0;  // tokens per window: the context of effective_bits
  std::vector<PresetResult> rows;  // rows[0] is fp16, the reference
};

// Writes PREFIX.md, PREFIX.csv and PREFIX.meta (the report's text lines, for merging), and (plot = true) PREFIX.png
// with PREFIX.dat and PREFIX.gp beside it.
// kvq::Error(io_error) when a file cannot be written or gnuplot fails.
void write_perplexity_report(const PerplexityReport& report, const std::string& prefix, bool plot);

// Reads back reports written by write_perplexity_report (PREFIX.meta and PREFIX.csv of each prefix) and joins their
// rows into one: runs of the same windows that split a preset list between processes (each with its own fp16
// reference). kvq::Error if a file is missing or malformed, the runs measured different windows, or their fp16
// rows differ (the reference must be the same run of the same tokens).
PerplexityReport merge_perplexity_reports(const std::vector<std::string>& prefixes);

// The Markdown table alone (also printed at the end of a run).
std::string perplexity_markdown(const PerplexityReport& report);

struct PasskeyRow {
  std::string preset;
  double key_bits = 0, value_bits = 0, effective_bits = 0;
  std::vector<int> correct;  // per depth
  int trials = 0;            // per depth
};

struct PasskeyReport {
  std::string title, how;
  std::int64_t context = 0;
  std::vector<double> depths;
  std::vector<PasskeyRow> rows;
};

std::string passkey_markdown(const PasskeyReport& report);

// PREFIX.md and PREFIX.csv.
void write_passkey_report(const PasskeyReport& report, const std::string& prefix);

}  // namespace kvq::llama

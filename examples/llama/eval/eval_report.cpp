#include "eval/eval_report.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>

#include "gnuplot.hpp"
#include "kvq/core/error.hpp"

namespace kvq::llama {
namespace {

void write_file(const std::string& path, const std::string& text) {
  std::ofstream out(path);
  require(out.good(), ErrorCode::io_error, "cannot write " + path);
  out << text;
  require(out.good(), ErrorCode::io_error, "writing " + path + " failed");
}

double percent_change(double value, double reference) { return 100.0 * (value - reference) / reference; }

}  // namespace

std::string perplexity_markdown(const PerplexityReport& r) {
  const PresetResult& fp16 = r.rows.front();
  std::string md = fmt::format("**{}**\n\n{}; {}.\n\n", r.title, r.subset, r.how);
  md += fmt::format(
      "| preset | bits K / V | bits @ {} | perplexity | change | mean KLD | p99 KLD | top-1 agree | tokens |\n"
      "|---|---:|---:|---:|---:|---:|---:|---:|---:|\n",
      r.context);
  for (const PresetResult& p : r.rows)
    md += fmt::format("| `{}` | {:.4g} / {:.4g} | {:.3f} | {:.4f} | {:+.3f}% | {:.5f} | {:.4f} | {:.2f}% | {} |\n",
                      p.preset, p.key_bits, p.value_bits, p.effective_bits, p.perplexity,
                      percent_change(p.perplexity, fp16.perplexity), p.mean_kld, p.p99_kld, 100.0 * p.top1, p.tokens);
  return md;
}

void write_perplexity_report(const PerplexityReport& r, const std::string& prefix, bool plot) {
  namespace fs = std::filesystem;
  if (const fs::path parent = fs::path(prefix).parent_path(); !parent.empty()) fs::create_directories(parent);
  write_file(prefix + ".md", perplexity_markdown(r));
  std::string csv =
      "preset,key_bits,value_bits,effective_bits,context,tokens,perplexity,ppl_change_percent,mean_kld,p99_kld,"
      "top1_agreement,seconds\n";
  for (const PresetResult& p : r.rows)
    csv += fmt::format("{},{:.6g},{:.6g},{:.6f},{},{},{:.6f},{:.6f},{:.8f},{:.8f},{:.6f},{:.1f}\n", p.preset, p.key_bits,
                       p.value_bits, p.effective_bits, r.context, p.tokens, p.perplexity,
                       percent_change(p.perplexity, r.rows.front().perplexity), p.mean_kld, p.p99_kld, p.top1,
                       p.seconds);
  write_file(prefix + ".csv", csv);
  write_file(prefix + ".meta", fmt::format("{}\n{}\n{}\n{}\n{}\n", r.title, r.subset, r.brief, r.how, r.context));
  if (!plot) return;

  // KLD on a log axis: fp16 (0 by definition) has no point; every other preset is one labelled point.
  const std::string data = prefix + ".dat", script = prefix + ".gp", png = prefix + ".png";
  std::string rows = "# bits_per_element mean_kld p99_kld preset\n";
  double low = 1e300, high = 0;
  for (const PresetResult& p : r.rows) {
    if (p.preset == "fp16" || !(p.mean_kld > 0)) continue;
    rows += fmt::format("{:.6f} {:.8g} {:.8g} \"{}\"\n", p.effective_bits, p.mean_kld, p.p99_kld, p.preset);
    low = std::min(low, p.mean_kld);
    high = std::max(high, p.p99_kld);
  }
  write_file(data, rows);
  using examples::gnuplot_quoted;
  std::string gp = "set terminal pngcairo size 1200,760 noenhanced font 'DejaVu Sans,12'\n";
  gp += "set output " + gnuplot_quoted(png) + "\n";
  gp += "set title " + gnuplot_quoted(r.title) + " . \"\\n\" . " + gnuplot_quoted(r.brief) + "\n";
  gp += fmt::format("set xlabel {}\n", gnuplot_quoted(fmt::format(
                                           "bits per key/value element at {} tokens (fp16 sinks and window included)",
                                           r.context)));
  gp += "set ylabel 'KL divergence from the fp16 cache (nats per token)'\nset logscale y\nset grid\n";
  if (high > 0) gp += fmt::format("set yrange [{:.3g}:{:.3g}]\n", low / 3, high * 3);
  gp += "set key top right\nset offsets graph 0.06, graph 0.06, 0, 0\n";
  gp += "plot " + gnuplot_quoted(data) + " using 1:2 with points pt 7 ps 1.5 lc rgb '#1f77b4' title 'mean KLD', \\\n";
  gp += "     " + gnuplot_quoted(data) + " using 1:3 with points pt 6 ps 1.5 lc rgb '#d62728' title 'p99 KLD', \\\n";
  gp += "     " + gnuplot_quoted(data) + " using 1:2:4 with labels offset 0,1.2 notitle\n";
  examples::run_gnuplot("kvq_eval plot", script, gp, data);
}

PerplexityReport merge_perplexity_reports(const std::vector<std::string>& prefixes) {
  require(!prefixes.empty(), ErrorCode::invalid_argument, "--merge: no reports");
  PerplexityReport merged;
  for (const std::string& prefix : prefixes) {
    std::ifstream meta(prefix + ".meta"), csv(prefix + ".csv");
    require(meta.good() && csv.good(), ErrorCode::io_error, "--merge: cannot read " + prefix + ".meta and .csv");
    PerplexityReport part;
    std::string context;
    std::getline(meta, part.title);
    std::getline(meta, part.subset);
    std::getline(meta, part.brief);
    std::getline(meta, part.how);
    std::getline(meta, context);
    require(!meta.fail() && !context.empty(), ErrorCode::io_error, "--merge: " + prefix + ".meta is malformed");
    part.context = std::stoll(context);
    if (merged.rows.empty()) {
      merged = part;
    } else {
      require(part.subset == merged.subset && part.context == merged.context, ErrorCode::invalid_argument,
              fmt::format("--merge: {} measured \"{}\", the first report \"{}\"", prefix, part.subset, merged.subset));
    }
    std::string line;
    std::getline(csv, line);  // header
    while (std::getline(csv, line)) {
      if (line.empty()) continue;
      std::vector<std::string> f;
      for (std::size_t start = 0;;) {
        const std::size_t comma = line.find(',', start);
        f.push_back(line.substr(start, comma - start));
        if (comma == std::string::npos) break;
        start = comma + 1;
      }
      require(f.size() == 12, ErrorCode::io_error, "--merge: " + prefix + ".csv: a row without 12 fields: " + line);
      PresetResult row{f[0], std::stod(f[1]), std::stod(f[2]), std::stod(f[3]), std::stoll(f[5]), std::stod(f[6]),
                       std::stod(f[8]), std::stod(f[9]), std::stod(f[10]), std::stod(f[11])};
      const auto same = std::find_if(merged.rows.begin(), merged.rows.end(),
                                     [&](const PresetResult& r) { return r.preset == row.preset; });
      if (same == merged.rows.end()) {
        merged.rows.push_back(row);
      } else {
        require(std::abs(same->perplexity - row.perplexity) <= 1e-6 * same->perplexity && same->tokens == row.tokens,
                ErrorCode::invalid_argument,
                fmt::format("--merge: preset {} differs between reports ({} vs {}): not runs of the same tokens",
                            row.preset, same->perplexity, row.perplexity));
        same->seconds += row.seconds;
      }
    }
  }
  require(!merged.rows.empty() && merged.rows.front().preset == "fp16", ErrorCode::io_error,
          "--merge: the first report has no fp16 row first");
  return merged;
}

std::string passkey_markdown(const PasskeyReport& r) {
  std::string md = fmt::format("**{}**\n\n{}.\n\n| preset | bits K / V | bits @ {} |", r.title, r.how, r.context);
  for (double depth : r.depths) md += fmt::format(" depth {:.0f}% |", 100 * depth);
  md += " all |\n|---|---:|---:|";
  for (std::size_t i = 0; i <= r.depths.size(); ++i) md += "---:|";
  md += "\n";
  for (const PasskeyRow& row : r.rows) {
    md += fmt::format("| `{}` | {:.4g} / {:.4g} | {:.3f} |", row.preset, row.key_bits, row.value_bits, row.effective_bits);
    int total = 0;
    for (int c : row.correct) {
      md += fmt::format(" {}/{} |", c, row.trials);
      total += c;
    }
    md += fmt::format(" {:.0f}% |\n", 100.0 * total / std::max<std::size_t>(1, row.correct.size() * static_cast<std::size_t>(row.trials)));
  }
  return md;
}

void write_passkey_report(const PasskeyReport& r, const std::string& prefix) {
  namespace fs = std::filesystem;
  if (const fs::path parent = fs::path(prefix).parent_path(); !parent.empty()) fs::create_directories(parent);
  write_file(prefix + ".md", passkey_markdown(r));
  std::string csv = "preset,key_bits,value_bits,effective_bits,context,depth,correct,trials\n";
  for (const PasskeyRow& row : r.rows)
    for (std::size_t i = 0; i < r.depths.size(); ++i)
      csv += fmt::format("{},{:.6g},{:.6g},{:.6f},{},{:.3f},{},{}\n", row.preset, row.key_bits, row.value_bits,
                         row.effective_bits, r.context, r.depths[i], row.correct[i], row.trials);
  write_file(prefix + ".csv", csv);
}

}  // namespace kvq::llama

// Plots for the example tools (kvq_plan --plot, kvq_eval): write the data and a gnuplot script beside the PNG,
// then run Debian's gnuplot (gnuplot-nox, pngcairo terminal) on the script. Without gnuplot the data and script are
// still written, and the error says where they are, so the plot can be made elsewhere.
#pragma once

#include <fmt/core.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

#include "kvq/core/error.hpp"

namespace kvq::examples {

inline std::string shell_quoted(const std::string& text) {
  std::string result = "'";
  for (char c : text) result += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return result + "'";
}

inline std::string gnuplot_quoted(const std::string& text) {
  std::string result = "\"";
  for (char c : text) result += c == '"' || c == '\\' ? std::string("\\") + c : std::string(1, c);
  return result + "\"";
}

// Writes `script` (a gnuplot program that reads `data`, already written) and runs gnuplot on it; `flag` names the
// option in error messages. kvq::Error(io_error) if the script cannot be written, gnuplot is missing or fails.
inline void run_gnuplot(const std::string& flag, const std::filesystem::path& script, const std::string& program,
                        const std::filesystem::path& data) {
  {
    std::ofstream out(script);
    if (!out) throw Error(ErrorCode::io_error, fmt::format("{}: cannot write {}", flag, script.string()));
    out << program;
  }
  if (std::system("command -v gnuplot > /dev/null 2>&1") != 0)
    throw Error(ErrorCode::io_error,
                fmt::format("{}: gnuplot is not on the PATH (Debian: apt-get install gnuplot-nox); the data and "
                            "script are written: {} and {}",
                            flag, data.string(), script.string()));
  const std::string command = "gnuplot " + shell_quoted(script.string());
  if (std::system(command.c_str()) != 0) throw Error(ErrorCode::io_error, fmt::format("{}: `{}` failed", flag, command));
}

}  // namespace kvq::examples

// kvq's one error model: host API entry points validate their arguments and throw kvq::Error.
// Device code never throws; kernels report problems through caller-provided counters instead.
#pragma once

#include <stdexcept>
#include <string>

namespace kvq {

enum class ErrorCode {
  invalid_argument,   // a shape, size or option the library cannot accept
  non_finite_input,   // NaN or Inf where the caller asked for finite data only
  out_of_memory,      // an allocation or a capacity that does not fit
  capacity_exceeded,  // writing past what a container was sized for
  cuda_error,         // a CUDA runtime call or kernel launch failed
  io_error,           // a file could not be read or is malformed
};

[[nodiscard]] constexpr const char* to_string(ErrorCode code) noexcept {
  switch (code) {
    case ErrorCode::invalid_argument: return "invalid argument";
    case ErrorCode::non_finite_input: return "non-finite input";
    case ErrorCode::out_of_memory: return "out of memory";
    case ErrorCode::capacity_exceeded: return "capacity exceeded";
    case ErrorCode::cuda_error: return "CUDA error";
    case ErrorCode::io_error: return "I/O error";
  }
  return "unknown error";
}

class Error : public std::runtime_error {
 public:
  Error(ErrorCode code, const std::string& message)
      : std::runtime_error(std::string("kvq: ") + to_string(code) + ": " + message), code_(code) {}
  [[nodiscard]] ErrorCode code() const noexcept { return code_; }

 private:
  ErrorCode code_;
};

// Throws kvq::Error(code, message) when `condition` is false.
inline void require(bool condition, ErrorCode code, const std::string& message) {
  if (!condition) throw Error(code, message);
}

}  // namespace kvq

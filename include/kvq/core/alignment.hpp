// Byte counts rounded up to the 16-byte alignment that vector loads and stores want.
#pragma once

#include <cstdint>

#include "kvq/core/macros.hpp"

namespace kvq {

KVQ_HOST_DEVICE inline constexpr std::int64_t align16(std::int64_t bytes) { return (bytes + 15) / 16 * 16; }

}  // namespace kvq

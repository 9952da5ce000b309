// Error handling: every failure throws td::Error with a message that names the op and the bad value.
// The Python bindings turn td::Error into ValueError. Nothing here calls exit() or abort().
#pragma once
#include <sstream>
#include <stdexcept>
#include <string>

namespace td {

struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// An allocation failed (host or device memory). The bindings turn it into MemoryError.
struct OutOfMemory : Error {
  using Error::Error;
};

namespace detail {
template <typename... Args>
std::string concat(const Args&... args) {
  std::ostringstream os;
  (os << ... << args);
  return os.str();
}
}  // namespace detail

}  // namespace td

// TD_CHECK(cond, "[op] message ", value, ...): throws td::Error when cond is false.
#define TD_CHECK(cond, ...)                                   \
  do {                                                        \
    if (!(cond)) throw ::td::Error(::td::detail::concat(__VA_ARGS__)); \
  } while (0)

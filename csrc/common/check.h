// GF_CHECK(cond, parts...): TORCH_CHECK with a message built without std::ostream.
//
// On the H100 machine (torch 2.11+cu130 wheels, extensions built there by g++ 13) every
// TORCH_CHECK message that wrote an integer (c10::str, an ostringstream) segfaulted inside our
// extensions: the stream's num_put facet lookup landed on another facet (codecvt::do_unshift in the
// backtrace), so an input error became a crash. Integers here go through std::to_string, which uses
// no locale; the message reaches TORCH_CHECK as one std::string, which c10 passes through as is.
#pragma once

#include <c10/core/ScalarType.h>
#include <c10/util/ArrayRef.h>
#include <c10/util/Exception.h>

#include <string>
#include <type_traits>

namespace gf {

inline void append_part(std::string& s, const char* x) { s += x; }
inline void append_part(std::string& s, const std::string& x) { s += x; }
inline void append_part(std::string& s, c10::ScalarType t) { s += c10::toString(t); }
inline void append_part(std::string& s, c10::IntArrayRef x) {
  s += "[";
  for (size_t i = 0; i < x.size(); ++i) s += (i ? ", " : "") + std::to_string(x[i]);
  s += "]";
}
template <typename T, std::enable_if_t<std::is_arithmetic_v<T>, int> = 0>
inline void append_part(std::string& s, T x) {
  s += std::to_string(x);
}

template <typename... Parts>
std::string message(const Parts&... parts) {
  std::string s;
  (append_part(s, parts), ...);
  return s;
}

}  // namespace gf

#define GF_CHECK(cond, ...) TORCH_CHECK(cond, ::gf::message(__VA_ARGS__))
// An error in the input data (not in how the kernel was called): raised as a Python ValueError.
#define GF_CHECK_VALUE(cond, ...) TORCH_CHECK_VALUE(cond, ::gf::message(__VA_ARGS__))

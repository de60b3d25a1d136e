/* Force-included into every mlx-c translation unit (and bindgen) when building against a
 * prebuilt MLX on a non-Apple host. Two gaps in mlx-c 0.7.0 on Linux x86-64:
 *  1. mlx/c/half.h defines float16_t / bfloat16_t only on aarch64; mlx-rs needs them.
 *  2. mlx/c/private/io.h uses std::format, which libstdc++ 12 (Debian 12) lacks.
 */
#ifndef RMLX_LINUX_SHIM_H
#define RMLX_LINUX_SHIM_H

/* Claim mlx-c's half.h include guard so its aarch64-only definitions are skipped. */
#define MLX_HALF_H
#define HAS_FLOAT16
#define HAS_BFLOAT16

#ifdef __cplusplus
#include <version>
#include <mlx/types/half_types.h>
typedef mlx::core::float16_t float16_t;
typedef mlx::core::bfloat16_t bfloat16_t;

#ifndef __cpp_lib_format
#include <sstream>
#include <string>
#include <string_view>
namespace std {
namespace rmlx_format_detail {
inline void format_into(std::ostringstream& out, std::string_view fmt) {
  out << fmt;
}
template <class T, class... Rest>
void format_into(std::ostringstream& out, std::string_view fmt, const T& first,
                 const Rest&... rest) {
  auto pos = fmt.find("{}");
  if (pos == std::string_view::npos) {
    out << fmt;
    return;
  }
  out << fmt.substr(0, pos) << first;
  format_into(out, fmt.substr(pos + 2), rest...);
}
} // namespace rmlx_format_detail
/* Minimal std::format: positional "{}" placeholders only, which is all mlx-c uses. */
template <class... Args>
std::string format(std::string_view fmt, const Args&... args) {
  std::ostringstream out;
  rmlx_format_detail::format_into(out, fmt, args...);
  return out.str();
}
} // namespace std
#endif /* __cpp_lib_format */

#else /* C, as seen by bindgen */
typedef __fp16 float16_t;
typedef unsigned short bfloat16_t;
#endif

#endif /* RMLX_LINUX_SHIM_H */

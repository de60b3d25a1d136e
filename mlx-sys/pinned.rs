//! Reads the project's versions file, `scripts/versions.env` (`KEY=value` lines, `#`
//! comments). Shared by mlx-sys's build script and the `rmlx-test-support` crate, which
//! include this file.

/// The value of the `key=value` line of `text`; `None` when absent or empty.
pub fn pinned(text: &str, key: &str) -> Option<String> {
    text.lines()
        .filter(|line| !line.trim_start().starts_with('#'))
        .filter_map(|line| line.trim().split_once('='))
        .find(|(k, _)| k.trim() == key)
        .map(|(_, v)| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

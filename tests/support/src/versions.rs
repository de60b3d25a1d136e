//! The project's pinned versions, `scripts/versions.env` (`KEY=value` lines, sourced by the
//! scripts and read by `mlx-sys/build.rs`); its unit test keeps
//! `scripts/oracle-requirements.txt` in agreement with it.

use crate::repo_root;

/// The value of `key` in `scripts/versions.env`.
pub fn pinned_version(key: &str) -> String {
    let path = repo_root().join("scripts").join("versions.env");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    crate::pinned::pinned(&text, key).unwrap_or_else(|| panic!("{} sets no {key}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `name==version` pins of a pip requirements file.
    fn requirement(text: &str, name: &str) -> Option<String> {
        text.lines()
            .filter_map(|line| line.split('#').next()?.trim().split_once("=="))
            .find(|(n, _)| n.trim() == name)
            .map(|(_, v)| v.trim().to_string())
    }

    #[test]
    fn the_reference_requirements_pin_the_versions_of_versions_env() {
        let path = repo_root().join("scripts").join("oracle-requirements.txt");
        let text = std::fs::read_to_string(&path).expect("read oracle-requirements.txt");
        let mlx = pinned_version("MLX_VERSION");
        let mlx_lm = pinned_version("MLX_LM_VERSION");
        for (package, want) in [("mlx", &mlx), ("mlx-cpu", &mlx), ("mlx-lm", &mlx_lm)] {
            assert_eq!(
                requirement(&text, package).as_ref(),
                Some(want),
                "{} must pin {package}=={want} (scripts/versions.env)",
                path.display()
            );
        }
    }

    #[test]
    fn every_pin_is_a_version() {
        for key in ["MLX_VERSION", "MLX_LM_VERSION", "LLAMA_CPP_PYTHON_VERSION"] {
            let v = pinned_version(key);
            assert!(
                v.split('.')
                    .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit())),
                "{key}={v} is not a dotted version"
            );
        }
    }
}

//! The architecture registry: one [`Architecture`] entry per supported family of
//! `model_type`s, each defined in its own module that composes the engine's shared blocks
//! (`engine::attention`, `engine::mlp`, `engine::decoder`, norms, RoPE) into a
//! [`Network`] and declares its cache kinds. Everything else that knows about architectures
//! reads this table: config parsing (which `model_type`s are supported), loading, and the
//! build's conversion rules.
//!
//! Adding an architecture: a module here with a `pub const ARCH: Architecture`, listed in
//! [`REGISTRY`].

pub mod convert;
pub mod gemma3;
pub mod llama;

use crate::diagnostic::{Diagnostic, Result};
use crate::engine::layers::LoadCtx;
use crate::engine::network::Network;
use crate::snapshot::ModelConfig;

/// One supported architecture family.
#[derive(Debug)]
pub struct Architecture {
    /// The `model_type` values (config.json) this entry runs.
    pub model_types: &'static [&'static str],
    /// Builds the network from the weights (MLX layout: the names mlx-lm's model holds).
    pub load: fn(&LoadCtx<'_>) -> Result<Box<dyn Network>>,
    /// How `cargo rmlx build` converts a checkpoint of this family.
    pub convert: Convert,
}

pub use convert::Convert;

/// Every supported architecture.
pub static REGISTRY: &[&Architecture] = &[&llama::ARCH, &gemma3::ARCH];

/// The entry running `model_type`, if any.
pub fn lookup(model_type: &str) -> Option<&'static Architecture> {
    REGISTRY
        .iter()
        .copied()
        .find(|a| a.model_types.contains(&model_type))
}

/// Every supported `model_type`, in registry order.
pub fn supported_model_types() -> Vec<&'static str> {
    REGISTRY
        .iter()
        .flat_map(|a| a.model_types.iter().copied())
        .collect()
}

/// Builds the network of `ctx.config.model_type`.
pub fn load(ctx: &LoadCtx<'_>) -> Result<Box<dyn Network>> {
    let config: &ModelConfig = ctx.config;
    match lookup(&config.model_type) {
        Some(arch) => (arch.load)(ctx),
        None => Err(unsupported(config)),
    }
}

/// The exit-5 error for a `model_type` no entry runs.
pub fn unsupported(config: &ModelConfig) -> Diagnostic {
    Diagnostic::error(
        "rmlx::snapshot::unsupported-architecture",
        format!("unsupported model_type `{}`", config.model_type),
    )
    .with_file(&config.path)
    .with_help(format!(
        "supported architectures: {}",
        supported_model_types().join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_model_type_has_one_entry() {
        let all = supported_model_types();
        for t in &all {
            assert_eq!(
                all.iter().filter(|x| *x == t).count(),
                1,
                "{t} registered twice"
            );
            assert!(lookup(t).is_some());
        }
        assert!(lookup("bogus").is_none());
    }
}

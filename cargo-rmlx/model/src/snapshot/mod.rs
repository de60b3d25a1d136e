//! Model directory I/O: `config.json`, safetensors weights (single or sharded, read with plain
//! reads), `generation_config.json`, and publishing a written directory ([`publish`]). Tokenizer files and the chat template are read by
//! [`crate::tokenize`] and [`crate::template`]; this module owns the rest of the directory.

pub mod config;
#[cfg(test)]
pub(crate) mod fuzz;
pub mod publish;
pub mod weights;

use std::path::{Path, PathBuf};

pub use config::{ModelConfig, QuantMode, QuantParams, Quantization, RopeScaling};
pub use weights::Weights;

use crate::diagnostic::{code, Diagnostic, Result};

/// An opened model directory.
#[derive(Debug)]
pub struct Snapshot {
    /// The directory.
    pub dir: PathBuf,
    /// Its `config.json`.
    pub config: ModelConfig,
    /// Its weights.
    pub weights: Weights,
    /// EOS ids from `generation_config.json`, if present.
    pub generation_eos_ids: Vec<u32>,
}

impl Snapshot {
    /// Opens a model directory: parses config.json, maps and validates the weights.
    pub fn open(dir: &Path) -> Result<Self> {
        if !dir.is_dir() {
            return Err(Diagnostic::error(
                code::Snapshot::NotFound,
                format!("model directory {} does not exist", dir.display()),
            )
            .with_file(dir));
        }
        let config = ModelConfig::from_dir(dir)?;
        let weights = Weights::open(dir)?;
        config.check_tensors(weights.names())?;
        let generation_eos_ids = generation_eos_ids(dir)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            config,
            weights,
            generation_eos_ids,
        })
    }

    /// Every EOS id the model declares: generation_config.json, then config.json.
    pub fn eos_ids(&self) -> Vec<u32> {
        let mut ids = self.generation_eos_ids.clone();
        for id in &self.config.eos_token_ids {
            if !ids.contains(id) {
                ids.push(*id);
            }
        }
        ids
    }
}

fn generation_eos_ids(dir: &Path) -> Result<Vec<u32>> {
    let path = dir.join("generation_config.json");
    if !path.is_file() {
        return Ok(Vec::new());
    }
    let (_, v) = config::read_json(&path, code::Snapshot::GenerationConfig)?;
    match v.get("eos_token_id") {
        None | Some(serde_json::Value::Null) => Ok(Vec::new()),
        Some(ids) => config::token_ids(ids).ok_or_else(|| {
            Diagnostic::error(
                code::Snapshot::GenerationConfig,
                format!("`eos_token_id` must be token ids (integers below 2^32), found {ids}"),
            )
            .with_file(&path)
        }),
    }
}

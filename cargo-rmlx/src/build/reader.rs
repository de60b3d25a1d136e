//! Reads source tensors with plain positioned reads instead of the memory map the loader
//! uses, so a build's resident memory is about one module, not the whole source: pages of a
//! memory-mapped file stay in the process's RSS once touched, which for a 7B model would
//! be gigabytes. The headers were already validated by [`crate::snapshot::Weights::open`].

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use mlx_rs::{Array, Dtype};
use serde_json::Value;

use super::quant::dtype_size;
use crate::diagnostic::{Diagnostic, Result};
use crate::snapshot::Weights;

struct Entry {
    file: PathBuf,
    /// Absolute byte offset of the data.
    start: u64,
    dtype: Dtype,
    shape: Vec<i32>,
}

/// Where every tensor of a source lives.
pub struct TensorReader {
    entries: HashMap<String, Entry>,
}

fn io(what: &str, path: &Path, e: &std::io::Error) -> Diagnostic {
    Diagnostic::io("rmlx::build::io", what, path, e)
}

fn st_dtype(s: &str) -> Option<Dtype> {
    Some(match s {
        "BOOL" => Dtype::Bool,
        "U8" => Dtype::Uint8,
        "I8" => Dtype::Int8,
        "U16" => Dtype::Uint16,
        "I16" => Dtype::Int16,
        "U32" => Dtype::Uint32,
        "I32" => Dtype::Int32,
        "U64" => Dtype::Uint64,
        "I64" => Dtype::Int64,
        "F16" => Dtype::Float16,
        "BF16" => Dtype::Bfloat16,
        "F32" => Dtype::Float32,
        "F64" => Dtype::Float64,
        _ => return None,
    })
}

impl TensorReader {
    /// Indexes the files of `weights` (already validated) by reading their headers.
    pub fn new(weights: &Weights) -> Result<Self> {
        let mut files: Vec<PathBuf> = weights
            .names()
            .filter_map(|n| weights.file_of(n).map(Path::to_path_buf))
            .collect();
        files.sort();
        files.dedup();
        let mut entries = HashMap::new();
        for path in files {
            let mut f = File::open(&path).map_err(|e| io("cannot open", &path, &e))?;
            let mut len = [0u8; 8];
            f.read_exact(&mut len)
                .map_err(|e| io("cannot read", &path, &e))?;
            let n = u64::from_le_bytes(len);
            let mut header = vec![0u8; n as usize];
            f.read_exact(&mut header)
                .map_err(|e| io("cannot read", &path, &e))?;
            let bad = || {
                Diagnostic::error(
                    "rmlx::build::io",
                    format!("{} has an unexpected safetensors header", path.display()),
                )
                .with_file(&path)
            };
            let v: Value = serde_json::from_slice(&header).map_err(|_| bad())?;
            let map = v.as_object().ok_or_else(bad)?;
            for (name, t) in map {
                if name == "__metadata__" {
                    continue;
                }
                let dtype = t["dtype"].as_str().and_then(st_dtype).ok_or_else(bad)?;
                let shape: Vec<i32> = t["shape"]
                    .as_array()
                    .ok_or_else(bad)?
                    .iter()
                    .map(|d| d.as_u64().map(|d| d as i32))
                    .collect::<Option<_>>()
                    .ok_or_else(bad)?;
                let start = t["data_offsets"][0].as_u64().ok_or_else(bad)?;
                entries.insert(
                    name.clone(),
                    Entry {
                        file: path.clone(),
                        start: 8 + n + start,
                        dtype,
                        shape,
                    },
                );
            }
        }
        Ok(Self { entries })
    }

    /// Reads tensor `name` into a new MLX array (in its stored dtype).
    pub fn array(&self, name: &str) -> Result<Array> {
        let e = self.entries.get(name).ok_or_else(|| {
            Diagnostic::error(
                "rmlx::build::internal",
                format!("tensor `{name}` is not in the source"),
            )
        })?;
        let count: usize = e.shape.iter().map(|&d| d as usize).product();
        let mut buf = vec![0u8; count * dtype_size(e.dtype)];
        let mut f = File::open(&e.file).map_err(|err| io("cannot open", &e.file, &err))?;
        f.seek(SeekFrom::Start(e.start))
            .and_then(|_| f.read_exact(&mut buf))
            .map_err(|err| io("cannot read", &e.file, &err))?;
        // SAFETY: `buf` holds exactly `count` elements of `dtype` (sizes validated when the
        // weights were opened); MLX copies the data.
        Ok(unsafe { Array::from_raw_data(buf.as_ptr().cast(), &e.shape, e.dtype) })
    }
}

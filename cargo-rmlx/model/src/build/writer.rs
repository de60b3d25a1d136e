//! Streaming safetensors writer: the header (names, dtypes, shapes, offsets) is known up
//! front, tensor bytes are written one at a time as they are produced, so peak memory stays
//! around one module. Shards like mlx-lm (`model.safetensors`, or
//! `model-0000i-of-0000n.safetensors` past the shard size, a new shard starting when the next
//! tensor would overflow the current one) and always `model.safetensors.index.json` with
//! `total_size`, `total_parameters` and a sorted `weight_map`, as `mlx_lm convert` writes it.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use mlx_rs::Dtype;
use serde_json::{json, Map, Value};

use super::pyjson;
use crate::diagnostic::{code, Diagnostic, Result};
use crate::mlx::quant::dtype_size;

/// mlx-lm's shard size (`MAX_FILE_SIZE_GB = 5`, in GiB).
pub const DEFAULT_MAX_SHARD_BYTES: u64 = 5 << 30;

/// One tensor of the output.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorSpec {
    /// Name in the safetensors header.
    pub name: String,
    /// Element type.
    pub dtype: Dtype,
    /// Row-major shape.
    pub shape: Vec<usize>,
    /// Parameters it counts for in `total_parameters` (mlx-lm counts a quantized weight by
    /// its unpacked size and scales/biases not at all).
    pub parameters: u64,
}

impl TensorSpec {
    /// Size in bytes.
    pub fn nbytes(&self) -> u64 {
        self.shape.iter().product::<usize>() as u64 * dtype_size(self.dtype) as u64
    }
}

fn st_name(d: Dtype) -> &'static str {
    match d {
        Dtype::Bool => "BOOL",
        Dtype::Uint8 => "U8",
        Dtype::Int8 => "I8",
        Dtype::Uint16 => "U16",
        Dtype::Int16 => "I16",
        Dtype::Uint32 => "U32",
        Dtype::Int32 => "I32",
        Dtype::Uint64 => "U64",
        Dtype::Int64 => "I64",
        Dtype::Float16 => "F16",
        Dtype::Bfloat16 => "BF16",
        Dtype::Float32 => "F32",
        Dtype::Float64 => "F64",
        _ => "UNKNOWN",
    }
}

/// Splits tensors (in write order) into shards the way mlx-lm's `make_shards` does.
pub fn plan_shards(tensors: &[TensorSpec], max_bytes: u64) -> Vec<std::ops::Range<usize>> {
    let mut shards: Vec<std::ops::Range<usize>> = Vec::new();
    let mut size = 0u64;
    for (i, t) in tensors.iter().enumerate() {
        let n = t.nbytes();
        match shards.last_mut() {
            Some(last) if size + n <= max_bytes => {
                last.end = i + 1;
                size += n;
            }
            _ => {
                shards.push(i..i + 1);
                size = n;
            }
        }
    }
    shards
}

/// File name of shard `i` (0-based) of `n`.
pub fn shard_name(i: usize, n: usize) -> String {
    if n <= 1 {
        "model.safetensors".to_string()
    } else {
        format!("model-{:05}-of-{:05}.safetensors", i + 1, n)
    }
}

struct Open {
    file: BufWriter<File>,
    path: PathBuf,
    end: usize,
}

/// Writes the tensors of `specs` in order into `dir`.
pub struct Writer {
    dir: PathBuf,
    specs: Vec<TensorSpec>,
    shards: Vec<std::ops::Range<usize>>,
    next: usize,
    shard: usize,
    open: Option<Open>,
    /// File names written so far.
    pub files: Vec<String>,
}

fn io(what: &str, path: &Path, e: &std::io::Error) -> Diagnostic {
    Diagnostic::io(code::Build::Io, what, path, e)
}

impl Writer {
    /// Plans the shards; nothing is written until the first tensor.
    pub fn new(dir: &Path, specs: Vec<TensorSpec>, max_shard_bytes: u64) -> Self {
        let shards = plan_shards(&specs, max_shard_bytes);
        Self {
            dir: dir.to_path_buf(),
            specs,
            shards,
            next: 0,
            shard: 0,
            open: None,
            files: Vec::new(),
        }
    }

    /// Number of shard files.
    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }

    fn open_shard(&mut self) -> Result<()> {
        let range = self.shards[self.shard].clone();
        let name = shard_name(self.shard, self.shards.len());
        let path = self.dir.join(&name);
        let mut header = Map::new();
        header.insert("__metadata__".into(), json!({"format": "mlx"}));
        let mut offset = 0u64;
        for t in &self.specs[range.clone()] {
            let n = t.nbytes();
            header.insert(
                t.name.clone(),
                json!({
                    "dtype": st_name(t.dtype),
                    "shape": t.shape,
                    "data_offsets": [offset, offset + n],
                }),
            );
            offset += n;
        }
        let mut text = serde_json::to_string(&Value::Object(header)).map_err(|e| {
            Diagnostic::error(code::Build::Io, format!("cannot encode a header: {e}"))
        })?;
        // Pad with spaces so the data starts 8-byte aligned (as the safetensors crate does).
        while (8 + text.len()) % 8 != 0 {
            text.push(' ');
        }
        let file = File::create(&path).map_err(|e| io("cannot create", &path, &e))?;
        let mut file = BufWriter::with_capacity(1 << 20, file);
        file.write_all(&(text.len() as u64).to_le_bytes())
            .and_then(|_| file.write_all(text.as_bytes()))
            .map_err(|e| io("cannot write", &path, &e))?;
        self.files.push(name);
        self.open = Some(Open {
            file,
            path,
            end: range.end,
        });
        Ok(())
    }

    fn close_shard(&mut self) -> Result<()> {
        if let Some(mut o) = self.open.take() {
            o.file
                .flush()
                .map_err(|e| io("cannot write", &o.path, &e))?;
            let f = o
                .file
                .into_inner()
                .map_err(|e| io("cannot write", &o.path, e.error()))?;
            f.sync_all().map_err(|e| io("cannot sync", &o.path, &e))?;
            self.shard += 1;
        }
        Ok(())
    }

    /// The spec of the tensor the writer expects next.
    pub fn expected(&self) -> Option<&TensorSpec> {
        self.specs.get(self.next)
    }

    /// Writes the next tensor; `name` and the byte count must match the plan.
    pub fn write(&mut self, name: &str, bytes: &[u8]) -> Result<()> {
        let spec = self.specs.get(self.next).ok_or_else(|| {
            Diagnostic::error(
                code::Build::Internal,
                format!("tensor `{name}` written past the plan"),
            )
        })?;
        if spec.name != name || spec.nbytes() != bytes.len() as u64 {
            return Err(Diagnostic::error(
                code::Build::Internal,
                format!(
                    "tensor `{name}` ({} bytes) written where `{}` ({} bytes) was planned",
                    bytes.len(),
                    spec.name,
                    spec.nbytes()
                ),
            ));
        }
        if self.open.is_none() {
            self.open_shard()?;
        }
        let o = self.open.as_mut().expect("a shard is open");
        o.file
            .write_all(bytes)
            .map_err(|e| io("cannot write", &o.path, &e))?;
        self.next += 1;
        if self.next == o.end {
            self.close_shard()?;
        }
        Ok(())
    }

    /// Checks that every planned tensor was written and writes the index.
    pub fn finish(mut self) -> Result<Vec<String>> {
        if self.next != self.specs.len() {
            return Err(Diagnostic::error(
                code::Build::Internal,
                format!("{} of {} tensors written", self.next, self.specs.len()),
            ));
        }
        self.close_shard()?;
        let n = self.shards.len();
        let mut map: Vec<(&str, String)> = Vec::new();
        for (i, r) in self.shards.iter().enumerate() {
            for t in &self.specs[r.clone()] {
                map.push((&t.name, shard_name(i, n)));
            }
        }
        map.sort();
        let mut weight_map = Map::new();
        for (k, v) in map {
            weight_map.insert(k.to_string(), Value::String(v));
        }
        let total_size: u64 = self.specs.iter().map(TensorSpec::nbytes).sum();
        let total_parameters: u64 = self.specs.iter().map(|t| t.parameters).sum();
        let index = json!({
            "metadata": {"total_size": total_size, "total_parameters": total_parameters},
            "weight_map": Value::Object(weight_map),
        });
        let name = "model.safetensors.index.json";
        let path = self.dir.join(name);
        std::fs::write(&path, pyjson::dumps(&index, 4)?)
            .map_err(|e| io("cannot write", &path, &e))?;
        self.files.push(name.to_string());
        Ok(self.files)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, n: usize) -> TensorSpec {
        TensorSpec {
            name: name.into(),
            dtype: Dtype::Uint8,
            shape: vec![n],
            parameters: n as u64,
        }
    }

    #[test]
    fn shards_like_mlx_lm() {
        let t = vec![
            spec("a", 6),
            spec("b", 4),
            spec("c", 1),
            spec("d", 20),
            spec("e", 1),
        ];
        assert_eq!(plan_shards(&t, 10), vec![0..2, 2..3, 3..4, 4..5]);
        assert_eq!(plan_shards(&t, 100), vec![0..5]);
        assert_eq!(shard_name(0, 1), "model.safetensors");
        assert_eq!(shard_name(1, 3), "model-00002-of-00003.safetensors");
    }

    #[test]
    fn writes_valid_safetensors() {
        let dir = tempfile::tempdir().unwrap();
        let specs = vec![spec("x", 3), spec("y", 5)];
        let mut w = Writer::new(dir.path(), specs, 4);
        w.write("x", &[1, 2, 3]).unwrap();
        assert!(w.write("z", &[0; 5]).is_err());
        w.write("y", &[4, 5, 6, 7, 8]).unwrap();
        let files = w.finish().unwrap();
        assert_eq!(
            files,
            [
                "model-00001-of-00002.safetensors",
                "model-00002-of-00002.safetensors",
                "model.safetensors.index.json"
            ]
        );
        let bytes = std::fs::read(dir.path().join(&files[1])).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        assert_eq!(st.tensor("y").unwrap().data(), &[4, 5, 6, 7, 8]);
        let index: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.path().join(&files[2])).unwrap())
                .unwrap();
        assert_eq!(index["metadata"]["total_size"], 8);
        assert_eq!(index["weight_map"]["y"], files[1].as_str());
    }
}

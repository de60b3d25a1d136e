//! Streaming safetensors writer, byte-identical to `mlx_lm convert`'s files: the header
//! (names, dtypes, shapes, offsets) is known up front, tensor bytes are written one at a
//! time as they are produced, each at its place in the file, so peak memory stays around one
//! module. Shards like mlx-lm: the tensors, in mlx-lm's parameter order, split into
//! `model.safetensors` or `model-0000i-of-0000n.safetensors` (a new shard starting when the
//! next tensor would overflow the current one); inside a shard, the data lies in the order
//! MLX's `save_safetensors` gives it ([`crate::mlx::save_order`]) and the header is MLX's (sorted
//! keys, compact, unpadded). Always `model.safetensors.index.json` with `total_size`,
//! `total_parameters` and a sorted `weight_map`, as `mlx_lm convert` writes it.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use mlx_rs::Dtype;
use serde_json::{json, Map, Value};

use super::pyjson;
use crate::diagnostic::{code, Diagnostic, Result};
use crate::mlx::quant::dtype_size;
use crate::mlx::save_order;

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

/// Where a planned tensor goes.
#[derive(Debug, Clone, Copy)]
struct Slot {
    /// Its index in the plan.
    index: usize,
    /// Its shard.
    shard: usize,
    /// Offset of its data from the start of the file.
    offset: u64,
    /// Its size in bytes.
    len: u64,
}

/// The header and data layout of one shard.
struct Layout {
    /// `8-byte length + header` bytes.
    prefix: Vec<u8>,
    /// Spec indices in the order their data lies in the file.
    order: Vec<usize>,
    /// Total file size.
    size: u64,
}

/// The header of a shard whose tensors lie in `order`, as MLX writes it: compact JSON with
/// every object's keys sorted (`__metadata__` among the tensor names), no padding.
fn layout(specs: &[TensorSpec], range: std::ops::Range<usize>) -> Result<Layout> {
    let names: Vec<&str> = specs[range.clone()]
        .iter()
        .map(|t| t.name.as_str())
        .collect();
    let order: Vec<usize> = save_order::file_order(&names)?
        .into_iter()
        .map(|i| range.start + i)
        .collect();
    let mut entries: BTreeMap<&str, Value> = BTreeMap::new();
    entries.insert("__metadata__", json!({"format": "mlx"}));
    let mut offset = 0u64;
    for &i in &order {
        let t = &specs[i];
        let n = t.nbytes();
        let mut entry = Map::new();
        entry.insert("data_offsets".into(), json!([offset, offset + n]));
        entry.insert("dtype".into(), json!(st_name(t.dtype)));
        entry.insert("shape".into(), json!(t.shape));
        entries.insert(&t.name, Value::Object(entry));
        offset += n;
    }
    let text = serde_json::to_string(&entries)
        .map_err(|e| Diagnostic::error(code::Build::Io, format!("cannot encode a header: {e}")))?;
    let mut prefix = (text.len() as u64).to_le_bytes().to_vec();
    prefix.extend_from_slice(text.as_bytes());
    let size = prefix.len() as u64 + offset;
    Ok(Layout {
        prefix,
        order,
        size,
    })
}

/// Writes the planned tensors into `dir`, in any order: each shard file is created with its
/// header and full size up front, and every tensor's bytes go to their place in it.
pub struct Writer {
    dir: PathBuf,
    specs: Vec<TensorSpec>,
    shards: Vec<std::ops::Range<usize>>,
    slots: HashMap<String, Slot>,
    written: Vec<bool>,
    open: Vec<(File, PathBuf)>,
    /// File names written so far.
    pub files: Vec<String>,
}

fn io(what: &str, path: &Path, e: &std::io::Error) -> Diagnostic {
    Diagnostic::io(code::Build::Io, what, path, e)
}

impl Writer {
    /// Plans the shards of `specs` (given in mlx-lm's parameter order) and creates their
    /// files (headers written, data to come).
    pub fn create(dir: &Path, specs: Vec<TensorSpec>, max_shard_bytes: u64) -> Result<Self> {
        let shards = plan_shards(&specs, max_shard_bytes);
        let mut w = Self {
            dir: dir.to_path_buf(),
            written: vec![false; specs.len()],
            specs,
            shards,
            slots: HashMap::new(),
            open: Vec::new(),
            files: Vec::new(),
        };
        for shard in 0..w.shards.len() {
            w.create_shard(shard)?;
        }
        Ok(w)
    }

    /// Number of shard files.
    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }

    fn create_shard(&mut self, shard: usize) -> Result<()> {
        let layout = layout(&self.specs, self.shards[shard].clone())?;
        let mut offset = layout.prefix.len() as u64;
        for &i in &layout.order {
            let len = self.specs[i].nbytes();
            let slot = Slot {
                index: i,
                shard,
                offset,
                len,
            };
            if self
                .slots
                .insert(self.specs[i].name.clone(), slot)
                .is_some()
            {
                return Err(Diagnostic::error(
                    code::Build::Internal,
                    format!("tensor `{}` planned twice", self.specs[i].name),
                ));
            }
            offset += len;
        }
        let name = shard_name(shard, self.shards.len());
        let path = self.dir.join(&name);
        let mut file = File::create(&path).map_err(|e| io("cannot create", &path, &e))?;
        file.write_all(&layout.prefix)
            .and_then(|_| file.set_len(layout.size))
            .map_err(|e| io("cannot write", &path, &e))?;
        self.files.push(name);
        self.open.push((file, path));
        Ok(())
    }

    /// Writes tensor `name`; it must be planned, not yet written, and `bytes` its size.
    pub fn write(&mut self, name: &str, bytes: &[u8]) -> Result<()> {
        let slot = self.slots.get(name).copied().ok_or_else(|| {
            Diagnostic::error(
                code::Build::Internal,
                format!("tensor `{name}` was not planned"),
            )
        })?;
        let index = slot.index;
        if slot.len != bytes.len() as u64 || self.written[index] {
            return Err(Diagnostic::error(
                code::Build::Internal,
                format!(
                    "tensor `{name}` ({} bytes) written where {} bytes were planned{}",
                    bytes.len(),
                    slot.len,
                    if self.written[index] { ", again" } else { "" }
                ),
            ));
        }
        let (file, path) = &mut self.open[slot.shard];
        file.seek(SeekFrom::Start(slot.offset))
            .and_then(|_| file.write_all(bytes))
            .map_err(|e| io("cannot write", path, &e))?;
        self.written[index] = true;
        Ok(())
    }

    /// Checks that every planned tensor was written, syncs the shards and writes the index.
    pub fn finish(mut self) -> Result<Vec<String>> {
        let missing: Vec<&str> = self
            .specs
            .iter()
            .zip(&self.written)
            .filter(|(_, w)| !**w)
            .map(|(t, _)| t.name.as_str())
            .collect();
        if !missing.is_empty() {
            return Err(Diagnostic::error(
                code::Build::Internal,
                format!(
                    "{} of {} tensors not written (first: `{}`)",
                    missing.len(),
                    self.specs.len(),
                    missing[0]
                ),
            ));
        }
        for (file, path) in std::mem::take(&mut self.open) {
            file.sync_all().map_err(|e| io("cannot sync", &path, &e))?;
        }
        self.write_index()?;
        Ok(self.files)
    }

    /// `model.safetensors.index.json` as mlx-lm writes it.
    fn write_index(&mut self) -> Result<()> {
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
        Ok(())
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
    fn writes_valid_safetensors_in_any_order() {
        let dir = tempfile::tempdir().unwrap();
        let specs = vec![spec("x", 3), spec("y", 5), spec("z", 1)];
        let mut w = Writer::create(dir.path(), specs, 4).unwrap();
        assert!(w.write("y", &[0; 4]).is_err(), "wrong size");
        assert!(w.write("q", &[0; 5]).is_err(), "not planned");
        w.write("z", &[9]).unwrap();
        w.write("y", &[4, 5, 6, 7, 8]).unwrap();
        assert!(w.write("z", &[9]).is_err(), "written twice");
        w.write("x", &[1, 2, 3]).unwrap();
        let files = w.finish().unwrap();
        assert_eq!(
            files,
            [
                "model-00001-of-00003.safetensors",
                "model-00002-of-00003.safetensors",
                "model-00003-of-00003.safetensors",
                "model.safetensors.index.json"
            ]
        );
        let bytes = std::fs::read(dir.path().join(&files[1])).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        assert_eq!(st.tensor("y").unwrap().data(), &[4, 5, 6, 7, 8]);
        let header = std::str::from_utf8(&bytes[8..bytes.len() - 5]).unwrap();
        assert_eq!(
            header,
            r#"{"__metadata__":{"format":"mlx"},"y":{"data_offsets":[0,5],"dtype":"U8","shape":[5]}}"#
        );
        let index: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.path().join(&files[3])).unwrap())
                .unwrap();
        assert_eq!(index["metadata"]["total_size"], 9);
        assert_eq!(index["weight_map"]["y"], files[1].as_str());
    }

    #[test]
    fn unwritten_tensors_fail_the_finish() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = Writer::create(dir.path(), vec![spec("x", 3), spec("y", 5)], 100).unwrap();
        w.write("x", &[1, 2, 3]).unwrap();
        let err = w.finish().unwrap_err();
        assert!(err
            .to_string()
            .contains("1 of 2 tensors not written (first: `y`)"));
    }
}

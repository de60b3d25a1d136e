//! Safetensors weights of a model directory: single files and shards (with
//! `model.safetensors.index.json`), memory-mapped, validated up front (truncation, offsets,
//! dtypes), and handed out as MLX arrays with shape checks that name the tensor and file.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use mlx_rs::{Array, Dtype};
use safetensors::tensor::Dtype as StDtype;

use crate::diagnostic::{Diagnostic, Result};

/// Where one tensor lives.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    /// Index into the shard list.
    file: usize,
    /// Element type in the file.
    pub dtype: StDtype,
    /// Row-major shape.
    pub shape: Vec<usize>,
    /// Absolute byte range in the file.
    range: std::ops::Range<usize>,
}

/// All tensors of a model directory, memory-mapped.
pub struct Weights {
    files: Vec<(PathBuf, Mmap)>,
    tensors: BTreeMap<String, TensorInfo>,
}

impl std::fmt::Debug for Weights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Weights")
            .field(
                "files",
                &self.files.iter().map(|f| &f.0).collect::<Vec<_>>(),
            )
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

const CODE_IO: &str = "rmlx::snapshot::io";
const CODE_TRUNCATED: &str = "rmlx::snapshot::truncated";
const CODE_MISSING: &str = "rmlx::snapshot::missing-tensor";
const CODE_SHAPE: &str = "rmlx::snapshot::shape-mismatch";

impl Weights {
    /// Opens every safetensors file of `dir` (the shards named by
    /// `model.safetensors.index.json`, else every `*.safetensors`).
    pub fn open(dir: &Path) -> Result<Self> {
        let files = shard_files(dir)?;
        let mut out = Weights {
            files: Vec::new(),
            tensors: BTreeMap::new(),
        };
        for path in files {
            let index = out.files.len();
            let (mmap, tensors) = map_file(&path)?;
            for (name, mut info) in tensors {
                info.file = index;
                if out.tensors.insert(name.clone(), info).is_some() {
                    return Err(Diagnostic::error(
                        "rmlx::snapshot::duplicate-tensor",
                        format!("tensor `{name}` appears in more than one shard"),
                    )
                    .with_file(&path));
                }
            }
            out.files.push((path, mmap));
        }
        Ok(out)
    }

    /// Names of all tensors.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    /// Whether a tensor exists.
    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// Metadata of a tensor.
    pub fn info(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.get(name)
    }

    /// The file a tensor is stored in.
    pub fn file_of(&self, name: &str) -> Option<&Path> {
        self.tensors
            .get(name)
            .map(|i| self.files[i.file].0.as_path())
    }

    /// The directory's first weights file (for messages about missing tensors).
    fn any_file(&self) -> Option<&Path> {
        self.files.first().map(|f| f.0.as_path())
    }

    /// Loads tensor `name` as an MLX array. `expected` checks the shape (`None` entries are
    /// wildcards); `cast` converts floating tensors to that dtype (integer tensors, e.g.
    /// packed quantized weights, are returned as stored).
    pub fn array(
        &self,
        name: &str,
        expected: &[Option<usize>],
        cast: Option<Dtype>,
    ) -> Result<Array> {
        let info = self.tensors.get(name).ok_or_else(|| {
            let mut d = Diagnostic::error(CODE_MISSING, format!("missing tensor `{name}`"))
                .with_help("the weights do not match config.json (wrong architecture or an incomplete conversion?)");
            if let Some(f) = self.any_file() {
                d = d.with_file(f);
            }
            d
        })?;
        let path = &self.files[info.file].0;
        let shape_ok = info.shape.len() == expected.len()
            && info
                .shape
                .iter()
                .zip(expected)
                .all(|(have, want)| want.is_none_or(|w| w == *have));
        if !shape_ok {
            let want: Vec<String> = expected
                .iter()
                .map(|d| d.map_or_else(|| "_".to_string(), |d| d.to_string()))
                .collect();
            return Err(Diagnostic::error(
                CODE_SHAPE,
                format!(
                    "tensor `{name}` has shape {:?}, expected [{}]",
                    info.shape,
                    want.join(", ")
                ),
            )
            .with_file(path)
            .with_help("config.json and the weights disagree; was the model converted for another configuration?"));
        }
        let dtype = mlx_dtype(info.dtype).ok_or_else(|| {
            Diagnostic::error(
                "rmlx::snapshot::unsupported-dtype",
                format!("tensor `{name}` has unsupported dtype {:?}", info.dtype),
            )
            .with_file(path)
        })?;
        let bytes = &self.files[info.file].1[info.range.clone()];
        let shape: Vec<i32> = info.shape.iter().map(|&d| d as i32).collect();
        // SAFETY: `bytes` holds exactly prod(shape) elements of `dtype` (validated in
        // `map_file`); MLX copies the data, so no alignment or lifetime requirement remains.
        let array = unsafe { Array::from_raw_data(bytes.as_ptr().cast(), &shape, dtype) };
        crate::progress::bytes_read(bytes.len() as u64);
        match cast {
            Some(to) if is_float(dtype) && to != dtype => {
                array.as_dtype(to).map_err(|e| mlx_error(name, path, e))
            }
            _ => Ok(array),
        }
    }
}

/// Wraps an MLX exception raised while handling a tensor.
pub fn mlx_error(name: &str, path: &Path, e: mlx_rs::error::Exception) -> Diagnostic {
    Diagnostic::error(
        "rmlx::engine::mlx",
        format!("MLX failed on tensor `{name}`: {e}"),
    )
    .with_file(path)
}

fn is_float(d: Dtype) -> bool {
    matches!(
        d,
        Dtype::Float16 | Dtype::Bfloat16 | Dtype::Float32 | Dtype::Float64
    )
}

fn mlx_dtype(d: StDtype) -> Option<Dtype> {
    Some(match d {
        StDtype::BOOL => Dtype::Bool,
        StDtype::U8 => Dtype::Uint8,
        StDtype::I8 => Dtype::Int8,
        StDtype::U16 => Dtype::Uint16,
        StDtype::I16 => Dtype::Int16,
        StDtype::U32 => Dtype::Uint32,
        StDtype::I32 => Dtype::Int32,
        StDtype::U64 => Dtype::Uint64,
        StDtype::I64 => Dtype::Int64,
        StDtype::F16 => Dtype::Float16,
        StDtype::BF16 => Dtype::Bfloat16,
        StDtype::F32 => Dtype::Float32,
        StDtype::F64 => Dtype::Float64,
        _ => return None,
    })
}

fn elem_size(d: StDtype) -> Option<usize> {
    mlx_dtype(d).map(|_| d.bitsize() / 8)
}

/// The safetensors files of a model directory, in a stable order.
fn shard_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let index = dir.join("model.safetensors.index.json");
    if index.is_file() {
        let (_, value) = super::config::read_json(&index, "rmlx::snapshot::index")?;
        let map = value
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| {
                Diagnostic::error(
                    "rmlx::snapshot::index",
                    "model.safetensors.index.json has no `weight_map` object",
                )
                .with_file(&index)
            })?;
        let mut names: Vec<&str> = map.values().filter_map(|v| v.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        let mut files = Vec::new();
        for n in names {
            let p = dir.join(n);
            if !p.is_file() {
                return Err(Diagnostic::error(
                    "rmlx::snapshot::missing-weights",
                    format!("shard `{n}` named by the index is missing"),
                )
                .with_file(&index));
            }
            files.push(p);
        }
        return Ok(files);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Diagnostic::io(CODE_IO, "cannot list", dir, &e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension().is_some_and(|x| x == "safetensors")
                && !p
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        })
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(Diagnostic::error(
            "rmlx::snapshot::missing-weights",
            format!("no *.safetensors weights in {}", dir.display()),
        )
        .with_file(dir.join("model.safetensors"))
        .with_help("convert the model first (`cargo rmlx convert` / `cargo rmlx build`)"));
    }
    Ok(files)
}

/// Maps one safetensors file and validates its header and tensor ranges.
fn map_file(path: &Path) -> Result<(Mmap, HashMap<String, TensorInfo>)> {
    let file = File::open(path).map_err(|e| Diagnostic::io(CODE_IO, "cannot open", path, &e))?;
    // SAFETY: the file is opened read-only; a concurrent truncation by another process is
    // outside what any loader can defend against (same as every mmap-based loader).
    let mmap = unsafe { Mmap::map(&file) }
        .map_err(|e| Diagnostic::io(CODE_IO, "cannot memory-map", path, &e))?;
    let truncated = |what: String| {
        Diagnostic::error(
            CODE_TRUNCATED,
            format!("{} is truncated: {what}", path.display()),
        )
        .with_file(path)
        .with_help(
            "the file was cut short (interrupted download or copy?); fetch or convert it again",
        )
    };
    if mmap.len() < 8 {
        return Err(truncated(format!("{} bytes, no header", mmap.len())));
    }
    let header_len = u64::from_le_bytes(mmap[..8].try_into().expect("8 bytes")) as usize;
    if header_len > mmap.len() - 8 {
        return Err(truncated(format!(
            "header needs {header_len} bytes, the file has {}",
            mmap.len() - 8
        )));
    }
    let (_, meta) = safetensors::SafeTensors::read_metadata(&mmap[..])
        .map_err(|e| {
            Diagnostic::error(
                "rmlx::snapshot::bad-safetensors",
                format!("{} is not a valid safetensors file: {e}", path.display()),
            )
            .with_file(path)
        })
        // read_metadata also rejects a buffer shorter than the data it describes; report that
        // case as truncation, naming the tensor that runs past the end.
        .map_err(|d| describe_truncation(path, &mmap, header_len).unwrap_or(d))?;
    let data_start = 8 + header_len;
    let mut out = HashMap::new();
    for (name, t) in meta.tensors() {
        let (start, end) = t.data_offsets;
        let count: usize = t.shape.iter().product();
        let size = elem_size(t.dtype).map(|s| s * count);
        if size.is_some_and(|s| s != end - start) {
            return Err(Diagnostic::error(
                "rmlx::snapshot::bad-safetensors",
                format!(
                    "tensor `{name}`: {:?} {:?} needs {} bytes, header says {}",
                    t.dtype,
                    t.shape,
                    size.unwrap_or(0),
                    end - start
                ),
            )
            .with_file(path));
        }
        if data_start + end > mmap.len() {
            return Err(truncated(format!(
                "tensor `{name}` ends at byte {}, the file has {}",
                data_start + end,
                mmap.len()
            )));
        }
        out.insert(
            name.clone(),
            TensorInfo {
                file: 0,
                dtype: t.dtype,
                shape: t.shape.clone(),
                range: data_start + start..data_start + end,
            },
        );
    }
    Ok((mmap, out))
}

/// When a header parses as JSON but its tensors run past the end of the file, names the first
/// such tensor.
fn describe_truncation(path: &Path, mmap: &[u8], header_len: usize) -> Option<Diagnostic> {
    let header: serde_json::Value = serde_json::from_slice(mmap.get(8..8 + header_len)?).ok()?;
    let data_len = mmap.len() - 8 - header_len;
    let (name, end) = header
        .as_object()?
        .iter()
        .filter(|(k, _)| *k != "__metadata__")
        .filter_map(|(k, v)| Some((k, v.get("data_offsets")?.get(1)?.as_u64()? as usize)))
        .filter(|(_, end)| *end > data_len)
        .min_by_key(|(_, end)| *end)?;
    Some(
        Diagnostic::error(
            CODE_TRUNCATED,
            format!(
                "{} is truncated: tensor `{name}` ends at byte {}, the file has {}",
                path.display(),
                8 + header_len + end,
                mmap.len()
            ),
        )
        .with_file(path)
        .with_help(
            "the file was cut short (interrupted download or copy?); fetch or convert it again",
        ),
    )
}

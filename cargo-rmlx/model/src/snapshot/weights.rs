//! Safetensors weights of a model directory: single files and shards (with
//! `model.safetensors.index.json`), validated up front (truncation, offsets, dtypes), and handed
//! out as MLX arrays with shape checks that name the tensor and file.
//!
//! Nothing is memory-mapped: a file truncated or rewritten in place while mapped would raise
//! SIGBUS in whichever thread touched it (a `cp new model.safetensors` under `serve --watch`).
//! Each tensor is read with one positioned read into a buffer that MLX copies from, so the
//! peak is the model plus one tensor; a short read (the file shrank since it was opened) is a
//! `rmlx::snapshot::truncated` error naming the file and the tensor. A loaded model keeps no
//! mapping of its files, so replacing them cannot hurt the version that is serving.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use mlx_rs::{Array, Dtype};
use safetensors::tensor::{Dtype as StDtype, Metadata};

use crate::diagnostic::{code, Code, Diagnostic, Result};

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
    range: std::ops::Range<u64>,
}

/// One opened safetensors file. The descriptor stays open so every tensor is read from the
/// file whose header was validated, even if the path is replaced by a rename meanwhile.
struct Shard {
    path: PathBuf,
    file: File,
}

/// All tensors of a model directory (headers read, data read on demand).
pub struct Weights {
    files: Vec<Shard>,
    tensors: BTreeMap<String, TensorInfo>,
    scratch: Mutex<Scratch>,
}

/// The buffer tensors are read into before MLX copies them: reused from tensor to tensor (no
/// fresh pages to fault in per tensor), freed once every tensor has been loaded.
#[derive(Default)]
struct Scratch {
    buf: Vec<u8>,
    loads: usize,
    /// Bytes of tensor data read so far (whole tensors and slices).
    bytes: u64,
}

impl Scratch {
    /// Counts one tensor (or slice) of `bytes` read; frees the buffer once all `tensors`
    /// were read.
    fn loaded(&mut self, bytes: u64, tensors: usize) {
        self.bytes += bytes;
        self.loads += 1;
        if self.loads >= tensors {
            self.buf = Vec::new();
        }
    }
}

impl std::fmt::Debug for Weights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Weights")
            .field(
                "files",
                &self.files.iter().map(|f| &f.path).collect::<Vec<_>>(),
            )
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

/// safetensors headers larger than this are rejected (the format's own limit).
const MAX_HEADER_BYTES: u64 = 100_000_000;

const CODE_IO: Code = Code::Snapshot(code::Snapshot::Io);
const CODE_TRUNCATED: Code = Code::Snapshot(code::Snapshot::Truncated);
const CODE_MISSING: Code = Code::Snapshot(code::Snapshot::MissingTensor);
const CODE_SHAPE: Code = Code::Snapshot(code::Snapshot::ShapeMismatch);

impl Weights {
    /// Opens every safetensors file of `dir` (the shards named by
    /// `model.safetensors.index.json`, else every `*.safetensors`).
    pub fn open(dir: &Path) -> Result<Self> {
        let files = shard_files(dir)?;
        let mut out = Weights {
            files: Vec::new(),
            tensors: BTreeMap::new(),
            scratch: Mutex::new(Scratch::default()),
        };
        for path in files {
            let index = out.files.len();
            let (file, tensors) = read_header(&path)?;
            for (name, mut info) in tensors {
                info.file = index;
                if out.tensors.insert(name.clone(), info).is_some() {
                    return Err(Diagnostic::error(
                        code::Snapshot::DuplicateTensor,
                        format!("tensor `{name}` appears in more than one shard"),
                    )
                    .with_file(&path));
                }
            }
            out.files.push(Shard { path, file });
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
            .map(|i| self.files[i.file].path.as_path())
    }

    /// The directory's first weights file (for messages about missing tensors).
    fn any_file(&self) -> Option<&Path> {
        self.files.first().map(|f| f.path.as_path())
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
        let info = self.info_or_missing(name)?;
        self.check_shape(name, info, expected)?;
        if cast == Some(Dtype::Float32) && matches!(info.dtype, StDtype::F16 | StDtype::BF16) {
            return self.read_array(name, info, true);
        }
        let array = self.load(name, info)?;
        self.cast(name, info, array, cast)
    }

    /// Bytes of tensor data read so far (a tensor-parallel rank reads only its slices).
    pub fn bytes_read(&self) -> u64 {
        self.scratch
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .bytes
    }

    /// Bytes of tensor data stored.
    pub fn bytes_stored(&self) -> u64 {
        self.tensors
            .values()
            .map(|t| t.range.end - t.range.start)
            .sum()
    }

    /// The tensor `name`, or the error naming it as missing.
    fn info_or_missing(&self, name: &str) -> Result<&TensorInfo> {
        self.tensors.get(name).ok_or_else(|| {
            let mut d = Diagnostic::error(CODE_MISSING, format!("missing tensor `{name}`"))
                .with_help("the weights do not match config.json (wrong architecture or an incomplete conversion?)");
            if let Some(f) = self.any_file() {
                d = d.with_file(f);
            }
            d
        })
    }

    /// The [`Self::array`] error when `info`'s shape is not `expected` (`None`: any).
    fn check_shape(&self, name: &str, info: &TensorInfo, expected: &[Option<usize>]) -> Result<()> {
        let path = &self.files[info.file].path;
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
        Ok(())
    }

    /// `array` converted to `cast` when both are floating (see [`Self::array`]).
    fn cast(
        &self,
        name: &str,
        info: &TensorInfo,
        array: Array,
        cast: Option<Dtype>,
    ) -> Result<Array> {
        let path = &self.files[info.file].path;
        match cast {
            Some(to) if is_float(array.dtype()) && to != array.dtype() => {
                array.as_dtype(to).map_err(|e| mlx_error(name, path, e))
            }
            _ => Ok(array),
        }
    }

    /// Loads tensor `name` as an MLX array in its stored dtype and shape.
    pub fn raw_array(&self, name: &str) -> Result<Array> {
        let info = self
            .tensors
            .get(name)
            .ok_or_else(|| Diagnostic::error(CODE_MISSING, format!("missing tensor `{name}`")))?;
        self.load(name, info)
    }

    /// MLX's dtype of tensor `name` and `shape` (its own or a slice's) as MLX dimensions.
    fn mlx_layout(
        &self,
        name: &str,
        info: &TensorInfo,
        shape: &[usize],
    ) -> Result<(Dtype, Vec<i32>)> {
        let path = &self.files[info.file].path;
        let dtype = mlx_dtype(info.dtype).ok_or_else(|| {
            Diagnostic::error(
                code::Snapshot::UnsupportedDtype,
                format!("tensor `{name}` has unsupported dtype {:?}", info.dtype),
            )
            .with_file(path)
        })?;
        let shape = shape
            .iter()
            .map(|&d| i32::try_from(d))
            .collect::<std::result::Result<Vec<i32>, _>>()
            .map_err(|_| {
                Diagnostic::error(
                    code::Snapshot::BadSafetensors,
                    format!("tensor `{name}` has a dimension above 2^31 ({shape:?})"),
                )
                .with_file(path)
            })?;
        Ok((dtype, shape))
    }

    /// Reads one tensor's bytes from its file (one positioned read) into a new MLX array.
    fn load(&self, name: &str, info: &TensorInfo) -> Result<Array> {
        self.read_array(name, info, false)
    }

    /// [`Self::load`]; with `widen`, a float16/bfloat16 tensor comes back as float32, converted
    /// on the host while it is copied out of the read buffer. (MLX's cast is lazy: it would
    /// run at the first forward pass, one small evaluation per layer between the host
    /// kernels, on the critical path of a cold `cargo rmlx probe`'s prefill — BENCHMARKS.md,
    /// "Cold `cargo rmlx probe`".)
    fn read_array(&self, name: &str, info: &TensorInfo, widen: bool) -> Result<Array> {
        let shard = &self.files[info.file];
        let (dtype, shape) = self.mlx_layout(name, info, &info.shape)?;
        let mut scratch = self.scratch.lock().unwrap_or_else(PoisonError::into_inner);
        let bytes = read_range(shard, name, info.range.clone(), &mut scratch.buf)?;
        let array = if widen {
            Array::from_slice(&widened(bytes, dtype == Dtype::Bfloat16), &shape)
        } else {
            // SAFETY: `bytes` holds exactly prod(shape) elements of `dtype` (sizes validated
            // in `read_header`, length checked by `read_range`); MLX copies the data, so no
            // alignment or lifetime requirement remains.
            unsafe { Array::from_raw_data(bytes.as_ptr().cast(), &shape, dtype) }
        };
        crate::progress::bytes_read(bytes.len() as u64);
        let n = bytes.len() as u64;
        scratch.loaded(n, self.tensors.len());
        Ok(array)
    }
}

/// Little-endian float16 (`bf16`: bfloat16) values → float32 (exact), 1024 at a time.
fn widened(bytes: &[u8], bf16: bool) -> Vec<f32> {
    use half::slice::{HalfBitsSliceExt, HalfFloatSliceExt};
    let mut out = vec![0f32; bytes.len() / 2];
    let mut bits = [0u16; 1024];
    for (src, dst) in bytes.chunks(2048).zip(out.chunks_mut(1024)) {
        let bits = &mut bits[..dst.len()];
        for (b, s) in bits.iter_mut().zip(src.chunks_exact(2)) {
            *b = u16::from_le_bytes([s[0], s[1]]);
        }
        match bf16 {
            true => bits
                .reinterpret_cast::<half::bf16>()
                .convert_to_f32_slice(dst),
            false => bits
                .reinterpret_cast::<half::f16>()
                .convert_to_f32_slice(dst),
        }
    }
    out
}

mod slice; // `Weights::array_slice`: one rank's slice of a tensor (tensor parallelism)

/// Reads `range` of a shard into the start of `buf` (grown as needed); a short read means the
/// file shrank after it was opened.
fn read_range<'b>(
    shard: &Shard,
    name: &str,
    range: std::ops::Range<u64>,
    buf: &'b mut Vec<u8>,
) -> Result<&'b [u8]> {
    let len = usize::try_from(range.end - range.start).map_err(|_| {
        Diagnostic::error(
            code::Snapshot::BadSafetensors,
            format!("tensor `{name}` does not fit in memory"),
        )
        .with_file(&shard.path)
    })?;
    if buf.len() < len {
        buf.resize(len, 0);
    }
    let buf = &mut buf[..len];
    shard
        .file
        .read_exact_at(buf, range.start)
        .map_err(|e| {
            if e.kind() != std::io::ErrorKind::UnexpectedEof {
                return Diagnostic::io(CODE_IO, "cannot read", &shard.path, &e);
            }
            let now = shard.file.metadata().map(|m| m.len()).unwrap_or(0);
            Diagnostic::error(
                CODE_TRUNCATED,
                format!(
                    "{} is truncated: tensor `{name}` needs bytes {}..{}, the file now has {now} \
                     (it shrank while being read)",
                    shard.path.display(),
                    range.start,
                    range.end
                ),
            )
            .with_file(&shard.path)
            .with_help("the file was replaced or cut while the model loaded; load it again once it is complete")
        })?;
    Ok(buf)
}

/// Wraps an MLX exception raised while handling a tensor.
pub fn mlx_error(name: &str, path: &Path, e: mlx_rs::error::Exception) -> Diagnostic {
    Diagnostic::error(
        code::Engine::Mlx,
        format!("MLX failed on tensor `{name}`: {e}"),
    )
    .with_file(path)
    .with_cause(e)
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
        let (_, value) = super::config::read_json(&index, code::Snapshot::Index)?;
        let map = value
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| {
                Diagnostic::error(
                    code::Snapshot::Index,
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
                    code::Snapshot::MissingWeights,
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
            code::Snapshot::MissingWeights,
            format!("no *.safetensors weights in {}", dir.display()),
        )
        .with_file(dir.join("model.safetensors"))
        .with_help("convert the model first (`cargo rmlx convert` / `cargo rmlx build`)"));
    }
    Ok(files)
}

fn truncated(path: &Path, what: String) -> Diagnostic {
    Diagnostic::error(
        CODE_TRUNCATED,
        format!("{} is truncated: {what}", path.display()),
    )
    .with_file(path)
    .with_help("the file was cut short (interrupted download or copy?); fetch or convert it again")
}

fn bad_safetensors(path: &Path, what: String) -> Diagnostic {
    Diagnostic::error(
        code::Snapshot::BadSafetensors,
        format!("{} is not a valid safetensors file: {what}", path.display()),
    )
    .with_file(path)
}

/// Opens one safetensors file, reads its header and validates every tensor's byte range
/// against the element count and the file's length. Nothing else is read.
fn read_header(path: &Path) -> Result<(File, HashMap<String, TensorInfo>)> {
    let mut file =
        File::open(path).map_err(|e| Diagnostic::io(CODE_IO, "cannot open", path, &e))?;
    let meta = file
        .metadata()
        .map_err(|e| Diagnostic::io(CODE_IO, "cannot stat", path, &e))?;
    if meta.is_dir() {
        return Err(bad_safetensors(path, "it is a directory".into()));
    }
    let file_len = meta.len();
    let mut len_bytes = [0u8; 8];
    if file_len < 8 || file.read_exact(&mut len_bytes).is_err() {
        return Err(truncated(path, format!("{file_len} bytes, no header")));
    }
    let header_len = u64::from_le_bytes(len_bytes);
    if header_len > MAX_HEADER_BYTES {
        return Err(bad_safetensors(
            path,
            format!("header length {header_len} is above the limit {MAX_HEADER_BYTES}"),
        ));
    }
    if header_len > file_len - 8 {
        return Err(truncated(
            path,
            format!(
                "header needs {header_len} bytes, the file has {}",
                file_len - 8
            ),
        ));
    }
    let mut header = vec![0u8; header_len as usize];
    file.read_exact(&mut header)
        .map_err(|_| truncated(path, format!("the header of {header_len} bytes is cut")))?;
    let metadata: Metadata =
        serde_json::from_slice(&header).map_err(|e| bad_safetensors(path, e.to_string()))?;
    let data_start = 8 + header_len;
    let mut out = HashMap::new();
    let mut ranges: Vec<(String, std::ops::Range<u64>)> = Vec::new();
    for (name, t) in metadata.tensors() {
        let range = tensor_range(path, &name, t, data_start)?;
        ranges.push((name.clone(), range.clone()));
        out.insert(
            name.clone(),
            TensorInfo {
                file: 0,
                dtype: t.dtype,
                shape: t.shape.clone(),
                range,
            },
        );
    }
    // Name the first tensor (in file order) that runs past the end.
    if let Some((name, r)) = ranges
        .iter()
        .filter(|(_, r)| r.end > file_len)
        .min_by_key(|(_, r)| r.end)
    {
        return Err(truncated(
            path,
            format!(
                "tensor `{name}` ends at byte {}, the file has {file_len}",
                r.end
            ),
        ));
    }
    Ok((file, out))
}

/// The absolute byte range of one tensor, checked against its dtype and shape.
fn tensor_range(
    path: &Path,
    name: &str,
    t: &safetensors::tensor::TensorInfo,
    data_start: u64,
) -> Result<std::ops::Range<u64>> {
    let (start, end) = (t.data_offsets.0 as u64, t.data_offsets.1 as u64);
    let size = elem_size(t.dtype).and_then(|s| {
        t.shape
            .iter()
            .try_fold(s as u64, |acc, &d| acc.checked_mul(d as u64))
    });
    let bad = |what: String| bad_safetensors(path, format!("tensor `{name}`: {what}"));
    if end < start {
        return Err(bad(format!("data offsets {start}..{end} are reversed")));
    }
    match size {
        Some(size) if size != end - start => Err(bad(format!(
            "{:?} {:?} needs {size} bytes, header says {}",
            t.dtype,
            t.shape,
            end - start
        ))),
        None if elem_size(t.dtype).is_some() => Err(bad(format!("shape {:?} overflows", t.shape))),
        _ => Ok(data_start.saturating_add(start)..data_start.saturating_add(end)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_two_tensors(dir: &Path) -> PathBuf {
        let a: Vec<u8> = (0..64u8).collect();
        let b: Vec<u8> = (0..4096u32)
            .flat_map(|x| (x as f32).to_le_bytes())
            .collect();
        let views = vec![
            (
                "a".to_string(),
                safetensors::tensor::TensorView::new(StDtype::U8, vec![64], &a).unwrap(),
            ),
            (
                "b".to_string(),
                safetensors::tensor::TensorView::new(StDtype::F32, vec![64, 64], &b).unwrap(),
            ),
        ];
        let path = dir.join("model.safetensors");
        safetensors::serialize_to_file(views, None, &path).unwrap();
        path
    }

    /// (first, last) tensor names in file order.
    fn order(w: &Weights) -> (String, String) {
        let mut v: Vec<(&String, &TensorInfo)> = w.tensors.iter().collect();
        v.sort_by_key(|(_, i)| i.range.start);
        (v[0].0.clone(), v[1].0.clone())
    }

    #[test]
    fn a_file_that_shrinks_after_open_is_a_located_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_two_tensors(dir.path());
        let w = Weights::open(dir.path()).unwrap();
        let (first, last) = order(&w);
        // Truncated in place while "mapped": a memory map would raise SIGBUS here.
        let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len(w.tensors[&last].range.start + 1).unwrap();
        let err = w.raw_array(&last).unwrap_err();
        assert_eq!(err.code, CODE_TRUNCATED);
        assert!(
            err.message.contains(&format!("`{last}`")) && err.message.contains("shrank"),
            "{}",
            err.message
        );
        assert_eq!(err.file.as_deref(), Some(path.as_path()));
        // The tensor still inside the file reads fine.
        w.raw_array(&first).unwrap();
    }

    #[test]
    fn a_file_truncated_before_open_names_the_first_cut_tensor() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_two_tensors(dir.path());
        let (_, last) = order(&Weights::open(dir.path()).unwrap());
        let len = std::fs::metadata(&path).unwrap().len();
        let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len(len - 10).unwrap();
        let err = Weights::open(dir.path()).unwrap_err();
        assert_eq!(err.code, CODE_TRUNCATED);
        assert!(
            err.message.contains(&format!("tensor `{last}`")),
            "{}",
            err.message
        );
    }

    /// float16 and bfloat16 tensors read as float32 (widened on the host) hold exactly what
    /// MLX's own cast of the stored tensor gives, over more than one conversion chunk.
    #[test]
    fn half_tensors_widened_on_the_host_equal_mlx_cast() {
        let values = crate::engine::tests::values(3000, 9);
        let f16: Vec<u8> = values
            .iter()
            .flat_map(|&v| half::f16::from_f32(v * 300.0).to_le_bytes())
            .collect();
        let bf16: Vec<u8> = values
            .iter()
            .flat_map(|&v| half::bf16::from_f32(v * 1e30).to_le_bytes())
            .collect();
        let view = |dtype, data| safetensors::tensor::TensorView::new(dtype, vec![3000], data);
        let views = vec![
            ("h".to_string(), view(StDtype::F16, &f16).unwrap()),
            ("b".to_string(), view(StDtype::BF16, &bf16).unwrap()),
        ];
        let dir = tempfile::tempdir().unwrap();
        safetensors::serialize_to_file(views, None, &dir.path().join("model.safetensors")).unwrap();
        let w = Weights::open(dir.path()).unwrap();
        for name in ["h", "b"] {
            let got = w.array(name, &[Some(3000)], Some(Dtype::Float32)).unwrap();
            let want = w.raw_array(name).unwrap().as_dtype(Dtype::Float32).unwrap();
            assert_eq!(got.dtype(), Dtype::Float32);
            assert_eq!(got.as_slice::<f32>(), want.as_slice::<f32>(), "{name}");
        }
    }
}

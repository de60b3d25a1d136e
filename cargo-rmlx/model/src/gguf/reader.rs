//! The GGUF container: parsing and validating the header, the metadata key/value table and the
//! tensor infos of a GGUF v2/v3 file (little endian); typed metadata accessors and tensor
//! lookup ([`GgufFile`], [`MetaValue`], [`TensorView`]).
//!
//! Nothing here trusts the file: every count and length is checked against the bytes that are
//! actually left before anything is allocated, and every tensor's data range is checked against
//! the file size when the file is opened. The file is read with ordinary reads, never
//! memory-mapped, so a file truncated while it is read gives a `rmlx::gguf::truncated` error
//! naming the tensor instead of a SIGBUS.

use std::collections::HashMap;
use std::fmt;
use std::fs::File;
use std::io::{BufReader, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use tracing::warn;

use super::quants::GgmlType;
use crate::diagnostic::{code, Diagnostic, Result};

/// The four bytes every GGUF file starts with.
pub const GGUF_MAGIC: [u8; 4] = *b"GGUF";
/// Data-section alignment when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// GGML tensors have at most this many dimensions.
pub const MAX_DIMS: usize = 4;
/// Arrays nested deeper than this are rejected (real files nest at most once).
const MAX_ARRAY_DEPTH: usize = 4;
/// Element counts from the file preallocate at most this many entries.
const PREALLOC_MAX: usize = 1 << 16;

/// One metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum MetaValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    String(String),
    Array(Vec<MetaValue>),
}

impl MetaValue {
    /// The GGUF name of this value's type, for messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            MetaValue::U8(_) => "uint8",
            MetaValue::I8(_) => "int8",
            MetaValue::U16(_) => "uint16",
            MetaValue::I16(_) => "int16",
            MetaValue::U32(_) => "uint32",
            MetaValue::I32(_) => "int32",
            MetaValue::U64(_) => "uint64",
            MetaValue::I64(_) => "int64",
            MetaValue::F32(_) => "float32",
            MetaValue::F64(_) => "float64",
            MetaValue::Bool(_) => "bool",
            MetaValue::String(_) => "string",
            MetaValue::Array(_) => "array",
        }
    }

    /// Any integer value as i64 (u64 above i64::MAX is `None`).
    pub fn as_i64(&self) -> Option<i64> {
        Some(match *self {
            MetaValue::U8(v) => v.into(),
            MetaValue::I8(v) => v.into(),
            MetaValue::U16(v) => v.into(),
            MetaValue::I16(v) => v.into(),
            MetaValue::U32(v) => v.into(),
            MetaValue::I32(v) => v.into(),
            MetaValue::U64(v) => i64::try_from(v).ok()?,
            MetaValue::I64(v) => v,
            _ => return None,
        })
    }

    /// Any non-negative integer that fits in u32.
    pub fn as_u32(&self) -> Option<u32> {
        self.as_i64().and_then(|v| u32::try_from(v).ok())
    }

    /// Any integer or float value as f64.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            MetaValue::F32(v) => Some(v.into()),
            MetaValue::F64(v) => Some(v),
            _ => self.as_i64().map(|v| v as f64),
        }
    }

    /// The string, if this is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            MetaValue::String(s) => Some(s),
            _ => None,
        }
    }

    /// The bool, if this is one (integers 0/1 are accepted too).
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            MetaValue::Bool(b) => Some(*b),
            other => match other.as_i64()? {
                0 => Some(false),
                1 => Some(true),
                _ => None,
            },
        }
    }

    /// The elements, if this is an array.
    pub fn as_array(&self) -> Option<&[MetaValue]> {
        match self {
            MetaValue::Array(a) => Some(a),
            _ => None,
        }
    }
}

impl fmt::Display for MetaValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MetaValue::U8(v) => write!(f, "{v}"),
            MetaValue::I8(v) => write!(f, "{v}"),
            MetaValue::U16(v) => write!(f, "{v}"),
            MetaValue::I16(v) => write!(f, "{v}"),
            MetaValue::U32(v) => write!(f, "{v}"),
            MetaValue::I32(v) => write!(f, "{v}"),
            MetaValue::U64(v) => write!(f, "{v}"),
            MetaValue::I64(v) => write!(f, "{v}"),
            MetaValue::F32(v) => write!(f, "{v}"),
            MetaValue::F64(v) => write!(f, "{v}"),
            MetaValue::Bool(v) => write!(f, "{v}"),
            MetaValue::String(s) => write!(f, "{s:?}"),
            MetaValue::Array(a) => write!(f, "[{} elements]", a.len()),
        }
    }
}

/// Where one tensor lives and what it is.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    /// GGUF tensor name, e.g. `blk.0.attn_q.weight`.
    pub name: String,
    /// GGUF dims, innermost first: `dims[0]` is the row length.
    pub dims: Vec<u64>,
    /// Storage type.
    pub ggml_type: GgmlType,
    /// Offset from the start of the data section.
    pub offset: u64,
    /// Size of the data in bytes (computed from dims and type).
    pub n_bytes: u64,
}

impl TensorInfo {
    /// Row-major shape (GGUF dims reversed), e.g. `[rows, cols]` for a matrix.
    pub fn shape(&self) -> Vec<usize> {
        self.dims.iter().rev().map(|&d| d as usize).collect()
    }

    /// Number of elements.
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }

    /// Length of one row (`dims[0]`).
    pub fn row_len(&self) -> usize {
        self.dims.first().copied().unwrap_or(1) as usize
    }

    /// Number of rows (product of all dims but the first).
    pub fn n_rows(&self) -> usize {
        self.dims.iter().skip(1).product::<u64>() as usize
    }
}

/// A tensor's info together with the file it is read from.
#[derive(Debug, Clone, Copy)]
pub struct TensorView<'a> {
    /// Name, dims, type, offset.
    pub info: &'a TensorInfo,
    file: &'a GgufFile,
}

impl TensorView<'_> {
    /// Reads the raw (possibly block-quantized) data, exactly `info.n_bytes` long.
    pub fn read(&self) -> Result<Vec<u8>> {
        self.file.read_tensor(self.info)
    }

    /// Storage type.
    pub fn ggml_type(&self) -> GgmlType {
        self.info.ggml_type
    }

    /// Row-major shape.
    pub fn shape(&self) -> Vec<usize> {
        self.info.shape()
    }
}

/// A parsed, validated GGUF file (header in memory, tensor data read on demand).
pub struct GgufFile {
    path: PathBuf,
    file: File,
    len: u64,
    version: u32,
    metadata: Vec<(String, MetaValue)>,
    meta_index: HashMap<String, usize>,
    tensors: Vec<TensorInfo>,
    tensor_index: HashMap<String, usize>,
    alignment: u64,
    data_offset: u64,
}

impl fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("metadata", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .field("alignment", &self.alignment)
            .field("data_offset", &self.data_offset)
            .finish()
    }
}

/// Little-endian reader over the file's header; every read is bounds-checked against the
/// file length first, and a read that comes up short (the file shrank) is a truncation error.
struct Cursor<'a> {
    src: BufReader<&'a File>,
    pos: u64,
    len: u64,
    path: &'a Path,
}

impl<'a> Cursor<'a> {
    fn remaining(&self) -> u64 {
        self.len.saturating_sub(self.pos)
    }

    fn truncated(&self, what: &str, need: u64) -> Diagnostic {
        Diagnostic::error(
            code::Gguf::Truncated,
            format!(
                "GGUF header truncated while reading {what}: need {need} bytes at offset {}, \
                 file has {} bytes",
                self.pos, self.len
            ),
        )
        .with_file(self.path)
        .with_help("the file is incomplete or not a GGUF file; download it again")
    }

    fn fill(&mut self, buf: &mut [u8], what: &str) -> Result<()> {
        let n = buf.len() as u64;
        if n > self.remaining() {
            return Err(self.truncated(what, n));
        }
        if let Err(e) = self.src.read_exact(buf) {
            return Err(match e.kind() {
                std::io::ErrorKind::UnexpectedEof => self.truncated(what, n),
                _ => io_err(self.path, "cannot read", &e),
            });
        }
        self.pos += n;
        Ok(())
    }

    fn take(&mut self, n: usize, what: &str) -> Result<Vec<u8>> {
        if n as u64 > self.remaining() {
            return Err(self.truncated(what, n as u64));
        }
        let mut v = vec![0u8; n];
        self.fill(&mut v, what)?;
        Ok(v)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        let mut a = [0u8; N];
        self.fill(&mut a, what)?;
        Ok(a)
    }

    fn u8(&mut self, what: &str) -> Result<u8> {
        Ok(self.array::<1>(what)?[0])
    }
    fn u16(&mut self, what: &str) -> Result<u16> {
        Ok(u16::from_le_bytes(self.array(what)?))
    }
    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }
    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// A count that is followed by at least `min_each` bytes per element.
    fn count(&mut self, what: &str, min_each: usize) -> Result<usize> {
        let at = self.pos;
        let n = self.u64(what)?;
        let max = self.remaining() / min_each.max(1) as u64;
        if n > max {
            let need = n.saturating_mul(min_each as u64);
            if need <= self.len.saturating_mul(16) {
                // Plausible, just more than is left: the file was cut.
                return Err(self.truncated(what, need));
            }
            return Err(Diagnostic::error(
                code::Gguf::BadCount,
                format!(
                    "GGUF {what} at offset {at} is {n}, but only {} bytes follow (at most {max} \
                     entries fit)",
                    self.remaining()
                ),
            )
            .with_file(self.path)
            .with_help("the file is corrupt or not a GGUF file"));
        }
        Ok(n as usize)
    }

    fn string(&mut self, what: &str, lossy_warned: &mut bool) -> Result<String> {
        let n = self.count(what, 1)?;
        let bytes = self.take(n, what)?;
        match String::from_utf8(bytes) {
            Ok(s) => Ok(s),
            Err(e) => {
                if !*lossy_warned {
                    *lossy_warned = true;
                    warn!(
                        file = %self.path.display(),
                        "GGUF {what} is not valid UTF-8; replacing invalid bytes with U+FFFD \
                         (further occurrences not logged)"
                    );
                }
                Ok(String::from_utf8_lossy(e.as_bytes()).into_owned())
            }
        }
    }

    fn key(&mut self) -> Result<String> {
        let at = self.pos;
        let n = self.count("metadata key length", 1)?;
        let bytes = self.take(n, "metadata key")?;
        String::from_utf8(bytes).map_err(|_| {
            Diagnostic::error(
                code::Gguf::BadMetadata,
                format!("GGUF metadata key at offset {at} is not valid UTF-8"),
            )
            .with_file(self.path)
        })
    }

    fn value(&mut self, ty: u32, key: &str, depth: usize, warned: &mut bool) -> Result<MetaValue> {
        Ok(match ty {
            0 => MetaValue::U8(self.u8(key)?),
            1 => MetaValue::I8(self.u8(key)? as i8),
            2 => MetaValue::U16(self.u16(key)?),
            3 => MetaValue::I16(self.u16(key)? as i16),
            4 => MetaValue::U32(self.u32(key)?),
            5 => MetaValue::I32(self.u32(key)? as i32),
            6 => MetaValue::F32(f32::from_bits(self.u32(key)?)),
            7 => MetaValue::Bool(self.u8(key)? != 0),
            8 => MetaValue::String(self.string(key, warned)?),
            9 => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(Diagnostic::error(
                        code::Gguf::BadMetadata,
                        format!("GGUF metadata `{key}` nests arrays deeper than {MAX_ARRAY_DEPTH}"),
                    )
                    .with_file(self.path));
                }
                let elem_ty = self.u32(key)?;
                let min_each = match elem_ty {
                    0 | 1 | 7 => 1,
                    2 | 3 => 2,
                    4..=6 => 4,
                    8 | 10..=12 => 8,
                    9 => 12,
                    other => return Err(self.bad_type(key, other)),
                };
                let n = self.count(&format!("array length of `{key}`"), min_each)?;
                // Preallocate little: a corrupt count is caught by the reads it makes fail.
                let mut v = Vec::with_capacity(n.min(PREALLOC_MAX));
                for _ in 0..n {
                    v.push(self.value(elem_ty, key, depth + 1, warned)?);
                }
                MetaValue::Array(v)
            }
            10 => MetaValue::U64(self.u64(key)?),
            11 => MetaValue::I64(self.u64(key)? as i64),
            12 => MetaValue::F64(f64::from_bits(self.u64(key)?)),
            other => return Err(self.bad_type(key, other)),
        })
    }

    fn bad_type(&self, key: &str, ty: u32) -> Diagnostic {
        Diagnostic::error(
            code::Gguf::BadMetadata,
            format!("GGUF metadata `{key}` has unknown value type {ty}"),
        )
        .with_file(self.path)
        .with_help("the file is corrupt or uses a GGUF extension this version does not know")
    }
}

fn io_err(path: &Path, what: &str, e: &std::io::Error) -> Diagnostic {
    Diagnostic::io(code::Gguf::Io, what, path, e)
}

impl GgufFile {
    /// Opens, parses and validates a GGUF file (reads the header; tensor data is read by
    /// [`TensorView::read`]).
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| io_err(path, "cannot open", &e))?;
        let meta = file
            .metadata()
            .map_err(|e| io_err(path, "cannot stat", &e))?;
        if meta.is_dir() {
            return Err(Diagnostic::error(
                code::Gguf::NotAFile,
                format!("{} is a directory, not a GGUF file", path.display()),
            )
            .with_file(path)
            .with_help(
                "pass a llama.cpp `*.gguf` file; an MLX model directory needs no conversion \
                 (give it to `probe`, `serve` or an rmlx.toml `source` directly)",
            ));
        }
        let len = meta.len();
        if len < 24 {
            return Err(Diagnostic::error(
                code::Gguf::BadMagic,
                format!("not a GGUF file: only {len} bytes long"),
            )
            .with_file(path));
        }
        Self::parse(path, file, len)
    }

    fn parse(path: &Path, file: File, len: u64) -> Result<Self> {
        let mut c = Cursor {
            src: BufReader::with_capacity(1 << 20, &file),
            pos: 0,
            len,
            path,
        };
        let magic = c.array::<4>("magic").map_err(|_| {
            Diagnostic::error(
                code::Gguf::BadMagic,
                format!("not a GGUF file: only {len} bytes long"),
            )
            .with_file(path)
        })?;
        if magic != GGUF_MAGIC {
            return Err(Diagnostic::error(
                code::Gguf::BadMagic,
                format!(
                    "not a GGUF file: starts with {:02x?} instead of \"GGUF\"",
                    magic
                ),
            )
            .with_file(path)
            .with_help("expected a llama.cpp GGUF model file (*.gguf)"));
        }
        let version = c.u32("version")?;
        if !(2..=3).contains(&version) {
            return Err(Diagnostic::error(
                code::Gguf::UnsupportedVersion,
                format!("GGUF version {version} is not supported (supported: 2 and 3)"),
            )
            .with_file(path)
            .with_help("re-convert the model with a recent llama.cpp (GGUF v3)"));
        }
        // Minimum encoded sizes: a tensor info is a name (8) + n_dims (4) + type (4) + offset
        // (8); a key/value is a key (8) + type (4) + the smallest value (1).
        let tensor_count = c.count("tensor count", 24)?;
        let kv_count = c.count("metadata key/value count", 13)?;

        let mut warned = false;
        let mut metadata = Vec::with_capacity(kv_count.min(PREALLOC_MAX));
        let mut meta_index = HashMap::with_capacity(kv_count.min(PREALLOC_MAX));
        for _ in 0..kv_count {
            let key = c.key()?;
            let ty = c.u32("metadata value type")?;
            let value = c.value(ty, &key, 0, &mut warned)?;
            if meta_index.insert(key.clone(), metadata.len()).is_some() {
                warn!(file = %path.display(), "GGUF metadata key `{key}` appears twice; the last value wins");
            }
            metadata.push((key, value));
        }

        let alignment = match metadata
            .iter()
            .rev()
            .find(|(k, _)| k == "general.alignment")
        {
            None => DEFAULT_ALIGNMENT,
            Some((_, v)) => match v.as_i64() {
                Some(a) if a > 0 && (a as u64).is_power_of_two() && a <= 1 << 20 => a as u64,
                _ => {
                    return Err(Diagnostic::error(
                        code::Gguf::BadMetadata,
                        format!("GGUF `general.alignment` is {v}, not a power of two"),
                    )
                    .with_file(path))
                }
            },
        };

        let mut tensors = Vec::with_capacity(tensor_count.min(PREALLOC_MAX));
        let mut tensor_index = HashMap::with_capacity(tensor_count.min(PREALLOC_MAX));
        for i in 0..tensor_count {
            let name = c.key().map_err(|d| {
                Diagnostic::error(
                    d.code,
                    format!(
                        "tensor info #{i}: {}",
                        d.message.replace("metadata key", "name")
                    ),
                )
                .with_file(path)
            })?;
            let n_dims = c.u32("tensor dimension count")? as usize;
            if n_dims == 0 || n_dims > MAX_DIMS {
                return Err(Diagnostic::error(
                    code::Gguf::BadTensor,
                    format!("tensor `{name}` has {n_dims} dimensions (1 to {MAX_DIMS} allowed)"),
                )
                .with_file(path));
            }
            let mut dims = Vec::with_capacity(n_dims);
            for _ in 0..n_dims {
                dims.push(c.u64("tensor dimension")?);
            }
            let type_id = c.u32("tensor type")?;
            let offset = c.u64("tensor offset")?;
            let ggml_type = GgmlType::from_id(type_id).ok_or_else(|| {
                Diagnostic::error(
                    code::Gguf::UnsupportedType,
                    format!("tensor `{name}` has unknown ggml type id {type_id}"),
                )
                .with_file(path)
                .with_help("the file is corrupt or uses a newer ggml type")
            })?;
            let n_bytes = tensor_bytes(&name, &dims, ggml_type)
                .map_err(|m| Diagnostic::error(code::Gguf::BadTensor, m).with_file(path))?;
            if offset % alignment != 0 {
                return Err(Diagnostic::error(
                    code::Gguf::BadTensor,
                    format!(
                        "tensor `{name}` data offset {offset} is not aligned to {alignment} bytes"
                    ),
                )
                .with_file(path));
            }
            if tensor_index.insert(name.clone(), i).is_some() {
                return Err(Diagnostic::error(
                    code::Gguf::BadTensor,
                    format!("tensor `{name}` appears twice in the GGUF file"),
                )
                .with_file(path));
            }
            tensors.push(TensorInfo {
                name,
                dims,
                ggml_type,
                offset,
                n_bytes,
            });
        }

        let data_offset = c.pos.div_ceil(alignment) * alignment;
        drop(c);
        let file_len = len;
        for t in &tensors {
            let end = data_offset
                .checked_add(t.offset)
                .and_then(|s| s.checked_add(t.n_bytes));
            match end {
                Some(end) if end <= file_len => {}
                _ => {
                    let start = data_offset.saturating_add(t.offset);
                    let have = file_len.saturating_sub(start);
                    return Err(Diagnostic::error(
                        code::Gguf::Truncated,
                        format!(
                            "GGUF file is truncated: tensor `{}` ({}, dims {:?}) needs {} bytes \
                             at offset {start}, but only {have} bytes are left (file is {file_len} \
                             bytes, expected at least {})",
                            t.name,
                            t.ggml_type,
                            t.dims,
                            t.n_bytes,
                            start.saturating_add(t.n_bytes),
                        ),
                    )
                    .with_file(path)
                    .with_help(
                        "the download was interrupted or the file was cut; fetch it again",
                    ));
                }
            }
        }

        Ok(Self {
            path: path.to_path_buf(),
            file,
            len,
            version,
            metadata,
            meta_index,
            tensors,
            tensor_index,
            alignment,
            data_offset,
        })
    }

    /// The file this was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// GGUF format version (2 or 3).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// Data-section alignment.
    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// File offset of the data section.
    pub fn data_offset(&self) -> u64 {
        self.data_offset
    }

    /// All metadata in file order.
    pub fn metadata(&self) -> &[(String, MetaValue)] {
        &self.metadata
    }

    /// One metadata value.
    pub fn get(&self, key: &str) -> Option<&MetaValue> {
        self.meta_index.get(key).map(|&i| &self.metadata[i].1)
    }

    /// A string value; `None` when absent or not a string.
    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.get(key)?.as_str()
    }

    /// An integer value that fits in u32.
    pub fn get_u32(&self, key: &str) -> Option<u32> {
        self.get(key)?.as_u32()
    }

    /// Any integer value as u64 (negative is `None`).
    pub fn get_u64(&self, key: &str) -> Option<u64> {
        self.get(key)?.as_i64().and_then(|v| u64::try_from(v).ok())
    }

    /// A float (or integer) value as f32.
    pub fn get_f32(&self, key: &str) -> Option<f32> {
        self.get(key)?.as_f64().map(|v| v as f32)
    }

    /// A float (or integer) value as f64.
    pub fn get_f64(&self, key: &str) -> Option<f64> {
        self.get(key)?.as_f64()
    }

    /// A bool value.
    pub fn get_bool(&self, key: &str) -> Option<bool> {
        self.get(key)?.as_bool()
    }

    /// An array value.
    pub fn get_array(&self, key: &str) -> Option<&[MetaValue]> {
        self.get(key)?.as_array()
    }

    /// An array of strings; `None` when absent or any element is not a string.
    pub fn get_str_array(&self, key: &str) -> Option<Vec<&str>> {
        self.get_array(key)?.iter().map(MetaValue::as_str).collect()
    }

    /// An array of integers as i64; `None` when absent or any element is not an integer.
    pub fn get_i64_array(&self, key: &str) -> Option<Vec<i64>> {
        self.get_array(key)?.iter().map(MetaValue::as_i64).collect()
    }

    /// An array of numbers as f32.
    pub fn get_f32_array(&self, key: &str) -> Option<Vec<f32>> {
        self.get_array(key)?
            .iter()
            .map(|v| v.as_f64().map(|x| x as f32))
            .collect()
    }

    /// `general.architecture`.
    pub fn architecture(&self) -> Option<&str> {
        self.get_str("general.architecture")
    }

    /// All tensor infos in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// The info of one tensor.
    pub fn tensor_info(&self, name: &str) -> Option<&TensorInfo> {
        self.tensor_index.get(name).map(|&i| &self.tensors[i])
    }

    /// One tensor with its raw bytes.
    pub fn tensor(&self, name: &str) -> Option<TensorView<'_>> {
        self.tensor_info(name).map(|info| self.view(info))
    }

    /// A tensor of this file, to be read with [`TensorView::read`].
    pub fn view<'a>(&'a self, info: &'a TensorInfo) -> TensorView<'a> {
        TensorView { info, file: self }
    }

    /// Reads a tensor's bytes (one positioned read). The range was checked against the file
    /// length at open time; a short read means the file shrank since.
    pub fn read_tensor(&self, info: &TensorInfo) -> Result<Vec<u8>> {
        let start = self.data_offset + info.offset;
        let n = usize::try_from(info.n_bytes).map_err(|_| {
            Diagnostic::error(
                code::Gguf::BadTensor,
                format!("tensor `{}` does not fit in memory", info.name),
            )
            .with_file(&self.path)
        })?;
        let mut buf = vec![0u8; n];
        self.file.read_exact_at(&mut buf, start).map_err(|e| {
            if e.kind() != std::io::ErrorKind::UnexpectedEof {
                return io_err(&self.path, "cannot read", &e);
            }
            let now = self.file.metadata().map(|m| m.len()).unwrap_or(0);
            Diagnostic::error(
                code::Gguf::Truncated,
                format!(
                    "GGUF file is truncated: tensor `{}` needs bytes {start}..{}, the file now \
                     has {now} bytes (it was {} when opened; it shrank while being read)",
                    info.name,
                    start + info.n_bytes,
                    self.len
                ),
            )
            .with_file(&self.path)
            .with_help(
                "the file was replaced or cut while it was read; try again once it is complete",
            )
        })?;
        Ok(buf)
    }
}

/// Byte size of a tensor, or a message saying why the dims do not fit the type.
fn tensor_bytes(name: &str, dims: &[u64], ty: GgmlType) -> std::result::Result<u64, String> {
    let block = ty.block_size() as u64;
    let row_len = dims[0];
    if !row_len.is_multiple_of(block) {
        return Err(format!(
            "tensor `{name}` ({ty}) has row length {row_len}, not a multiple of the block size \
             {block}"
        ));
    }
    let mut n_rows: u64 = 1;
    for &d in &dims[1..] {
        n_rows = n_rows
            .checked_mul(d)
            .ok_or_else(|| format!("tensor `{name}` dims {dims:?} overflow"))?;
    }
    (row_len / block)
        .checked_mul(ty.type_size() as u64)
        .and_then(|r| r.checked_mul(n_rows))
        .ok_or_else(|| format!("tensor `{name}` dims {dims:?} overflow"))
}

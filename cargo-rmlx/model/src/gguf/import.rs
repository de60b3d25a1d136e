//! The GGUF → MLX model-directory import ([`import`]): plans every tensor (name mapping, Q/K
//! un-permutation, kept-quantized vs dense), writes `model.safetensors` tensor by tensor (each
//! tensor is read and converted only when the writer asks for its bytes, so peak memory is about
//! one tensor), the config and tokenizer files. [`import_into`] writes into a directory the
//! caller owns; [`import`] / [`import_to`] publish the result through
//! [`crate::snapshot::publish`] (lock, private sibling, atomic swap — the mechanism
//! `cargo rmlx build` uses), refusing to replace the input file itself.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use half::{bf16, f16};
use indicatif::ProgressBar;
use serde_json::{json, Map, Value};
use tracing::{info, warn};

use super::arch::{self, Architecture, ModelParams, SpecialIds, TensorMapping};
use super::quants::{self, GgmlType, MLX_GROUP_SIZE};
use super::reader::{GgufFile, TensorView};
use super::tokenizer::TokenizerFiles;
use crate::arch::gguf::Undo;
use crate::diagnostic::{code, Code, Diagnostic, Result};
use crate::snapshot::publish::{OutputLock, ReplaceFile};

/// Element type of dense output tensors: the one float dtype enum (default bfloat16).
pub use crate::manifest::Dtype;

/// How to import.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImportOptions {
    /// Keep Q4_0 / Q4_1 / Q8_0 matrices quantized, as the exactly equivalent MLX affine
    /// quantization with group size 32 (4 or 8 bits). Other quantized types are always
    /// dequantized. Default: true.
    pub keep_quantized: bool,
    /// Element type of dense tensors (norms, dequantized matrices). Default: bf16.
    pub dtype: Dtype,
}

impl Default for ImportOptions {
    fn default() -> Self {
        Self {
            keep_quantized: true,
            dtype: Dtype::Bfloat16,
        }
    }
}

/// What happened to one tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TensorAction {
    /// Written as MLX affine quantization (`.weight` U32, `.scales`, `.biases` F16).
    KeptQuantized {
        /// 4 or 8.
        bits: u32,
    },
    /// Written as MLX `mxfp4` (`.weight` U32 codes, `.scales` U8 E8M0): GGUF MXFP4, exactly.
    KeptMxfp4,
    /// A block-quantized GGUF tensor written dense (in the import dtype).
    Dequantized,
    /// A plain float/int GGUF tensor written dense (in the import dtype).
    Converted,
}

/// One imported tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorReport {
    /// Name in the GGUF file.
    pub gguf_name: String,
    /// Hugging Face name in model.safetensors.
    pub hf_name: String,
    /// GGUF storage type.
    pub ggml_type: GgmlType,
    /// Row-major shape (of the dense tensor).
    pub shape: Vec<usize>,
    /// What was done with it.
    pub action: TensorAction,
    /// Q/K rows were un-permuted with this many heads.
    pub unpermuted_heads: Option<usize>,
}

/// The result of [`import`].
#[derive(Debug, Clone)]
pub struct ImportReport {
    /// The GGUF architecture (its registry family's entry).
    pub architecture: &'static Architecture,
    /// The model directory that was written.
    pub out_dir: PathBuf,
    /// Every written tensor, in GGUF order.
    pub tensors: Vec<TensorReport>,
    /// Hugging Face names of the tensors kept quantized (MLX affine, group 32, or mxfp4).
    pub quantized: Vec<String>,
    /// Hugging Face names of the tensors written dense (converted floats and dequantized).
    pub dense: Vec<String>,
    /// Hugging Face names of the block-quantized tensors that were dequantized (a subset of
    /// `dense`).
    pub dequantized: Vec<String>,
    /// GGUF tensors not written, with the reason.
    pub skipped: Vec<(String, String)>,
    /// File names written into `out_dir`.
    pub files: Vec<String>,
    /// The config.json that was written.
    pub config: Value,
}

/// Which part of a source tensor an output tensor holds.
#[derive(Debug, Clone, PartialEq)]
enum Part {
    Dense {
        dtype: Dtype,
        values: Values,
    },
    Words,
    Scales,
    Biases,
    /// MXFP4 codes repacked into MLX's `mxfp4` layout.
    Mxfp4Codes,
    /// MXFP4's E8M0 scale bytes.
    Mxfp4Scales,
}

/// What is done to each value of a dense tensor, in this order.
#[derive(Debug, Clone, Default, PartialEq)]
struct Values {
    /// Subtracted from every value (gemma norms); 0 for none.
    subtract: f32,
    /// `ln(-v)` of every value (the converter stored `-exp(x)`).
    neg_exp: bool,
    /// Source column of each destination column (last axis).
    cols: Option<Arc<Vec<usize>>>,
}

impl Values {
    fn apply(&self, mut v: Vec<f32>) -> Vec<f32> {
        if self.subtract != 0.0 {
            v.iter_mut().for_each(|x| *x -= self.subtract);
        }
        if self.neg_exp {
            v.iter_mut().for_each(|x| *x = (-*x).ln());
        }
        match &self.cols {
            Some(cols) if !cols.is_empty() => v
                .chunks_exact(cols.len())
                .flat_map(|row| cols.iter().map(move |&c| row[c]))
                .collect(),
            _ => v,
        }
    }
}

/// One tensor of model.safetensors, converted lazily when the writer asks for its bytes.
struct OutTensor<'a> {
    src: TensorView<'a>,
    part: Part,
    shape: Vec<usize>,
    dtype: safetensors::Dtype,
    n_bytes: usize,
    /// Source row of each destination row (Q/K un-permutation).
    rows: Option<Arc<Vec<usize>>>,
    progress: ProgressBar,
    failure: Arc<Mutex<Option<Diagnostic>>>,
}

impl OutTensor<'_> {
    fn convert(&self) -> Result<Vec<u8>> {
        let ty = self.src.ggml_type();
        let data = &self.src.read()?[..];
        let bytes = match &self.part {
            &Part::Dense { dtype, ref values } => {
                let v = values.apply(quants::dequantize(ty, data)?);
                let mut out = Vec::with_capacity(v.len() * dtype.size());
                match dtype {
                    Dtype::Float32 => v.iter().for_each(|x| out.extend(x.to_le_bytes())),
                    Dtype::Float16 => v
                        .iter()
                        .for_each(|x| out.extend(f16::from_f32(*x).to_le_bytes())),
                    Dtype::Bfloat16 => v
                        .iter()
                        .for_each(|x| out.extend(bf16::from_f32(*x).to_le_bytes())),
                }
                out
            }
            Part::Words => quants::affine_words(ty, data)?
                .iter()
                .flat_map(|w| w.to_le_bytes())
                .collect(),
            Part::Scales => quants::affine_scales(ty, data)?
                .iter()
                .flat_map(|s| s.to_le_bytes())
                .collect(),
            Part::Biases => quants::affine_biases(ty, data)?
                .iter()
                .flat_map(|s| s.to_le_bytes())
                .collect(),
            Part::Mxfp4Codes => quants::mxfp4_codes(data)?,
            Part::Mxfp4Scales => quants::mxfp4_scales(data)?,
        };
        let bytes = match &self.rows {
            Some(src) => {
                // Rows of the source tensor (a fused tensor's part selects some of them).
                let row_bytes = bytes.len() / n_rows(self.src.info).max(1);
                arch::permute_rows(&bytes, row_bytes, src)
            }
            None => bytes,
        };
        if bytes.len() != self.n_bytes {
            return Err(Diagnostic::error(
                code::Gguf::Internal,
                format!(
                    "converting `{}` produced {} bytes, expected {}",
                    self.src.info.name,
                    bytes.len(),
                    self.n_bytes
                ),
            ));
        }
        Ok(bytes)
    }
}

impl safetensors::View for OutTensor<'_> {
    fn dtype(&self) -> safetensors::Dtype {
        self.dtype
    }

    fn shape(&self) -> &[usize] {
        &self.shape
    }

    fn data(&self) -> Cow<'_, [u8]> {
        if !matches!(self.part, Part::Scales | Part::Biases | Part::Mxfp4Scales) {
            self.progress.inc(1);
        }
        // After a failure the import is lost anyway: skip reading the rest.
        if self.failure.lock().map_or(true, |f| f.is_some()) {
            return Cow::Owned(vec![0; self.n_bytes]);
        }
        match self.convert() {
            Ok(b) => Cow::Owned(b),
            Err(d) => {
                // The writer cannot fail from here: remember the error, write zeros of the
                // right length, and fail the import after the file is written (it lives in
                // the temporary directory, which is then removed).
                if let Ok(mut f) = self.failure.lock() {
                    f.get_or_insert(d);
                }
                Cow::Owned(vec![0; self.n_bytes])
            }
        }
    }

    fn data_len(&self) -> usize {
        self.n_bytes
    }
}

fn io_err(what: &str, path: &Path, e: &std::io::Error) -> Diagnostic {
    Diagnostic::io(code::Gguf::Io, what, path, e)
}

/// Imports a GGUF file into an MLX-format model directory `out_dir` (replaced atomically if
/// it exists): `config.json`, `model.safetensors`, `tokenizer.json`, `tokenizer_config.json`,
/// `generation_config.json` and, when the GGUF has a chat template, `chat_template.jinja`.
pub fn import(gguf_path: &Path, out_dir: &Path, opts: &ImportOptions) -> Result<ImportReport> {
    import_to(gguf_path, out_dir, opts, Existing::Replace)
}

/// What [`import_to`] does when the output path already exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Existing {
    /// Refuse unless it is an empty directory (`convert` without `--force`).
    Refuse,
    /// Replace it atomically, a plain file included (`convert --force`). The input GGUF itself
    /// is never replaced.
    Replace,
}

/// [`import`] with a policy for an existing output. The check is made again under the output's
/// lock, so of two concurrent imports refusing to overwrite, exactly one succeeds.
pub fn import_to(
    gguf_path: &Path,
    out_dir: &Path,
    opts: &ImportOptions,
    existing: Existing,
) -> Result<ImportReport> {
    let out_dir = absolute(out_dir)?;
    check_output(gguf_path, &out_dir, existing)?;
    let (parent, name) = split_output(&out_dir)?;
    // Taken once the GGUF is validated, so a file that is not importable leaves nothing.
    let mut held = None;
    let mut report = import_impl(gguf_path, opts, &mut || {
        let lock = OutputLock::acquire(parent, &name, &mut || {
            info!("waiting for another writer of {}", out_dir.display())
        })?;
        let replace_file = check_output(gguf_path, &out_dir, existing)?;
        let staged = lock.stage("tmp")?;
        let path = staged.path().to_path_buf();
        held = Some((lock, staged, replace_file));
        Ok(path)
    })?;
    let Some((_lock, staged, replace_file)) = held else {
        return Err(Diagnostic::error(
            code::Gguf::Internal,
            "the import finished without an output directory",
        ));
    };
    staged.commit(&out_dir, replace_file)?;
    report.out_dir = out_dir;
    Ok(report)
}

fn output_error(code: impl Into<Code>, msg: String, out: &Path) -> Diagnostic {
    Diagnostic::error(code, msg).with_file(out)
}

/// Whether `out` may be written under `existing`; says whether a plain file is replaced.
fn check_output(gguf_path: &Path, out: &Path, existing: Existing) -> Result<ReplaceFile> {
    let Ok(meta) = std::fs::metadata(out) else {
        return Ok(ReplaceFile::Refuse);
    };
    if same_file(gguf_path, out) {
        return Err(output_error(
            code::Convert::OutputIsInput,
            format!(
                "the output {} is the input GGUF file itself; converting would replace it",
                out.display()
            ),
            out,
        )
        .with_help("choose another output directory, e.g. `--out <name>-mlx`"));
    }
    let is_dir = meta.is_dir();
    let empty_dir = is_dir && out.read_dir().is_ok_and(|mut d| d.next().is_none());
    match existing {
        _ if empty_dir => Ok(ReplaceFile::Refuse),
        Existing::Refuse => Err(output_error(
            code::Convert::OutputExists,
            if is_dir {
                format!("{} exists and is not empty", out.display())
            } else {
                format!(
                    "{} exists and is a file, not a model directory",
                    out.display()
                )
            },
            out,
        )
        .with_help("pass --force to replace it (atomically, once the conversion succeeded)")),
        Existing::Replace if !is_dir => {
            warn!(
                "{} is a file; --force replaces it with the model directory",
                out.display()
            );
            Ok(ReplaceFile::Allow)
        }
        Existing::Replace => Ok(ReplaceFile::Refuse),
    }
}

/// Whether two paths name the same file (device and inode).
fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => false,
    }
}

fn split_output(out_dir: &Path) -> Result<(&Path, String)> {
    match (out_dir.parent(), out_dir.file_name()) {
        (Some(p), Some(n)) => Ok((p, n.to_string_lossy().into_owned())),
        _ => Err(Diagnostic::error(
            code::Convert::BadOutput,
            format!("output directory {} has no parent", out_dir.display()),
        )),
    }
}

/// Imports a GGUF file into `dir`, an existing empty directory the caller owns (and removes on
/// failure).
pub fn import_into(gguf_path: &Path, dir: &Path, opts: &ImportOptions) -> Result<ImportReport> {
    import_impl(gguf_path, opts, &mut || Ok(dir.to_path_buf()))
}

/// Validates and plans the whole import, then asks `target` for the directory to write into.
fn import_impl(
    gguf_path: &Path,
    opts: &ImportOptions,
    target: &mut dyn FnMut() -> Result<PathBuf>,
) -> Result<ImportReport> {
    let gguf = GgufFile::open(gguf_path)?;
    let (arch, params) = read_architecture(&gguf)?;
    let ids = SpecialIds::read(&gguf);
    let progress = crate::progress::bar(0, format!("importing {}", gguf_path.display()), "tensors");
    let failure = Arc::new(Mutex::new(None));
    let sink = Sink {
        progress: &progress,
        failure: &failure,
    };
    let plan = plan_tensors(&gguf, arch, &params, opts, &sink)?;
    let tie = !plan.reports.iter().any(|r| r.hf_name == "lm_head.weight");
    let quantization = quantization_block(&plan.quantized);
    let dtype = opts.dtype.as_str();
    let config = arch::config_json(&gguf, arch, &params, &ids, tie, dtype, quantization)?;
    let tok = TokenizerFiles::from_gguf(&gguf, params.max_position_embeddings)?;

    let dir = target()?;
    let mut files = write_side_files(&dir, &config, &tok)?;
    progress.set_length(plan.reports.len() as u64);
    write_safetensors(&dir, plan.outs)?;
    progress.finish_and_clear();
    if let Some(d) = failure.lock().ok().and_then(|mut f| f.take()) {
        return Err(d.with_file(gguf_path));
    }
    files.push("model.safetensors".into());
    Ok(report(arch, dir, plan.reports, plan.skipped, files, config))
}

/// The file's architecture entry and hyper-parameters, special token ids checked.
fn read_architecture(gguf: &GgufFile) -> Result<(&'static Architecture, ModelParams)> {
    let arch = arch::detect(gguf)?;
    let params = ModelParams::read(gguf, arch)?;
    arch::check_special_ids(gguf, params.vocab_size)?;
    info!(
        file = %gguf.path().display(),
        "importing GGUF v{} ({}, {} tensors)",
        gguf.version(),
        arch.name,
        gguf.tensors().len()
    );
    Ok((arch, params))
}

/// Where converted tensors report progress and a conversion failure.
struct Sink<'s> {
    progress: &'s ProgressBar,
    failure: &'s Arc<Mutex<Option<Diagnostic>>>,
}

/// Every output tensor of the import, planned before anything is written.
struct TensorPlan<'a> {
    outs: Vec<(String, OutTensor<'a>)>,
    reports: Vec<TensorReport>,
    skipped: Vec<(String, String)>,
    /// Kept-quantized module → its MLX quantization.
    quantized: BTreeMap<String, KeptAs>,
}

/// Plans every GGUF tensor (mapped, skipped with a reason, or an error), and checks the
/// token embedding is among them.
fn plan_tensors<'a>(
    gguf: &'a GgufFile,
    arch: &Architecture,
    params: &ModelParams,
    opts: &ImportOptions,
    sink: &Sink<'_>,
) -> Result<TensorPlan<'a>> {
    let mut plan = TensorPlan {
        outs: Vec::new(),
        reports: Vec::new(),
        skipped: Vec::new(),
        quantized: BTreeMap::new(),
    };
    for info in gguf.tensors() {
        let name = &info.name;
        let mapping = match (arch.skip)(gguf, name)? {
            Some(why) => Some(TensorMapping::Skip(why)),
            None => arch::map_tensor(arch, params, name),
        };
        match mapping {
            Some(TensorMapping::Keep {
                hf_name,
                unpermute_heads,
                subtract,
            }) => {
                let target = Target {
                    hf_name,
                    heads: unpermute_heads,
                    subtract,
                    undo: (arch.undo)(gguf, name)?,
                };
                plan_tensor(gguf, info, target, opts, sink, &mut plan)?;
            }
            Some(TensorMapping::Split(parts)) => {
                let count = parts.len();
                for (index, hf_name) in parts.into_iter().enumerate() {
                    let undo = Undo {
                        part: Some((index, count)),
                        ..(arch.undo)(gguf, name)?
                    };
                    let target = Target {
                        hf_name,
                        heads: None,
                        subtract: 0.0,
                        undo,
                    };
                    plan_tensor(gguf, info, target, opts, sink, &mut plan)?;
                }
            }
            Some(TensorMapping::Skip(why)) => {
                warn!("skipping GGUF tensor `{name}`: {why}");
                plan.skipped.push((name.clone(), why.to_owned()));
            }
            None => return Err(unknown_tensor(gguf, arch, name)),
        }
    }
    if !plan
        .reports
        .iter()
        .any(|r| r.hf_name == "model.embed_tokens.weight")
    {
        return Err(Diagnostic::error(
            code::Gguf::MissingTensor,
            "GGUF file has no `token_embd.weight` (the token embedding)",
        )
        .with_file(gguf.path()));
    }
    Ok(plan)
}

fn unknown_tensor(gguf: &GgufFile, arch: &Architecture, name: &str) -> Diagnostic {
    Diagnostic::error(
        code::Gguf::UnknownTensor,
        format!(
            "GGUF tensor `{name}` has no Hugging Face equivalent for architecture `{}`",
            arch.name
        ),
    )
    .with_file(gguf.path())
    .with_help("this GGUF variant is not supported by the importer")
}

/// Where one GGUF tensor goes (from [`TensorMapping::Keep`]).
struct Target {
    hf_name: String,
    heads: Option<usize>,
    subtract: f32,
    undo: Undo,
}

/// Plans one mapped tensor: kept quantized (weight, scales and, for affine, biases) or
/// written dense.
fn plan_tensor<'a>(
    gguf: &'a GgufFile,
    info: &'a super::reader::TensorInfo,
    target: Target,
    opts: &ImportOptions,
    sink: &Sink<'_>,
    plan: &mut TensorPlan<'a>,
) -> Result<()> {
    let view = gguf.view(info);
    let ty = info.ggml_type;
    check_decodable(gguf, info)?;
    let (shape, rows) = match target.undo.part {
        Some(part) => part_rows(gguf, info, part).map(|(s, r)| (s, Some(r)))?,
        None => (info.shape(), None),
    };
    let parts = Parts {
        src: view,
        rows: match (&target.undo.rows, rows) {
            (_, Some(part)) => Some(part),
            (Some(rows), None) => Some(checked_order(gguf, info, rows, n_rows(info), "rows")?),
            (None, None) => unpermutation(gguf, info, target.heads)?,
        },
        sink,
    };
    let module = target.hf_name.trim_end_matches(".weight").to_owned();
    let action = match kept_as(&view, &target, opts)? {
        Some(kept @ KeptAs::Affine(bits)) => {
            let (qshape, sshape) = quantized_shapes(&shape, bits);
            let f16 = safetensors::Dtype::F16;
            plan.outs.extend([
                parts.out(
                    &module,
                    "weight",
                    Part::Words,
                    qshape,
                    safetensors::Dtype::U32,
                ),
                parts.out(&module, "scales", Part::Scales, sshape.clone(), f16),
                parts.out(&module, "biases", Part::Biases, sshape, f16),
            ]);
            plan.quantized.insert(module, kept);
            TensorAction::KeptQuantized { bits }
        }
        Some(KeptAs::Mxfp4) => {
            let (qshape, sshape) = quantized_shapes(&shape, 4);
            plan.outs.extend([
                parts.out(
                    &module,
                    "weight",
                    Part::Mxfp4Codes,
                    qshape,
                    safetensors::Dtype::U32,
                ),
                parts.out(
                    &module,
                    "scales",
                    Part::Mxfp4Scales,
                    sshape,
                    safetensors::Dtype::U8,
                ),
            ]);
            plan.quantized.insert(module, KeptAs::Mxfp4);
            TensorAction::KeptMxfp4
        }
        None => {
            let cols = match &target.undo.cols {
                Some(cols) => Some(checked_order(gguf, info, cols, info.row_len(), "columns")?),
                None => None,
            };
            let part = Part::Dense {
                dtype: opts.dtype,
                values: Values {
                    subtract: target.subtract,
                    neg_exp: target.undo.neg_exp,
                    cols,
                },
            };
            let st = opts.dtype.safetensors();
            let out_shape = match &target.undo.shape {
                Some(s) => checked_shape(gguf, info, s)?,
                None => shape.clone(),
            };
            let out = parts.tensor(part, out_shape, st);
            plan.outs.push((target.hf_name.clone(), out));
            if ty.is_quantized() {
                TensorAction::Dequantized
            } else {
                TensorAction::Converted
            }
        }
    };
    plan.reports.push(TensorReport {
        gguf_name: info.name.clone(),
        hf_name: target.hf_name,
        ggml_type: ty,
        shape,
        action,
        unpermuted_heads: target.heads,
    });
    Ok(())
}

/// The rows of a tensor as [`TensorMapping::Keep`]'s permutations count them: a matrix's
/// rows, a vector's elements.
fn n_rows(info: &super::reader::TensorInfo) -> usize {
    if info.dims.len() == 1 {
        info.row_len()
    } else {
        info.n_rows()
    }
}

/// The shape and source rows of part `index` of `count` equal row ranges of each matrix of a
/// fused tensor (`[.., rows, cols]` → `[.., rows / count, cols]`).
fn part_rows(
    gguf: &GgufFile,
    info: &super::reader::TensorInfo,
    (index, count): (usize, usize),
) -> Result<(Vec<usize>, Arc<Vec<usize>>)> {
    let mut shape = info.shape();
    let rows = match shape.len() {
        n if n >= 2 => shape[n - 2],
        _ => 0,
    };
    if rows == 0 || rows % count != 0 || index >= count {
        return Err(Diagnostic::error(
            code::Gguf::BadTensor,
            format!(
                "tensor `{}` has shape {shape:?}, whose rows do not split into {count} parts",
                info.name
            ),
        )
        .with_file(gguf.path()));
    }
    let part = rows / count;
    let matrices = info.n_rows() / rows;
    let src = (0..matrices)
        .flat_map(|m| (0..part).map(move |r| m * rows + index * part + r))
        .collect();
    let n = shape.len();
    shape[n - 2] = part;
    Ok((shape, Arc::new(src)))
}

/// `order` (a family's source index per destination index along an axis of `len`) checked
/// to be a permutation of that axis: the family computed it from metadata, which may not
/// match the tensor.
fn checked_order(
    gguf: &GgufFile,
    info: &super::reader::TensorInfo,
    order: &[usize],
    len: usize,
    what: &str,
) -> Result<Arc<Vec<usize>>> {
    let mut seen = vec![false; len];
    let ok = order.len() == len
        && order
            .iter()
            .all(|&i| i < len && !std::mem::replace(&mut seen[i], true));
    if ok {
        return Ok(Arc::new(order.to_vec()));
    }
    Err(Diagnostic::error(
        code::Gguf::BadTensor,
        format!(
            "tensor `{}` has {len} {what}, which the head counts in the metadata do not \
             reorder",
            info.name
        ),
    )
    .with_file(gguf.path()))
}

/// A family's MLX shape for the tensor, which must hold the same number of values.
fn checked_shape(
    gguf: &GgufFile,
    info: &super::reader::TensorInfo,
    shape: &[usize],
) -> Result<Vec<usize>> {
    let have = info.shape();
    if shape.iter().product::<usize>() == have.iter().product::<usize>() {
        return Ok(shape.to_vec());
    }
    Err(Diagnostic::error(
        code::Gguf::BadTensor,
        format!(
            "tensor `{}` has shape {have:?}, which cannot be read as {shape:?}",
            info.name
        ),
    )
    .with_file(gguf.path()))
}

/// The shapes of the packed weight and of the scales of a quantized `shape` (groups of 32
/// along the last axis).
fn quantized_shapes(shape: &[usize], bits: u32) -> (Vec<usize>, Vec<usize>) {
    let (lead, cols) = shape.split_at(shape.len() - 1);
    let with_last = |n: usize| lead.iter().copied().chain([n]).collect::<Vec<_>>();
    (
        with_last(cols[0] * bits as usize / 32),
        with_last(cols[0] / MLX_GROUP_SIZE),
    )
}

/// What every output tensor of one GGUF tensor shares: the source, the Q/K row order, and
/// where it reports progress and failure.
struct Parts<'s, 'a> {
    src: TensorView<'a>,
    rows: Option<Arc<Vec<usize>>>,
    sink: &'s Sink<'s>,
}

impl<'a> Parts<'_, 'a> {
    fn tensor(&self, part: Part, shape: Vec<usize>, dtype: safetensors::Dtype) -> OutTensor<'a> {
        let n_bytes = shape.iter().product::<usize>() * dtype.bitsize() / 8;
        OutTensor {
            src: self.src,
            part,
            shape,
            dtype,
            n_bytes,
            rows: self.rows.clone(),
            progress: self.sink.progress.clone(),
            failure: self.sink.failure.clone(),
        }
    }

    /// `<module>.<name>` holding `part`.
    fn out(
        &self,
        module: &str,
        name: &str,
        part: Part,
        shape: Vec<usize>,
        dtype: safetensors::Dtype,
    ) -> (String, OutTensor<'a>) {
        (format!("{module}.{name}"), self.tensor(part, shape, dtype))
    }
}

fn check_decodable(gguf: &GgufFile, info: &super::reader::TensorInfo) -> Result<()> {
    let ty = info.ggml_type;
    if ty.can_dequantize() {
        return Ok(());
    }
    Err(Diagnostic::error(
        code::Gguf::UnsupportedType,
        format!(
            "GGUF tensor `{}` has type {ty}, which cannot be decoded",
            info.name
        ),
    )
    .with_file(gguf.path())
    .with_help(
        "use a GGUF quantized with Q4_0, Q4_1, Q8_0, Q2_K..Q6_K, IQ4_NL/IQ4_XS or a float type",
    ))
}

/// The source row of each destination row that undoes llama.cpp's rope permutation with
/// `heads` heads (`None`: not permuted).
fn unpermutation(
    gguf: &GgufFile,
    info: &super::reader::TensorInfo,
    heads: Option<usize>,
) -> Result<Option<Arc<Vec<usize>>>> {
    let Some(n_head) = heads else {
        return Ok(None);
    };
    let n_rows = n_rows(info);
    let src = arch::unpermute_rows(n_rows, n_head).ok_or_else(|| {
        Diagnostic::error(
            code::Gguf::BadTensor,
            format!(
                "tensor `{}` has {n_rows} rows, not a multiple of 2 x {n_head} heads, so its \
                 rope permutation cannot be undone",
                info.name
            ),
        )
        .with_file(gguf.path())
    })?;
    Ok(Some(Arc::new(src)))
}

/// How a quantized GGUF tensor is kept quantized in MLX form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum KeptAs {
    /// Affine with this many bits, group size 32 (Q4_0/Q4_1/Q8_0).
    Affine(u32),
    /// `mxfp4` (MXFP4).
    Mxfp4,
}

impl KeptAs {
    /// The mlx-lm quantization settings (`group_size`, `bits`, `mode`).
    fn settings(self) -> Map<String, Value> {
        let (bits, mode) = match self {
            KeptAs::Affine(bits) => (bits, "affine"),
            KeptAs::Mxfp4 => (4, "mxfp4"),
        };
        let mut q = Map::new();
        q.insert("group_size".into(), json!(MLX_GROUP_SIZE));
        q.insert("bits".into(), json!(bits));
        q.insert("mode".into(), json!(mode));
        q
    }
}

/// The MLX form a tensor is kept in, or `None` to write it dense: with `--keep-quantized`,
/// MXFP4 tensors (2-D or expert stacks) and Q4_0/Q4_1/Q8_0 matrices (not shifted norms, not
/// 3-D expert stacks) whose MLX biases fit float16.
fn kept_as(view: &TensorView<'_>, target: &Target, opts: &ImportOptions) -> Result<Option<KeptAs>> {
    let info = view.info;
    let ty = info.ggml_type;
    let keepable = opts.keep_quantized
        && target.subtract == 0.0
        && !target.undo.rewrites_values()
        && target.hf_name.ends_with(".weight");
    if !keepable {
        return Ok(None);
    }
    if ty == GgmlType::MXFP4 && info.dims.len() >= 2 {
        return Ok(Some(KeptAs::Mxfp4));
    }
    match ty.mlx_affine_bits().filter(|_| info.dims.len() == 2) {
        Some(_) if !quants::affine_fits_f16(ty, &view.read()?) => {
            warn!(
                "GGUF tensor `{}` ({ty}) has a scale whose MLX bias overflows float16; \
                 dequantizing it to {} instead of keeping it quantized",
                info.name,
                opts.dtype.as_str()
            );
            Ok(None)
        }
        other => Ok(other.map(KeptAs::Affine)),
    }
}

/// Writes config.json, the tokenizer files, generation_config.json and the chat template.
fn write_side_files(dir: &Path, config: &Value, tok: &TokenizerFiles) -> Result<Vec<String>> {
    let mut files = Vec::new();
    let mut write = |name: &str, text: String| -> Result<()> {
        let p = dir.join(name);
        std::fs::write(&p, text).map_err(|e| io_err("cannot write", &p, &e))?;
        files.push(name.to_owned());
        Ok(())
    };
    for (name, v) in [
        ("config.json", config),
        ("tokenizer.json", &tok.tokenizer_json),
        ("tokenizer_config.json", &tok.tokenizer_config),
        ("generation_config.json", &tok.generation_config),
    ] {
        let mut s = serde_json::to_string_pretty(v).map_err(|e| {
            Diagnostic::error(code::Gguf::Io, format!("cannot serialize {name}: {e}"))
        })?;
        s.push('\n');
        write(name, s)?;
    }
    if let Some(t) = &tok.chat_template {
        write("chat_template.jinja", t.clone())?;
    }
    Ok(files)
}

/// Writes model.safetensors (each tensor converted when the writer asks for it).
fn write_safetensors(dir: &Path, outs: Vec<(String, OutTensor<'_>)>) -> Result<()> {
    let st_path = dir.join("model.safetensors");
    let mut meta = std::collections::HashMap::new();
    meta.insert("format".to_owned(), "mlx".to_owned());
    safetensors::serialize_to_file(outs, Some(meta), &st_path).map_err(|e| {
        Diagnostic::error(
            code::Gguf::Io,
            format!("cannot write {}: {e}", st_path.display()),
        )
        .with_file(&st_path)
    })
}

/// The import's report (tensor lists by what was done to them), logged.
fn report(
    arch: &'static Architecture,
    out_dir: PathBuf,
    reports: Vec<TensorReport>,
    skipped: Vec<(String, String)>,
    files: Vec<String>,
    config: Value,
) -> ImportReport {
    let names = |f: &dyn Fn(&TensorAction) -> bool| -> Vec<String> {
        reports
            .iter()
            .filter(|r| f(&r.action))
            .map(|r| r.hf_name.clone())
            .collect()
    };
    let kept = |a: &TensorAction| {
        matches!(
            a,
            TensorAction::KeptQuantized { .. } | TensorAction::KeptMxfp4
        )
    };
    let quantized = names(&|a| kept(a));
    let dense = names(&|a| !kept(a));
    let dequantized = names(&|a| *a == TensorAction::Dequantized);
    info!(
        out = %out_dir.display(),
        "imported {} tensors ({} kept quantized, {} dequantized)",
        reports.len(),
        quantized.len(),
        dequantized.len()
    );
    ImportReport {
        architecture: arch,
        out_dir,
        tensors: reports,
        quantized,
        dense,
        dequantized,
        skipped,
        files,
        config,
    }
}

fn absolute(p: &Path) -> Result<PathBuf> {
    if p.is_absolute() {
        return Ok(p.to_path_buf());
    }
    let cwd = std::env::current_dir()
        .map_err(|e| io_err("cannot read the current directory for", p, &e))?;
    Ok(cwd.join(p))
}

/// The mlx-lm quantization block for the kept-quantized modules (module path → MLX form), or
/// `None` when nothing is quantized. The most common form is the default; modules in another
/// form get an override entry. Dense modules get no entry (they have no `.scales`).
fn quantization_block(modules: &BTreeMap<String, KeptAs>) -> Option<Value> {
    let mut counts: BTreeMap<KeptAs, usize> = BTreeMap::new();
    for &k in modules.values() {
        *counts.entry(k).or_default() += 1;
    }
    let top = counts
        .iter()
        .max_by_key(|(k, n)| (**n, std::cmp::Reverse(**k)))
        .map(|(k, _)| *k)?;
    let mut q = top.settings();
    for (m, &k) in modules {
        if k != top {
            q.insert(m.clone(), Value::Object(k.settings()));
        }
    }
    Some(Value::Object(q))
}

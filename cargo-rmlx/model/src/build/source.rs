//! A source model directory as the build sees it: config.json (its `model_type` picks the
//! family's conversion rules, [`crate::arch::convert`]), the stored weights, and the tensors
//! of the converted model — names, shapes and a recipe each, from the rules applied to the
//! names and shapes only. [`SourceModel::array`] evaluates one recipe (reading the stored
//! tensors it needs, one expert group at most), so the build streams.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use mlx_rs::Array;
use serde_json::{Map, Value};

use crate::arch::convert::{self, Convert, Hints, Out, Problem, Recipe, Tensors};
use crate::diagnostic::{code, Diagnostic, Result};
use crate::snapshot::config::read_json;
use crate::snapshot::{ModelConfig, Quantization, Weights};

/// A source model directory, opened and validated.
pub struct SourceModel {
    /// The directory.
    pub dir: PathBuf,
    /// config.json's `model_type`.
    pub model_type: String,
    /// The family's conversion rules.
    pub rules: &'static Convert,
    /// config.json parsed for the standard decoder's checks (families that ask for them).
    pub config: Option<ModelConfig>,
    /// The source's MLX `quantization` block, if any.
    pub quantization: Option<Quantization>,
    /// config.json as written (key order kept).
    pub raw: Map<String, Value>,
    /// config.json's text (diagnostics point into it).
    pub text: Arc<str>,
    /// The stored weights (headers, names, shapes; data read one tensor at a time).
    pub weights: Weights,
    /// The converted model's tensors (and the stored ones dropped).
    pub tensors: Tensors,
}

impl SourceModel {
    /// Opens `dir`: config.json (a `model_type` the build converts, located JSON errors),
    /// the weights (headers validated; nothing is read yet) and the conversion rules applied
    /// to their names.
    pub fn open(dir: &Path) -> Result<Self> {
        let path = dir.join("config.json");
        if !path.is_file() {
            // The snapshot's own message for a directory without config.json.
            ModelConfig::from_dir(dir)?;
        }
        let (text, value) = read_json(&path, code::Snapshot::Config)?;
        let Value::Object(raw) = value else {
            return Err(Diagnostic::error(
                code::Snapshot::Config,
                "config.json must hold a JSON object",
            )
            .with_file(&path));
        };
        let model_type = raw
            .get("model_type")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let rules =
            convert::rules(&model_type).ok_or_else(|| unsupported(&path, &text, &model_type))?;
        let config = if rules.checks_decoder_shapes {
            Some(ModelConfig::from_dir(dir)?)
        } else {
            None
        };
        let quantization = match ModelConfig::quantization_of(&path, &text, &raw)? {
            Some(q) => Some(q),
            None => crate::snapshot::config::native_microscaling(&raw),
        };
        let weights = Weights::open(dir)?;
        let mut tensors = Tensors::stored(weights.names().map(|n| {
            let info = weights.info(n).expect("listed tensor");
            (n, info.shape.clone(), info.dtype)
        }));
        (rules.sanitize)(&mut tensors, &Hints { raw: &raw })
            .map_err(|p| problem(dir, &path, &weights, p))?;
        Ok(Self {
            dir: dir.to_path_buf(),
            model_type,
            rules,
            config,
            quantization,
            raw,
            text,
            weights,
            tensors,
        })
    }

    /// The path of config.json.
    pub fn config_path(&self) -> PathBuf {
        self.dir.join("config.json")
    }

    /// An error about the source pointing at `key` in config.json.
    pub fn at_key(&self, msg: String, key: &str, label: String) -> Diagnostic {
        let d = Diagnostic::error(code::Build::SourceMismatch, msg).with_file(self.config_path());
        let needle = format!("\"{key}\"");
        match self.text.find(&needle) {
            Some(start) => d
                .with_source(self.text.clone())
                .with_span(start..start + needle.len(), label),
            None => d,
        }
    }

    /// An output tensor of the conversion.
    pub fn out(&self, name: &str) -> Option<&Out> {
        self.tensors.outs.get(name)
    }

    /// The file holding (the first stored part of) output tensor `name`.
    pub fn file_of(&self, name: &str) -> &Path {
        let stored = match self.out(name).map(|o| &o.recipe) {
            Some(r) => first_stored(r),
            None => name,
        };
        self.weights.file_of(stored).unwrap_or(&self.dir)
    }

    /// Computes output tensor `name` in its stored dtype.
    pub fn array(&self, name: &str) -> Result<Array> {
        let out = self.out(name).ok_or_else(|| {
            Diagnostic::error(code::Build::Internal, format!("no tensor `{name}` planned"))
        })?;
        match &out.recipe {
            Recipe::Stored(name) => self.weights.raw_array(name),
            // Slices and swapped axes are views: written out, they must be row-major.
            r => Ok(eval(&self.weights, r)?.contiguous()?),
        }
    }
}

fn first_stored(r: &Recipe) -> &str {
    match r {
        Recipe::Stored(n) => n,
        Recipe::Stack(parts) => parts.first().map_or("", first_stored),
        Recipe::Slice { of, .. }
        | Recipe::SwapAxes(of, ..)
        | Recipe::PlusOne(of)
        | Recipe::Words(of) => first_stored(of),
    }
}

/// Evaluates a recipe (the result is materialised by the caller's `eval`).
fn eval(weights: &Weights, r: &Recipe) -> Result<Array> {
    Ok(match r {
        Recipe::Stored(name) => weights.raw_array(name)?,
        Recipe::Stack(parts) => {
            let arrays = parts
                .iter()
                .map(|p| eval(weights, p))
                .collect::<Result<Vec<_>>>()?;
            mlx_rs::ops::stack(&arrays, 0)?
        }
        Recipe::Slice {
            of,
            axis,
            start,
            step,
            len,
        } => {
            let a = eval(weights, of)?;
            let idx: Vec<i32> = (0..*len).map(|i| (start + i * step) as i32).collect();
            let idx = Array::from_slice(&idx, &[*len as i32]);
            a.take_axis(&idx, *axis as i32)?
        }
        Recipe::SwapAxes(of, a, b) => eval(weights, of)?.swap_axes(*a as i32, *b as i32)?,
        Recipe::PlusOne(of) => {
            let a = eval(weights, of)?;
            let one = Array::from_f32(1.0).as_dtype(a.dtype())?;
            a.add(&one)?
        }
        Recipe::Words(of) => {
            let a = eval(weights, of)?.view_dtype(mlx_rs::Dtype::Uint32)?;
            let shape = a.shape();
            let n = shape.len();
            let mut words = shape[..n.saturating_sub(2)].to_vec();
            words.push(shape[n.saturating_sub(2)..].iter().product());
            a.reshape(&words)?
        }
    })
}

fn unsupported(path: &Path, text: &Arc<str>, model_type: &str) -> Diagnostic {
    let d = Diagnostic::error(
        code::Build::UnsupportedArchitecture,
        format!("cannot convert model_type `{model_type}`"),
    )
    .with_file(path)
    .with_help(format!(
        "`cargo rmlx build` converts: {}",
        convert::convertible_model_types().join(", ")
    ));
    match text.find("\"model_type\"") {
        Some(start) => d.with_source(text.clone()).with_span(
            start..start + "\"model_type\"".len(),
            "no conversion rules for this",
        ),
        None => d,
    }
}

fn problem(dir: &Path, config: &Path, weights: &Weights, p: Problem) -> Diagnostic {
    let file = match &p.tensor {
        Some(t) => weights.file_of(t).unwrap_or(dir),
        None => config,
    };
    let shown = file
        .file_name()
        .unwrap_or(file.as_os_str())
        .to_string_lossy();
    let d = Diagnostic::error(
        code::Build::SourceMismatch,
        format!("{} (in {shown})", p.message),
    )
    .with_file(file);
    match p.help {
        Some(h) => d.with_help(h),
        None => d,
    }
}

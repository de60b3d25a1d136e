//! The engine's environment switches: knobs for measuring (A/B timings, graph dumps), not
//! settings. Each is declared once here as a [`Switch`] — its variable, what a value other
//! than the default does, the default, the values it takes and how they parse — and read
//! once per process, at its first use or when a model loads ([`read_all`]): a value other
//! than the default is logged once (info), a value the switch does not take is warned about,
//! naming the variable, and the default is used instead. This module is the only reader of
//! these variables; callers ask the functions below. README ("Environment switches (for
//! measuring)") lists [`ALL`], and its table is checked against it.

use std::env::VarError;
use std::sync::OnceLock;

use super::qmv::Activations;

/// Whether the CPU's host kernels run (quantized mat-vec, prefill GEMM, host decode and
/// attention); `false` leaves the CPU on MLX's path, as on a GPU. Only the CPU device and
/// AVX2/FMA decide further (`engine::qmv::enabled`).
pub fn host_kernels() -> bool {
    *HOST_KERNELS.get() != HostKernels::Off
}

/// Which float kernels the host kernels may use (`engine::qmv::family`).
pub fn host_kernel_width() -> HostKernels {
    *HOST_KERNELS.get()
}

/// The activations the host kernels multiply the weights with (`engine::qmv::activations`).
pub fn host_activations() -> super::qmv::Activations {
    *HOST_ACTIVATIONS.get()
}

/// What `RMLX_HOST_KERNELS` asks of the CPU's host kernels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostKernels {
    /// `0`: off, MLX's CPU kernels.
    Off,
    /// `avx2`: on, the AVX2 float kernels even where AVX-512 is present.
    Avx2,
    /// `amx`: on, the AMX kernels where the processor and the kernel allow them, in every
    /// process (a lone decode step is about as fast as the float kernels', BENCHMARKS.md
    /// round 14; the tiles' layouts take a second copy of the weights).
    Amx,
    /// `amx-batch`: on, the widest float kernels for one input and the AMX kernels for two
    /// or more, where the processor and the kernel allow them (opt-in: an input's result
    /// then depends on how many share its call, BENCHMARKS.md round 13).
    AmxBatch,
    /// `auto` (the default): on, the widest float kernels the processor runs — except in a
    /// server of batched steps (`engine::qmv::serve_batches`), which runs the AMX kernels
    /// where the processor and the kernel allow them (BENCHMARKS.md round 15).
    Auto,
    /// `1`: on, the widest float kernels the processor runs, in a server too.
    Float,
}

/// Whether q|k|v and gate|up are fused into one matmul each on MLX's path.
pub fn fuse() -> bool {
    *FUSE.get()
}

/// Whether the CPU prefill GEMM may run (with the host kernels on).
pub fn host_gemm() -> bool {
    *HOST_GEMM.get()
}

/// Whether a device step's values are read back through a cast on the device.
pub fn step_sync() -> bool {
    *STEP_SYNC.get()
}

/// Whether every device step computes its evidence, asked for or not.
pub fn step_evidence() -> bool {
    *STEP_EVIDENCE.get()
}

/// Whether a batched pass's greedy rows are picked together, in one read-back.
pub fn batch_picks() -> bool {
    *BATCH_PICKS.get()
}

/// Reads every switch now (each logs what it found), so a value set is acknowledged when a
/// model loads even if the path that uses it never runs. Called by `Model::load`.
pub fn read_all() {
    ALL.iter().for_each(|s| s.read_now());
}

/// From how many input rows on a quantized layer dequantizes its weight for a dense matmul.
pub fn dequant_rows() -> i32 {
    *DEQUANT_ROWS.get()
}

/// The path prefix a decode step's MLX graph is dumped to, if any (`mlx::graph::dump_once`).
pub fn graph_dot() -> Option<&'static str> {
    GRAPH_DOT.get().as_deref()
}

/// `RMLX_HOST_KERNELS`.
pub static HOST_KERNELS: Switch<HostKernels> = Switch::new(
    "RMLX_HOST_KERNELS",
    "`0` turns the CPU's host kernels (quantized mat-vec, prefill GEMM, host decode and \
     attention) off: every step on the CPU runs MLX's path, as on a GPU; `avx2` keeps their \
     AVX2 float kernels where AVX-512 ones would run; `amx` runs their quantized products on \
     the AMX tiles where the processor and the kernel allow it, in every process; `amx-batch` \
     only those of two or more inputs (one input: the float kernels); `1` keeps the float \
     kernels in a server too (by default a server of batched steps runs the AMX tiles where \
     they are available)",
    HostKernels::Auto,
    "0, 1, auto, avx2, amx or amx-batch",
    host_kernel_setting,
);

/// `RMLX_HOST_ACTIVATIONS`.
pub static HOST_ACTIVATIONS: Switch<Activations> = Switch::new(
    "RMLX_HOST_ACTIVATIONS",
    "`int8` quantizes the host kernels' input rows to int8 per 32 columns and multiplies them \
     with the integer weights in integer dot products (opt-in: it fails the oracle tolerances)",
    Activations::F32,
    "f32, float32 or int8",
    host_activations_setting,
);

/// `RMLX_FUSE`.
pub static FUSE: Switch<bool> = Switch::new(
    "RMLX_FUSE",
    "on MLX's path, q|k|v and gate|up stay separate matmuls instead of one fused matmul each",
    true,
    ZERO_OR_ONE,
    zero_or_one,
);

/// `RMLX_HOST_GEMM`.
pub static HOST_GEMM: Switch<bool> = Switch::new(
    "RMLX_HOST_GEMM",
    "the CPU prefill GEMM is off: prompts of 16 tokens or more run MLX's dequantize, matmul \
     and attention",
    true,
    ZERO_OR_ONE,
    zero_or_one,
);

/// `RMLX_STEP_SYNC`.
pub static STEP_SYNC: Switch<bool> = Switch::new(
    "RMLX_STEP_SYNC",
    "a device step's values are read back through a cast on the device (the old read-back, \
     which waits for the step pipelined after it)",
    false,
    ZERO_OR_ONE,
    zero_or_one,
);

/// `RMLX_STEP_EVIDENCE`.
pub static STEP_EVIDENCE: Switch<bool> = Switch::new(
    "RMLX_STEP_EVIDENCE",
    "every device step computes its log-probabilities and logit health, even when nobody \
     reads them",
    false,
    ZERO_OR_ONE,
    zero_or_one,
);

/// `RMLX_BATCH_PICKS`.
pub static BATCH_PICKS: Switch<bool> = Switch::new(
    "RMLX_BATCH_PICKS",
    "each row of a batched pass picks its greedy step on its own, instead of every row in \
     one evaluation and one read-back",
    true,
    ZERO_OR_ONE,
    zero_or_one,
);

/// `RMLX_DEQUANT_ROWS`.
pub static DEQUANT_ROWS: Switch<i32> = Switch::new(
    "RMLX_DEQUANT_ROWS",
    "from this many input rows on, a quantized layer dequantizes its weight for a dense \
     matmul instead of running MLX's quantized kernel",
    super::layers::DEQUANTIZED_MATMUL_ROWS,
    "a positive whole number",
    positive,
);

/// `RMLX_GRAPH_DOT`.
pub static GRAPH_DOT: Switch<Option<String>> = Switch::new(
    "RMLX_GRAPH_DOT",
    "the graph of the third decode step of each batch size B is written to <value>.bB.dot, \
     its primitives counted in <value>.bB.txt",
    None,
    "a path prefix",
    path_prefix,
);

/// Every switch, for the documentation and its test.
pub static ALL: [&(dyn Described + Sync); 9] = [
    &HOST_KERNELS,
    &HOST_ACTIVATIONS,
    &FUSE,
    &HOST_GEMM,
    &STEP_SYNC,
    &STEP_EVIDENCE,
    &BATCH_PICKS,
    &DEQUANT_ROWS,
    &GRAPH_DOT,
];

/// What the boolean switches take.
const ZERO_OR_ONE: &str = "0 or 1";

fn zero_or_one(v: &str) -> Option<bool> {
    match v {
        "0" => Some(false),
        "1" => Some(true),
        _ => None,
    }
}

fn host_kernel_setting(v: &str) -> Option<HostKernels> {
    match v {
        "0" => Some(HostKernels::Off),
        "1" => Some(HostKernels::Float),
        "auto" => Some(HostKernels::Auto),
        "avx2" => Some(HostKernels::Avx2),
        "amx" => Some(HostKernels::Amx),
        "amx-batch" => Some(HostKernels::AmxBatch),
        _ => None,
    }
}

fn host_activations_setting(v: &str) -> Option<Activations> {
    match v {
        "f32" | "float32" => Some(Activations::F32),
        "int8" => Some(Activations::Int8),
        _ => None,
    }
}

fn positive(v: &str) -> Option<i32> {
    v.parse().ok().filter(|&n: &i32| n > 0)
}

fn path_prefix(v: &str) -> Option<Option<String>> {
    Some(Some(v.to_string()))
}

/// A value a switch takes.
pub trait SwitchValue: Clone + PartialEq + Send + Sync + 'static {
    /// The value as it is written in the environment (`unset` for none).
    fn shown(&self) -> String;
}

impl SwitchValue for bool {
    fn shown(&self) -> String {
        if *self { "1" } else { "0" }.to_string()
    }
}

impl SwitchValue for HostKernels {
    fn shown(&self) -> String {
        match self {
            HostKernels::Off => "0",
            HostKernels::Avx2 => "avx2",
            HostKernels::Amx => "amx",
            HostKernels::AmxBatch => "amx-batch",
            HostKernels::Auto => "auto",
            HostKernels::Float => "1",
        }
        .to_string()
    }
}

impl SwitchValue for Activations {
    fn shown(&self) -> String {
        match self {
            Activations::F32 => "f32",
            Activations::Int8 => "int8",
        }
        .to_string()
    }
}

impl SwitchValue for i32 {
    fn shown(&self) -> String {
        self.to_string()
    }
}

impl SwitchValue for Option<String> {
    fn shown(&self) -> String {
        self.clone().unwrap_or_else(|| "unset".to_string())
    }
}

/// One environment switch (see the module doc).
pub struct Switch<T: SwitchValue> {
    name: &'static str,
    meaning: &'static str,
    default: T,
    expects: &'static str,
    parse: fn(&str) -> Option<T>,
    value: OnceLock<T>,
}

/// A switch as the documentation shows it.
pub trait Described {
    /// The environment variable.
    fn name(&self) -> &'static str;
    /// What a value other than the default does.
    fn meaning(&self) -> &'static str;
    /// The default, as written in the environment.
    fn default_shown(&self) -> String;
    /// The values it takes.
    fn expects(&self) -> &'static str;
    /// Reads the switch for this process, if not done yet (see [`Switch::get`]).
    fn read_now(&'static self);
}

impl<T: SwitchValue> Described for Switch<T> {
    fn name(&self) -> &'static str {
        self.name
    }
    fn meaning(&self) -> &'static str {
        self.meaning
    }
    fn default_shown(&self) -> String {
        self.default.shown()
    }
    fn expects(&self) -> &'static str {
        self.expects
    }
    fn read_now(&'static self) {
        self.get();
    }
}

/// What reading a switch found: the value to use and what to log about it.
#[derive(Debug, PartialEq)]
pub struct Reading<T> {
    /// The value.
    pub value: T,
    /// The line to log, if any.
    pub note: Option<Note>,
}

/// A line a reading logs.
#[derive(Debug, PartialEq)]
pub enum Note {
    /// A value other than the default (info).
    Set(String),
    /// A value the switch does not take: the default is used (warning).
    Invalid(String),
}

impl<T: SwitchValue> Switch<T> {
    const fn new(
        name: &'static str,
        meaning: &'static str,
        default: T,
        expects: &'static str,
        parse: fn(&str) -> Option<T>,
    ) -> Self {
        Self {
            name,
            meaning,
            default,
            expects,
            parse,
            value: OnceLock::new(),
        }
    }

    /// The value for this process: the variable is read, and its note logged, at the first
    /// call only.
    pub fn get(&'static self) -> &'static T {
        self.value.get_or_init(|| {
            let reading = self.read(std::env::var(self.name));
            match &reading.note {
                Some(Note::Set(line)) => tracing::info!("{line}"),
                Some(Note::Invalid(line)) => tracing::warn!("{line}"),
                None => {}
            }
            reading.value
        })
    }

    /// The value `var` (what `std::env::var` answered for this switch) gives, and what to
    /// log about it. Pure: the tests read values without touching the environment.
    pub fn read(&self, var: Result<String, VarError>) -> Reading<T> {
        let raw = match var {
            Err(VarError::NotPresent) => return self.reading(self.default.clone(), None),
            Err(VarError::NotUnicode(raw)) => return self.invalid(&raw.to_string_lossy()),
            Ok(raw) => raw,
        };
        match (self.parse)(&raw) {
            Some(value) if value == self.default => self.reading(value, None),
            Some(value) => {
                let line = format!("{}={raw}: {}", self.name, self.meaning);
                self.reading(value, Some(Note::Set(line)))
            }
            None => self.invalid(&raw),
        }
    }

    fn invalid(&self, raw: &str) -> Reading<T> {
        let line = format!(
            "{}={raw:?} is not {}: ignored, the default {} is used",
            self.name,
            self.expects,
            self.default.shown()
        );
        self.reading(self.default.clone(), Some(Note::Invalid(line)))
    }

    fn reading(&self, value: T, note: Option<Note>) -> Reading<T> {
        Reading { value, note }
    }
}

#[cfg(test)]
mod tests {
    use std::env::VarError;
    use std::path::Path;

    use super::{
        HostKernels, Note, Reading, ALL, DEQUANT_ROWS, GRAPH_DOT, HOST_ACTIVATIONS, HOST_KERNELS,
        STEP_SYNC,
    };

    fn set(v: &str) -> Result<String, VarError> {
        Ok(v.to_string())
    }

    fn invalid_note<T>(r: &Reading<T>) -> &str {
        match &r.note {
            Some(Note::Invalid(line)) => line,
            other => panic!("expected a warning, got {other:?}"),
        }
    }

    #[test]
    fn a_boolean_switch_takes_0_and_1_and_logs_only_a_change() {
        assert!(STEP_SYNC.read(set("1")).value);
        assert!(
            matches!(&STEP_SYNC.read(set("1")).note, Some(Note::Set(l)) if l.starts_with("RMLX_STEP_SYNC=1: "))
        );
        assert_eq!(
            STEP_SYNC.read(set("0")),
            Reading {
                value: false,
                note: None
            }
        );
        assert_eq!(
            STEP_SYNC.read(Err(VarError::NotPresent)),
            Reading {
                value: false,
                note: None
            }
        );
    }

    #[test]
    fn host_kernels_take_off_auto_avx2_and_amx() {
        let off = HOST_KERNELS.read(set("0"));
        assert_eq!(off.value, HostKernels::Off);
        assert!(matches!(&off.note, Some(Note::Set(l)) if l.starts_with("RMLX_HOST_KERNELS=0: ")));
        let avx2 = HOST_KERNELS.read(set("avx2"));
        assert_eq!(avx2.value, HostKernels::Avx2);
        assert!(matches!(avx2.note, Some(Note::Set(_))));
        let amx = HOST_KERNELS.read(set("amx"));
        assert_eq!(amx.value, HostKernels::Amx);
        assert!(matches!(amx.note, Some(Note::Set(_))));
        let batch = HOST_KERNELS.read(set("amx-batch"));
        assert_eq!(batch.value, HostKernels::AmxBatch);
        assert!(matches!(batch.note, Some(Note::Set(_))));
        let float = HOST_KERNELS.read(set("1"));
        assert_eq!(float.value, HostKernels::Float);
        assert!(matches!(float.note, Some(Note::Set(_))));
        let auto = HOST_KERNELS.read(set("auto"));
        assert_eq!((auto.value, auto.note), (HostKernels::Auto, None));
        let unset = HOST_KERNELS.read(Err(VarError::NotPresent));
        assert_eq!((unset.value, unset.note), (HostKernels::Auto, None));
    }

    #[test]
    fn a_value_a_switch_does_not_take_is_warned_about_and_the_default_used() {
        for raw in ["off", "false", " 0", "", "avx512", "AMX"] {
            let r = HOST_KERNELS.read(set(raw));
            assert_eq!(
                r.value,
                HostKernels::Auto,
                "{raw:?} changed the host kernels"
            );
            let line = invalid_note(&r);
            assert!(
                line.contains("RMLX_HOST_KERNELS")
                    && line.contains("0, 1, auto, avx2, amx or amx-batch"),
                "{line}"
            );
        }
        let r = STEP_SYNC.read(set("yes"));
        assert!(!r.value);
        assert!(invalid_note(&r).contains(&format!("{:?}", "yes")));
        let bytes = std::ffi::OsString::from("x");
        let r = HOST_KERNELS.read(Err(VarError::NotUnicode(bytes)));
        assert_eq!(r.value, HostKernels::Auto);
        assert!(invalid_note(&r).contains("RMLX_HOST_KERNELS"));
    }

    #[test]
    fn host_activations_take_f32_and_int8() {
        use crate::engine::qmv::Activations;
        for raw in ["f32", "float32"] {
            let r = HOST_ACTIVATIONS.read(set(raw));
            assert_eq!((r.value, r.note), (Activations::F32, None), "{raw}");
        }
        let int8 = HOST_ACTIVATIONS.read(set("int8"));
        assert_eq!(int8.value, Activations::Int8);
        assert!(matches!(int8.note, Some(Note::Set(_))));
        let r = HOST_ACTIVATIONS.read(set("i8"));
        assert_eq!(r.value, Activations::F32);
        assert!(invalid_note(&r).contains("RMLX_HOST_ACTIVATIONS"));
    }

    #[test]
    fn dequant_rows_takes_a_positive_number() {
        let default = crate::engine::layers::DEQUANTIZED_MATMUL_ROWS;
        let r = DEQUANT_ROWS.read(set("8"));
        assert_eq!(r.value, 8);
        assert!(matches!(r.note, Some(Note::Set(_))));
        for raw in ["0", "-3", "4.5", "many"] {
            let r = DEQUANT_ROWS.read(set(raw));
            assert_eq!(r.value, default, "{raw}");
            assert!(invalid_note(&r).contains("RMLX_DEQUANT_ROWS"));
        }
        let same = DEQUANT_ROWS.read(set(&default.to_string()));
        assert_eq!(same.note, None, "the default set explicitly");
    }

    #[test]
    fn graph_dot_takes_a_path_prefix() {
        let r = GRAPH_DOT.read(set("/tmp/step"));
        assert_eq!(r.value.as_deref(), Some("/tmp/step"));
        assert!(matches!(r.note, Some(Note::Set(_))));
        assert_eq!(GRAPH_DOT.read(Err(VarError::NotPresent)).value, None);
    }

    /// Every switch is named `RMLX_…` once, documented in README's table and ARCHITECTURE.md,
    /// and read nowhere else in the workspace's sources.
    #[test]
    fn every_switch_is_documented_and_read_only_here() {
        let model = Path::new(env!("CARGO_MANIFEST_DIR"));
        let crates = model.parent().expect("cargo-rmlx/");
        let root = crates.parent().expect("the workspace");
        let readme = std::fs::read_to_string(root.join("README.md")).expect("README");
        let arch = std::fs::read_to_string(root.join("ARCHITECTURE.md")).expect("ARCHITECTURE");
        let table = readme_table(&readme);
        let mut names: Vec<&str> = ALL.iter().map(|s| s.name()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), ALL.len(), "a switch declared twice");
        let mut documented: Vec<&str> = table.iter().map(|(n, _)| n.as_str()).collect();
        documented.sort();
        assert_eq!(documented, names, "README's switch table");
        for s in ALL.iter() {
            let row = &table.iter().find(|(n, _)| n == s.name()).expect("row").1;
            assert!(row.contains(&format!("`{}`", s.default_shown())), "{row}");
            assert!(
                arch.contains(s.name()),
                "{} not in ARCHITECTURE.md",
                s.name()
            );
        }
        let here = model.join("src/engine/switches.rs");
        let mut files = Vec::new();
        sources(crates, &mut files);
        assert!(files.len() > 150, "found only {} sources", files.len());
        for f in files.iter().filter(|f| **f != here) {
            let text = std::fs::read_to_string(f).expect("source");
            for name in &names {
                assert!(
                    !text.contains(&format!("\"{name}\"")),
                    "{name} read in {f:?}"
                );
            }
        }
    }

    /// The rows of README's "Environment switches (for measuring)" table: (variable, row).
    fn readme_table(readme: &str) -> Vec<(String, String)> {
        let start = readme
            .find("### Environment switches (for measuring)")
            .expect("README has the section");
        readme[start..]
            .lines()
            .skip_while(|l| !l.starts_with('|'))
            .take_while(|l| l.starts_with('|'))
            .filter_map(|l| {
                let name = l.strip_prefix("| `")?.split('`').next()?;
                name.starts_with("RMLX_")
                    .then(|| (name.to_string(), l.to_string()))
            })
            .collect()
    }

    /// Every `.rs` file under `dir`.
    fn sources(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("directory") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                sources(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
}

//! Every diagnostic code, typed: one enum per area (`rmlx::<area>::<what>`) and [`Code`], the
//! union of them that a [`Diagnostic`](super::Diagnostic) carries.
//!
//! The table at the bottom is the only place a code is declared. Each line names the variant,
//! the string after `rmlx::<area>::` and the process [`Exit`] code the CLI ends with when the
//! diagnostic stops a command; the macro expands it into exhaustive matches (no wildcard), so
//! a new code cannot compile without its exit code, and its string cannot differ between the
//! CLI, the JSON output and the language server. Strings are stable: never rename or reuse
//! one (tests, editors and scripts match on them).

use std::fmt;

/// The process exit codes of `cargo rmlx` (README: "Exit codes").
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Exit {
    /// Success.
    Ok,
    /// The probe found a broken model.
    Broken,
    /// Usage, manifest, template or prompt error.
    Usage,
    /// A model failed to load (missing/truncated weights, shape mismatch, corrupt GGUF,
    /// unreadable tokenizer).
    Load,
    /// The probe was inconclusive.
    Inconclusive,
    /// The model's architecture is not supported.
    Unsupported,
}

impl Exit {
    /// Every exit code, in numeric order.
    pub const ALL: [Exit; 6] = [
        Exit::Ok,
        Exit::Broken,
        Exit::Usage,
        Exit::Load,
        Exit::Inconclusive,
        Exit::Unsupported,
    ];

    /// The number the process exits with.
    pub const fn code(self) -> u8 {
        match self {
            Exit::Ok => 0,
            Exit::Broken => 1,
            Exit::Usage => 2,
            Exit::Load => 3,
            Exit::Inconclusive => 4,
            Exit::Unsupported => 5,
        }
    }
}

/// Declares the per-area code enums, [`Code`] and their string and exit-code mappings.
macro_rules! codes {
    ($($area:ident in $prefix:literal { $($variant:ident = $what:literal => $exit:ident,)* })*) => {
        $(
            #[doc = concat!("The codes `rmlx::", $prefix, "::…`.")]
            #[derive(Clone, Copy, PartialEq, Eq, Hash)]
            pub enum $area {
                $(#[doc = concat!("`rmlx::", $prefix, "::", $what, "`")] $variant,)*
            }

            impl $area {
                /// Every code of this area.
                pub const ALL: &'static [$area] = &[$($area::$variant,)*];

                /// The stable string, `rmlx::<area>::<what>`.
                pub const fn as_str(self) -> &'static str {
                    match self {
                        $($area::$variant => concat!("rmlx::", $prefix, "::", $what),)*
                    }
                }

                /// The exit code of a command stopped by this diagnostic.
                pub const fn exit(self) -> Exit {
                    match self {
                        $($area::$variant => Exit::$exit,)*
                    }
                }
            }

            impl From<$area> for Code {
                fn from(c: $area) -> Code {
                    Code::$area(c)
                }
            }

            impl PartialEq<$area> for Code {
                fn eq(&self, other: &$area) -> bool {
                    *self == Code::$area(*other)
                }
            }

            impl fmt::Debug for $area {
                fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    fmt::Debug::fmt(self.as_str(), f)
                }
            }
        )*

        /// A diagnostic code: which area raised it and what it is.
        #[derive(Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Code {
            $(#[doc = concat!("`rmlx::", $prefix, "::…`")] $area($area),)*
        }

        impl Code {
            /// The stable string, `rmlx::<area>::<what>`.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(Code::$area(c) => c.as_str(),)*
                }
            }

            /// The exit code of a command stopped by this diagnostic.
            pub const fn exit(self) -> Exit {
                match self {
                    $(Code::$area(c) => c.exit(),)*
                }
            }

            /// Every code.
            pub fn all() -> impl Iterator<Item = Code> {
                std::iter::empty()
                    $(.chain($area::ALL.iter().map(|&c| Code::$area(c))))*
            }
        }
    };
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl serde::Serialize for Code {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl From<Code> for String {
    fn from(c: Code) -> String {
        c.as_str().to_string()
    }
}

impl PartialEq<&str> for Code {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl PartialEq<Code> for &str {
    fn eq(&self, other: &Code) -> bool {
        *self == other.as_str()
    }
}

codes! {
    Bench in "bench" {
        Gguf = "gguf" => Usage,
        Probe = "probe" => Usage,
        Prompt = "prompt" => Usage,
        Reference = "reference" => Usage,
        Scripts = "scripts" => Usage,
    }
    Build in "build" {
        Dequantize = "dequantize" => Usage,
        Internal = "internal" => Usage,
        Io = "io" => Usage,
        MissingTokenizer = "missing-tokenizer" => Usage,
        Mlx = "mlx" => Usage,
        Requantize = "requantize" => Usage,
        SourceMismatch = "source-mismatch" => Usage,
        UnsupportedArchitecture = "unsupported-architecture" => Unsupported,
        UnsupportedDtype = "unsupported-dtype" => Usage,
        UnusedOverride = "unused-override" => Usage,
    }
    Cli in "cli" {
        BadArgument = "bad-argument" => Usage,
        EmptyApiKey = "empty-api-key" => Usage,
        Io = "io" => Usage,
        LspFailed = "lsp-failed" => Usage,
        LspNotFound = "lsp-not-found" => Usage,
        NoModels = "no-models" => Usage,
        UnknownModel = "unknown-model" => Usage,
        Usage = "usage" => Usage,
    }
    Constrain in "constrain" {
        Invalid = "invalid" => Usage,
        Tokenizer = "tokenizer" => Usage,
        Tools = "tools" => Usage,
    }
    Convert in "convert" {
        BadOutput = "bad-output" => Usage,
        OutputExists = "output-exists" => Usage,
        OutputIsInput = "output-is-input" => Usage,
    }
    Dist in "dist" {
        Hostfile = "hostfile" => Usage,
        Launch = "launch" => Usage,
    }
    Engine in "engine" {
        Cache = "cache" => Load,
        DistBackend = "dist::backend" => Load,
        DistFused = "dist::fused" => Load,
        DistIndivisible = "dist::indivisible" => Load,
        DistInit = "dist::init" => Load,
        DistRankDied = "dist::rank-died" => Load,
        DistUnreachable = "dist::unreachable" => Load,
        DistUnsupportedArchitecture = "dist::unsupported-architecture" => Unsupported,
        Eval = "eval" => Load,
        HostAttention = "host-attention" => Load,
        HostGemm = "host-gemm" => Load,
        HostKernel = "host-kernel" => Load,
        Mlx = "mlx" => Load,
        NetworkUnwrapped = "network::unwrapped" => Load,
        Rope = "rope" => Load,
    }
    Generate in "generate" {
        BadToken = "bad-token" => Usage,
        ContextOverflow = "context-overflow" => Usage,
        EmptyPrompt = "empty-prompt" => Usage,
        NoLogits = "no-logits" => Usage,
        PrefilledCache = "prefilled-cache" => Usage,
    }
    Gguf in "gguf" {
        BadCount = "bad-count" => Load,
        BadMagic = "bad-magic" => Load,
        BadMetadata = "bad-metadata" => Load,
        BadTensor = "bad-tensor" => Load,
        Internal = "internal" => Load,
        Io = "io" => Load,
        MissingMetadata = "missing-metadata" => Load,
        MissingTensor = "missing-tensor" => Load,
        NotAFile = "not-a-file" => Load,
        SizeLimit = "size-limit" => Load,
        Truncated = "truncated" => Load,
        UnknownTensor = "unknown-tensor" => Load,
        UnsupportedArchitecture = "unsupported-architecture" => Unsupported,
        UnsupportedTokenizer = "unsupported-tokenizer" => Load,
        UnsupportedType = "unsupported-type" => Load,
        UnsupportedVersion = "unsupported-version" => Load,
    }
    Lint in "lint" {
        Capabilities = "capabilities" => Usage,
        DoubleBos = "double-bos" => Usage,
        DuplicateBos = "duplicate-bos" => Usage,
        GenerationPrompt = "generation-prompt" => Usage,
        MissingBos = "missing-bos" => Usage,
        NoSuchPath = "no-such-path" => Usage,
        RejectsInput = "rejects-input" => Usage,
        RenderFailed = "render-failed" => Usage,
        SeedTokens = "seed-tokens" => Usage,
        SplitSpecialToken = "split-special-token" => Usage,
        Tokenizer = "tokenizer" => Usage,
        ToolFormat = "tool-format" => Usage,
        UndeclaredVariable = "undeclared-variable" => Usage,
        UnsupportedInput = "unsupported-input" => Usage,
    }
    Manifest in "manifest" {
        BadSource = "bad-source" => Usage,
        CargoMetadata = "cargo-metadata" => Usage,
        Exists = "exists" => Usage,
        InvalidValue = "invalid-value" => Usage,
        Io = "io" => Usage,
        MissingChatTemplate = "missing-chat-template" => Usage,
        MissingKey = "missing-key" => Usage,
        MissingSource = "missing-source" => Usage,
        NoModels = "no-models" => Usage,
        NotBuilt = "not-built" => Usage,
        NotFound = "not-found" => Usage,
        Syntax = "syntax" => Usage,
        UnknownKey = "unknown-key" => Usage,
        UnknownModel = "unknown-model" => Usage,
        WrongType = "wrong-type" => Usage,
    }
    Probe in "probe" {
        BlessUnhealthy = "bless-unhealthy" => Usage,
        BrokenEmpty = "broken-empty" => Broken,
        BrokenLoop = "broken-loop" => Broken,
        BrokenNan = "broken-nan" => Broken,
        Diverged = "diverged" => Broken,
        Golden = "golden" => Usage,
        GoldenMismatch = "golden-mismatch" => Usage,
        Inconclusive = "inconclusive" => Inconclusive,
        Ok = "ok" => Ok,
        Panicked = "panicked" => Usage,
        Reference = "reference" => Usage,
        UnexpectedAnswer = "unexpected-answer" => Broken,
    }
    Serve in "serve" {
        Bind = "bind" => Usage,
        CorsOrigin = "cors-origin" => Usage,
        DistributedDesync = "distributed::desync" => Usage,
        DistributedNoGroup = "distributed::no-group" => Usage,
        DistributedPath = "distributed::path" => Usage,
        DistributedVersion = "distributed::version" => Usage,
        DuplicateModel = "duplicate-model" => Usage,
        Io = "io" => Usage,
        NoModels = "no-models" => Usage,
        ProbeFailed = "probe-failed" => Usage,
        Runtime = "runtime" => Usage,
        Thread = "thread" => Usage,
        Watch = "watch" => Usage,
    }
    Snapshot in "snapshot" {
        BadSafetensors = "bad-safetensors" => Load,
        Config = "config" => Load,
        ConfigMismatch = "config-mismatch" => Load,
        DuplicateTensor = "duplicate-tensor" => Load,
        GenerationConfig = "generation-config" => Load,
        Index = "index" => Load,
        Io = "io" => Load,
        MissingConfig = "missing-config" => Load,
        MissingTensor = "missing-tensor" => Load,
        MissingWeights = "missing-weights" => Load,
        NotFound = "not-found" => Load,
        Quantization = "quantization" => Load,
        RopeScaling = "rope-scaling" => Load,
        ShapeMismatch = "shape-mismatch" => Load,
        SizeLimit = "size-limit" => Load,
        Truncated = "truncated" => Load,
        UnsupportedArchitecture = "unsupported-architecture" => Unsupported,
        UnsupportedDtype = "unsupported-dtype" => Load,
    }
    Template in "template" {
        Config = "config" => Usage,
        Context = "context" => Usage,
        Encoding = "encoding" => Usage,
        FuelExhausted = "fuel-exhausted" => Usage,
        Markers = "markers" => Usage,
        Missing = "missing" => Usage,
        Raised = "raised" => Usage,
        Read = "read" => Usage,
        Render = "render" => Usage,
        Resources = "resources" => Usage,
        SpecialInContent = "special-in-content" => Usage,
        Syntax = "syntax" => Usage,
        UnknownFilter = "unknown-filter" => Usage,
        UnknownFunction = "unknown-function" => Usage,
        UnknownMethod = "unknown-method" => Usage,
        UnknownTest = "unknown-test" => Usage,
    }
    Tokenize in "tokenize" {
        Encode = "encode" => Load,
        Load = "load" => Load,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    /// The exit codes the README documents (its "Exit codes" table).
    fn documented_exit_codes() -> HashSet<u8> {
        let readme = include_str!("../../../../README.md");
        let table = readme
            .split("### Exit codes")
            .nth(1)
            .expect("README has an \"Exit codes\" section");
        table
            .lines()
            .skip_while(|l| !l.starts_with('|'))
            .take_while(|l| l.starts_with('|'))
            .filter_map(|l| l.trim_matches('|').split('|').next()?.trim().parse().ok())
            .collect()
    }

    #[test]
    fn every_code_string_is_unique_and_well_formed() {
        let mut seen = HashSet::new();
        for c in Code::all() {
            let s = c.as_str();
            assert!(seen.insert(s), "{s} declared twice");
            let parts: Vec<&str> = s.split("::").collect();
            assert!(parts.len() >= 3 && parts[0] == "rmlx", "{s}");
            assert!(
                parts[1..].iter().all(|p| !p.is_empty()
                    && p.chars()
                        .all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || ch == '-')),
                "{s}"
            );
        }
        assert!(seen.len() > 100, "only {} codes", seen.len());
    }

    #[test]
    fn every_code_maps_to_a_documented_exit_code() {
        let documented = documented_exit_codes();
        let ours: HashSet<u8> = Exit::ALL.iter().map(|e| e.code()).collect();
        assert_eq!(documented, ours, "README exit-code table and `Exit` differ");
        for c in Code::all() {
            assert!(documented.contains(&c.exit().code()), "{c}");
        }
    }

    #[test]
    fn string_form_and_exit_codes_of_known_codes() {
        let cases: [(Code, &str, u8); 6] = [
            (Snapshot::Truncated.into(), "rmlx::snapshot::truncated", 3),
            (
                Engine::DistRankDied.into(),
                "rmlx::engine::dist::rank-died",
                3,
            ),
            (
                Build::UnsupportedArchitecture.into(),
                "rmlx::build::unsupported-architecture",
                5,
            ),
            (
                Gguf::UnsupportedArchitecture.into(),
                "rmlx::gguf::unsupported-architecture",
                5,
            ),
            (
                Manifest::UnknownKey.into(),
                "rmlx::manifest::unknown-key",
                2,
            ),
            (Probe::Inconclusive.into(), "rmlx::probe::inconclusive", 4),
        ];
        for (code, s, exit) in cases {
            assert_eq!(code.as_str(), s);
            assert_eq!(code.to_string(), s);
            assert_eq!(code.exit().code(), exit, "{s}");
            assert_eq!(serde_json::to_value(code).unwrap(), serde_json::json!(s));
        }
    }
}

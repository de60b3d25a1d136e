//! The command line: clap definitions wired the cargo way (`cargo rmlx …` and
//! `cargo-rmlx rmlx …` both parse), global flags (`--manifest-path`, `--color`, `-v/-q`),
//! logging setup, miette reporting and the documented exit codes. Each subcommand lives in its
//! own file and only translates arguments into library calls.

mod bench;
mod build;
mod convert;
mod generate;
mod init;
mod launch;
mod lint;
mod lsp;
mod output;
mod probe;
mod render;
mod serve;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::diagnostic::Diagnostic;

/// Exit codes (documented in the README; stable).
pub mod exit {
    use crate::diagnostic::Exit;

    /// Success.
    pub const OK: u8 = Exit::Ok.code();
    /// Usage, manifest, template or prompt error.
    pub const USAGE: u8 = Exit::Usage.code();
}

#[derive(Debug, Parser)]
#[command(name = "cargo", bin_name = "cargo", styles = clap::builder::styling::Styles::styled())]
enum CargoCli {
    /// Declare, build, probe, serve and lint local MLX-format LLMs.
    Rmlx(Cli),
}

/// Declare, build, probe, serve and lint local MLX-format LLMs.
#[derive(Debug, Args)]
#[command(version, about, long_about = None)]
pub struct Cli {
    #[command(flatten)]
    global: GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

/// Flags every subcommand accepts.
#[derive(Debug, Args, Clone)]
pub struct GlobalArgs {
    /// Path to Cargo.toml (locates the workspace and its rmlx.toml).
    #[arg(long, global = true, value_name = "PATH")]
    pub manifest_path: Option<PathBuf>,
    /// Coloring of output.
    #[arg(
        long,
        global = true,
        value_enum,
        env = "CARGO_TERM_COLOR",
        default_value = "auto"
    )]
    pub color: ColorChoice,
    /// More output (repeat for more; RUST_LOG overrides).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Less output: no status lines or progress bars, errors only.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,
}

/// `--color`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ColorChoice {
    /// Color when stderr is a terminal (`NO_COLOR`, `CLICOLOR_FORCE`, `CLICOLOR` apply).
    Auto,
    /// Always color.
    Always,
    /// Never color.
    Never,
}

/// `--message-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum MessageFormat {
    /// Text for people.
    #[default]
    Human,
    /// One JSON object per line, each with a `reason` field (see the README's schema).
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a model on a prompt.
    Generate(generate::GenerateArgs),
    /// Import a GGUF file into an MLX-format model directory.
    Convert(convert::ConvertArgs),
    /// Measure prefill/decode throughput and memory (optionally next to mlx-lm).
    Bench(bench::BenchArgs),
    /// Smoke-probe models: a templated seed question, a short greedy run, a verdict.
    Probe(probe::ProbeArgs),
    /// Build the models declared in rmlx.toml into target/rmlx/<name>/.
    Build(build::BuildArgs),
    /// Write an rmlx.toml scaffold at the workspace root.
    Init(init::InitArgs),
    /// Render a chat template with a JSON context (prints the prompt byte-exact).
    Render(render::RenderArgs),
    /// Lint chat templates (syntax, engine gaps, sample renders, tokenizer checks).
    Lint(lint::LintArgs),
    /// Serve models over an OpenAI-compatible HTTP API (probe-gated, hot reload with --watch).
    Serve(serve::ServeArgs),
    /// Start the language server (rmlx-lsp) on stdio.
    Lsp(lsp::LspArgs),
}

/// Entry point of the `cargo-rmlx` binary.
pub fn main() -> ExitCode {
    let mut args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    // Invoked directly as `cargo-rmlx …` (not through cargo): accept it without the
    // `rmlx` word as well.
    if args.get(1).is_none_or(|a| a != "rmlx") {
        args.insert(1, "rmlx".into());
    }
    let CargoCli::Rmlx(cli) = match CargoCli::try_parse_from(args) {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() {
                exit::USAGE
            } else {
                exit::OK
            };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    let machine = cli.command.message_format() == MessageFormat::Json;
    output::init(&cli.global, machine);
    let result = match cli.command {
        Command::Generate(a) => generate::run(&cli.global, a),
        Command::Convert(a) => convert::run(&cli.global, a),
        Command::Bench(a) => bench::run(&cli.global, a),
        Command::Probe(a) => probe::run(&cli.global, a),
        Command::Build(a) => build::run(&cli.global, a),
        Command::Init(a) => init::run(&cli.global, a),
        Command::Render(a) => render::run(&cli.global, a),
        Command::Lint(a) => lint::run(&cli.global, a),
        Command::Serve(a) => serve::run(&cli.global, a),
        Command::Lsp(a) => lsp::run(&cli.global, a),
    };
    let code = match result {
        Ok(code) => code,
        Err(diag) => {
            if machine {
                output::diagnostic_message(&diag);
            }
            output::report(&diag);
            exit_code(&diag)
        }
    };
    crate::engine::process::exit(code)
}

impl Command {
    /// The `--message-format` of subcommands that have one (human for the others).
    fn message_format(&self) -> MessageFormat {
        match self {
            Command::Generate(a) => a.message_format,
            Command::Convert(a) => a.message_format,
            Command::Bench(a) => a.message_format,
            Command::Probe(a) => a.message_format,
            Command::Build(a) => a.message_format,
            Command::Lint(a) => a.message_format,
            Command::Init(_) | Command::Render(_) | Command::Serve(_) | Command::Lsp(_) => {
                MessageFormat::Human
            }
        }
    }
}

/// The exit code for a failed command, from its diagnostic's code (the table in
/// [`crate::diagnostic::code`]).
pub fn exit_code(d: &Diagnostic) -> u8 {
    d.exit_code()
}

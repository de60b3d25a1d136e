//! `cargo rmlx serve [MODEL…] [--watch] [--host H] [--port P] …`: the OpenAI-compatible
//! server. Translates arguments and rmlx.toml's `[serve]` into [`ServeOptions`] and prints
//! the server's events.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use clap::Args;

use super::output::{report, status};
use super::{exit, GlobalArgs};
use crate::diagnostic::{code, Diagnostic, Result};
use crate::engine::DtypePolicy;
use crate::manifest::Manifest;
use crate::serve::{
    distributed, serve, HttpConfig, LoadSettings, ModelSource, ServeEvent, ServeOptions, Stopped,
};
use crate::session::ContentTokens;

/// Requests a model generates together unless `--max-batch` or rmlx.toml say otherwise
/// (measured: BENCHMARKS.md, "Serving").
pub const DEFAULT_MAX_BATCH: usize = 8;

/// Arguments of `serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Models to serve: names declared in rmlx.toml (built before loading) or model
    /// directories. Default: every model declared in rmlx.toml. The first one answers
    /// requests that name no model.
    pub models: Vec<String>,
    /// Address to bind (default: [serve] host in rmlx.toml, else 127.0.0.1).
    #[arg(long)]
    pub host: Option<String>,
    /// Port to bind, 0 for any free port (default: [serve] port in rmlx.toml, else 8080).
    #[arg(long)]
    pub port: Option<u16>,
    /// Rebuild, reload, re-probe and hot-swap a model when its files, its source or
    /// rmlx.toml change.
    #[arg(long)]
    pub watch: bool,
    /// Serve models without probing them first.
    #[arg(long)]
    pub no_probe: bool,
    /// Require `Authorization: Bearer <KEY>` on /v1/* endpoints (an empty key is refused).
    #[arg(long, env = "RMLX_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Allow cross-origin requests from these origins (`scheme://host[:port]`, or `*` for
    /// any); without it no CORS headers are sent.
    #[arg(long, num_args = 1.., value_name = "ORIGIN")]
    pub cors: Vec<String>,
    /// Seconds a client may take to send a request head (also how long a kept-alive
    /// connection may stay idle) and, separately, its body.
    #[arg(long, default_value_t = 15)]
    pub read_timeout: u64,
    /// Encode special-token strings typed in messages (`<|im_start|>`…) as the control
    /// tokens they spell instead of as text; lets any client forge turns (default: [serve]
    /// content-special-tokens in rmlx.toml, else off).
    #[arg(long)]
    pub content_special_tokens: bool,
    /// Requests that may wait per model while a full batch runs; more get 429.
    #[arg(long, default_value_t = 8)]
    pub queue_depth: usize,
    /// Requests a model generates together (continuous batching); 1 runs them one at a
    /// time (default: [serve] max-batch in rmlx.toml, else 8).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub max_batch: Option<u16>,
    /// Per-request time limit in seconds (queue wait included).
    #[arg(long, default_value_t = 600)]
    pub timeout: u64,
    /// Largest request body in bytes; larger ones get 413.
    #[arg(long, default_value_t = 4 << 20)]
    pub max_body_bytes: usize,
    /// `max_tokens` of requests that set none.
    #[arg(long, default_value_t = 512)]
    pub max_tokens: usize,
    /// Quiet time in milliseconds that ends a burst of file events (--watch).
    #[arg(long, default_value_t = 500)]
    pub debounce_ms: u64,
    /// Seconds in-flight requests may take after SIGINT/SIGTERM.
    #[arg(long, default_value_t = 30)]
    pub shutdown_timeout: u64,
    /// Memory budget in MiB of each model's prompt cache (states of earlier requests reused
    /// for prompts that start the same way), least recently used evicted first; 0 turns it
    /// off (default: [serve] prompt-cache-mb in rmlx.toml, else 1024).
    #[arg(long, value_name = "MIB")]
    pub prompt_cache_mb: Option<u64>,
    /// Compute dtype (auto: float32 on CPU, the model's dtype on a GPU).
    #[arg(long, value_parser = super::generate::policy_parser(), default_value = "auto")]
    pub dtype: DtypePolicy,
    /// Split every model over the ranks of this MLX hostfile (tensor parallelism): this
    /// process serves HTTP as rank 0 and starts the others (default: [distributed] hostfile
    /// in rmlx.toml). Requests then run one at a time, without the prompt cache.
    #[arg(long, value_name = "HOSTS_JSON")]
    pub hostfile: Option<PathBuf>,
}

fn dir_name(dir: &Path) -> String {
    dir.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| dir.display().to_string())
}

/// The models to serve.
fn sources(args: &[String], manifest: Option<&Manifest>) -> Result<Vec<ModelSource>> {
    let declared = |name: &str| {
        manifest.and_then(|m| {
            m.model(name).map(|d| ModelSource {
                name: d.name.clone(),
                dir: m.output_dir(&d.name),
                decl: Some(d.clone()),
            })
        })
    };
    let mut out = Vec::new();
    if args.is_empty() {
        let Some(m) = manifest.filter(|m| !m.models.is_empty()) else {
            return Err(Diagnostic::error(
                code::Serve::NoModels,
                "no models to serve",
            )
            .with_help(
                "pass model directories (`cargo rmlx serve path/to/model`) or declare models in \
                 rmlx.toml",
            ));
        };
        for d in &m.models {
            out.extend(declared(&d.name));
        }
    }
    for arg in args {
        if let Some(s) = declared(arg) {
            out.push(s);
            continue;
        }
        let dir = PathBuf::from(arg);
        if !dir.is_dir() {
            return Err(Diagnostic::error(
                code::Cli::UnknownModel,
                format!("no model directory `{arg}` and no model of that name in rmlx.toml"),
            )
            .with_help(
                "pass the name of a model declared in rmlx.toml, or the path of an MLX-format \
                 model directory (config.json, *.safetensors, tokenizer.json)",
            ));
        }
        let dir = std::fs::canonicalize(&dir)
            .map_err(|e| Diagnostic::io(code::Serve::Io, "cannot resolve", &dir, &e))?;
        out.push(ModelSource {
            name: dir_name(&dir),
            dir,
            decl: None,
        });
    }
    let mut seen = BTreeSet::new();
    for s in &out {
        if !seen.insert(s.name.clone()) {
            return Err(Diagnostic::error(
                code::Serve::DuplicateModel,
                format!("two models are named `{}`", s.name),
            )
            .with_help("requests select a model by name; serve directories with distinct names"));
        }
    }
    Ok(out)
}

/// The API key: `--api-key` or `RMLX_API_KEY`; an empty one is a usage error (it must not
/// silently turn authentication off).
fn api_key(given: Option<String>) -> Result<Option<String>> {
    // clap drops an empty environment value; the variable set but empty is still a mistake.
    let env_empty = std::env::var_os("RMLX_API_KEY").is_some_and(|v| v.is_empty());
    match given {
        Some(k) if k.trim().is_empty() => Err(empty_key(if env_empty {
            "RMLX_API_KEY"
        } else {
            "--api-key"
        })),
        None if env_empty => Err(empty_key("RMLX_API_KEY")),
        k => Ok(k),
    }
}

fn empty_key(source: &str) -> Diagnostic {
    Diagnostic::error(
        code::Cli::EmptyApiKey,
        format!("{source} is empty: an empty API key would turn authentication off"),
    )
    .with_help(
        "give a non-empty key, or leave both --api-key and RMLX_API_KEY unset to serve without one",
    )
}

/// MiB as bytes, saturating (a budget beyond memory simply never evicts).
fn mib_to_bytes(mib: u64) -> usize {
    usize::try_from(mib.saturating_mul(1 << 20)).unwrap_or(usize::MAX)
}

/// The ranks of a distributed server keep their caches in step by running one sequence at a
/// time without the prompt cache (`serve::distributed`).
fn one_sequence_at_a_time(load: &mut LoadSettings, quiet: bool) {
    if !quiet && (load.max_batch > 1 || load.prompt_cache_bytes > 0) {
        status(
            "Distributed",
            &format!(
                "one sequence at a time: max-batch {} → 1, prompt cache off",
                load.max_batch
            ),
        );
    }
    load.max_batch = 1;
    load.prompt_cache_bytes = 0;
}

/// Runs `serve` (with a hostfile: as rank 0, or as the rank this process was started as).
pub fn run(g: &GlobalArgs, a: ServeArgs) -> Result<u8> {
    let all_dirs = !a.models.is_empty() && a.models.iter().all(|m| Path::new(m).is_dir());
    let manifest = match Manifest::find(g.manifest_path.as_deref()) {
        Ok(m) => m,
        Err(e) if all_dirs && g.manifest_path.is_none() => {
            tracing::warn!("ignoring rmlx.toml ({}): {}", e.code, e.message);
            None
        }
        Err(e) => return Err(e),
    };
    let hostfile = a.hostfile.clone().or_else(|| {
        manifest
            .as_ref()
            .and_then(|m| m.distributed.as_ref())
            .map(|d| d.hostfile.clone())
    });
    let role = crate::dist::join(hostfile.as_deref(), distributed::rank_died)?;
    match role.group() {
        Some(group) if group.rank() > 0 => {
            let policy = a.dtype;
            return super::launch::run_in(role, || {
                distributed::follow(group, policy).map(|()| exit::OK)
            });
        }
        Some(group) => distributed::lead(group),
        None => {}
    }
    let served = serve_here(g, a, manifest);
    distributed::stop();
    super::launch::run_in(role, || served)
}

/// Rank 0's (or the only process') server.
fn serve_here(g: &GlobalArgs, a: ServeArgs, manifest: Option<Manifest>) -> Result<u8> {
    let api_key = api_key(a.api_key)?;
    let models = sources(&a.models, manifest.as_ref())?;
    let serve_decl = manifest
        .as_ref()
        .map(|m| m.serve.clone())
        .unwrap_or_default();
    let mut opts = ServeOptions {
        host: a.host.unwrap_or(serve_decl.host),
        port: a.port.unwrap_or(serve_decl.port),
        manifest: manifest.filter(|_| models.iter().any(|m| m.decl.is_some())),
        models,
        load: LoadSettings {
            policy: a.dtype,
            probe: !a.no_probe,
            queue_depth: a.queue_depth,
            max_batch: a
                .max_batch
                .map(usize::from)
                .or(serve_decl.max_batch)
                .unwrap_or(DEFAULT_MAX_BATCH),
            content_tokens: if a.content_special_tokens || serve_decl.content_special_tokens {
                ContentTokens::Control
            } else {
                ContentTokens::Text
            },
            tool_format: serve_decl.tool_format,
            prompt_cache_bytes: mib_to_bytes(
                a.prompt_cache_mb.unwrap_or(serve_decl.prompt_cache_mb),
            ),
        },
        http: HttpConfig {
            api_key,
            timeout: Duration::from_secs(a.timeout.max(1)),
            default_max_tokens: a.max_tokens.max(1),
            max_body_bytes: a.max_body_bytes,
            read_timeout: Duration::from_secs(a.read_timeout.max(1)),
            cors: a.cors,
        },
        watch: a.watch,
        debounce: Duration::from_millis(a.debounce_ms),
        shutdown_timeout: Duration::from_secs(a.shutdown_timeout),
    };
    if distributed::is_distributed() {
        one_sequence_at_a_time(&mut opts.load, g.quiet);
    }
    let quiet = g.quiet;
    let say = move |verb: &str, msg: &str| {
        if !quiet {
            status(verb, msg);
        }
    };
    let sink = Arc::new(move |e: ServeEvent<'_>| match e {
        ServeEvent::Listening(addr) => say("Listening", &format!("on http://{addr}")),
        ServeEvent::Building {
            model,
            what,
            reason,
        } => {
            tracing::info!("building {model}: {reason}");
            say("Building", &format!("{model} ({what})"));
        }
        ServeEvent::Note { diagnostic, .. } => {
            if !quiet || diagnostic.is_error() {
                report(diagnostic)
            }
        }
        ServeEvent::Loading {
            model,
            version,
            trigger,
        } => say("Loading", &format!("{model} v{version} ({trigger})")),
        ServeEvent::Ready {
            model,
            version,
            verdict,
        } => say(
            "Ready",
            &format!(
                "{model} v{version} (probe: {})",
                verdict.unwrap_or("skipped")
            ),
        ),
        ServeEvent::Failed {
            model,
            diagnostic,
            kept,
        } => {
            report(diagnostic);
            let what = match kept {
                Some(v) => format!("{model}: v{v} keeps serving"),
                None => format!("{model}: not serving"),
            };
            status("Failed", &what);
        }
        ServeEvent::Watching { paths } => {
            for p in paths {
                say("Watching", &p.display().to_string());
            }
        }
        ServeEvent::WatchError { diagnostic } => report(diagnostic),
        ServeEvent::ShuttingDown => say("Stopping", "finishing in-flight requests"),
    });
    let stopped = serve(opts, sink)?;
    if let Some(d) = distributed::failure() {
        // A rank died: exit with its error, without MLX's global destructors (a model thread
        // may still wait in a collective).
        super::launch::stop_now(&d);
    }
    if stopped == Stopped::Abandoned {
        // A model thread is still inside MLX: a normal exit would run MLX's global
        // destructors under it. End the process here instead, output flushed first.
        crate::engine::process::end_now(exit::OK)
    }
    Ok(exit::OK)
}

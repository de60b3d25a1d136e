//! Tests of chat-template rendering and lint:
//! - `lint_checks`: one test per lint check, on small templates written for the test, through
//!   the library's lint engine (the function the CLI and the language server share);
//! - `cli`: `cargo rmlx render` / `cargo rmlx lint` as a user runs them (byte-exact stdout,
//!   exit codes, miette reports with the underline on the offending token, JSON lines);
//! - `bad_inputs`: non-UTF-8 template, endless loops, recursion, a 10 MB template, a context
//!   that is not a JSON object — clear errors, no panic, bounded time;
//! - `conformance`: every distinct real template (fetched by `scripts/fetch-templates.sh`)
//!   rendered on fixed conversations by Python jinja2 configured like transformers
//!   (`scripts/render_jinja2.py`, venv from `scripts/jinja-venv.sh`) and by `cargo rmlx
//!   render`: byte-identical (or both raising) on ≥ 99% of cases, every mismatch listed;
//! - `reasoning`: the probe's seed through reasoning models' real templates (thinking
//!   switched off, byte-identical to jinja2), and lint on them;
//! - `corpus_lint`: lint over the whole real corpus, no crash, a printed summary (errored
//!   templates before/after issue 11), the remaining errors exactly the explained list.
//!
//! The corpora and the venv are cached under `target/`; the first run needs the Python
//! package index. Run with `--nocapture` to see the conformance and lint summaries.

mod bad_inputs;
mod cli;
mod conformance;
mod corpus_lint;
mod fuzz;
mod lint_checks;
mod reasoning;
mod resources;
mod support;
mod tool_calls;

//! Fuzzing the template renderer: random templates built from a grammar of Jinja
//! constructs — loops, namespaces, macros, the Python methods and filters that take sizes
//! (`zfill`, `ljust`, `center`, `expandtabs`, `replace`, `join`, `format`, `indent`, `batch`,
//! `slice`, `tojson(indent)`) with small and huge numbers, `~`/`+`/`*` amplifiers,
//! `strftime_now` formats, and broken syntax — rendered by the real binary in one
//! `render --batch` process under a 2 GiB address-space limit. The property: the process
//! neither panics nor dies, answers every case, within a time bound, and each answer is a
//! render no larger than the output limit or a `rmlx::template::*` error.
//!
//! Smoke run in `cargo test`: [`SMOKE_CASES`] cases. Longer runs:
//! `RMLX_TEMPLATE_FUZZ_CASES=20000 cargo test -p cargo-rmlx --test templates fuzz -- --nocapture`
//! (`RMLX_TEMPLATE_FUZZ_SEED=N` replays a run; the seed is printed).

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::bad_inputs::messages;
use crate::support::{bin, json_lines, run_cmd_with, scratch_dir, write, Confine};

/// Cases of the smoke run inside the normal test suite.
const SMOKE_CASES: usize = 300;
/// Seed of the smoke run.
const SMOKE_SEED: u64 = 1_796_549_949_046_506_432;
/// Cases per `render --batch` process.
const CASES_PER_BATCH: usize = 500;
/// Largest output one render may produce (the template output limit, 64 MiB).
const MAX_OUTPUT: usize = 64 << 20;

/// splitmix64: a small, seedable generator (no dependency, reproducible runs).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }
}

const NUMBERS: &[&str] = &[
    "0", "1", "3", "-1", "80", "4096", "10**6", "10**9", "10**12", "2**63", "-10**12",
];
const STRINGS: &[&str] = &[
    "''",
    "'a'",
    "'a\\tb\\nc'",
    "'{}'",
    "'{:>%s}'",
    "'%05d'",
    "'x' * 100000",
    "messages[0].content",
    "bos_token",
];
const METHODS: &[&str] = &[
    "zfill(N)",
    "ljust(N)",
    "rjust(N, '*')",
    "center(N)",
    "expandtabs(N)",
    "replace('', S)",
    "replace('a', S, N)",
    "join(S)",
    "join([S, S])",
    "format(N)",
    "split()",
    "strip()",
    "upper()",
    "title()",
    "startswith(S)",
    "count(S)",
    "splitlines()",
];
const FILTERS: &[&str] = &[
    "indent(N)",
    "indent(N, true, true)",
    "batch(N)",
    "batch(N, 'x')",
    "slice(N)",
    "tojson",
    "tojson(indent=N)",
    "join(S)",
    "replace(S, S)",
    "length",
    "list",
    "string",
    "trim",
    "format(N)",
    "pprint",
    "unique",
    "sort",
    "first",
    "last",
    "default(S)",
    "int",
    "round(N)",
    "upper",
    "escape",
    "wordcount",
];
const DATES: &[&str] = &[
    "'%Y-%m-%d'",
    "'%c %x %X %U %W %V %G %z %Z %f'",
    "'%-d %B %Y %A %j %%'",
    "'%1000000000Y'",
    "'%'",
];

/// A random expression of nesting at most `depth`.
fn expr(r: &mut Rng, depth: usize) -> String {
    let atom = |r: &mut Rng| -> String {
        match r.below(8) {
            0 | 1 => r.pick(NUMBERS).to_string(),
            2 | 3 => r.pick(STRINGS).replace("%s", r.pick(NUMBERS)),
            4 => "ns.a".into(),
            5 => "messages".into(),
            6 => format!("strftime_now({})", r.pick(DATES)),
            _ => "[1, 'b', none]".into(),
        }
    };
    if depth == 0 {
        return atom(r);
    }
    let sub = |r: &mut Rng| expr(r, depth - 1);
    let fill = |r: &mut Rng, template: &str| -> String {
        let mut out = String::new();
        for part in template.split_inclusive(['N', 'S']) {
            match part.chars().last() {
                Some('N') => {
                    out.push_str(&part[..part.len() - 1]);
                    out.push_str(r.pick(NUMBERS));
                }
                Some('S') => {
                    out.push_str(&part[..part.len() - 1]);
                    let s = sub(r);
                    out.push_str(&s);
                }
                _ => out.push_str(part),
            }
        }
        out
    };
    match r.below(9) {
        0 => atom(r),
        1 => {
            let m = r.pick(METHODS);
            format!("({}).{}", sub(r), fill(r, m))
        }
        2 | 3 => {
            let f = r.pick(FILTERS);
            format!("({})|{}", sub(r), fill(r, f))
        }
        4 => format!("({}) ~ ({})", sub(r), sub(r)),
        5 => format!("({}) + ({})", sub(r), sub(r)),
        6 => format!("({}) * {}", sub(r), r.pick(NUMBERS)),
        7 => format!("[{}, {}]", sub(r), sub(r)),
        _ => format!("{{'k': {}}}", sub(r)),
    }
}

/// A random statement list of nesting at most `depth`.
fn body(r: &mut Rng, depth: usize) -> String {
    let mut out = String::new();
    for _ in 0..1 + r.below(3) {
        let e = expr(r, 2);
        let _ = match r.below(if depth == 0 { 4 } else { 8 }) {
            0 | 1 => write!(out, "{{{{ {e} }}}}"),
            2 => write!(out, "{{% set ns.a = {e} %}}"),
            3 => writeln!(out, "text {}", r.below(100)),
            4 => write!(
                out,
                "{{% for i in range({}) %}}{}{{% endfor %}}",
                r.pick(&["3", "40", "1000", "100000"]),
                body(r, depth - 1)
            ),
            5 => write!(
                out,
                "{{% if {e} %}}{}{{% else %}}{}{{% endif %}}",
                body(r, depth - 1),
                body(r, depth - 1)
            ),
            6 => write!(
                out,
                "{{% macro m(x) %}}{}{{{{ x }}}}{{% endmacro %}}{{{{ m({e}) }}}}",
                body(r, depth - 1)
            ),
            _ => write!(out, "{{% set ns.a = ns.a ~ ns.a %}}{}", body(r, depth - 1)),
        };
    }
    out
}

/// A random template; about one in twenty is cut short (a syntax error).
fn template(r: &mut Rng) -> String {
    let mut t = format!("{{% set ns = namespace(a='x') %}}{}", body(r, 2));
    if r.below(20) == 0 {
        let mut cut = r.below(t.len().max(1));
        while !t.is_char_boundary(cut) {
            cut -= 1;
        }
        t.truncate(cut);
    }
    t
}

fn env_number(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    Some(
        v.parse()
            .unwrap_or_else(|e| panic!("{name}={v:?} is not a number: {e}")),
    )
}

#[test]
fn fuzz_template_renderer() {
    let cases = env_number("RMLX_TEMPLATE_FUZZ_CASES").map_or(SMOKE_CASES, |n| n as usize);
    // The smoke run uses a fixed seed (reproducible in CI); set one to explore.
    let seed = env_number("RMLX_TEMPLATE_FUZZ_SEED").unwrap_or(SMOKE_SEED);
    println!("template fuzz: {cases} cases, RMLX_TEMPLATE_FUZZ_SEED={seed}");
    let mut rng = Rng(seed);
    let dir = scratch_dir();
    let started = Instant::now();
    let (mut rendered, mut refused) = (0, 0);
    let mut done = 0;
    while done < cases {
        let n = CASES_PER_BATCH.min(cases - done);
        let (ok, err) = run_batch(dir.path(), &mut rng, done, n, seed);
        rendered += ok;
        refused += err;
        done += n;
    }
    println!(
        "template fuzz: {done} cases in {:.1?}: {rendered} rendered, {refused} refused with a \
         rmlx::template error, 0 crashes (seed {seed})",
        started.elapsed()
    );
}

/// Renders `n` random templates in one process; returns (rendered, refused).
fn run_batch(
    dir: &std::path::Path,
    rng: &mut Rng,
    first: usize,
    n: usize,
    seed: u64,
) -> (usize, usize) {
    let mut cases = String::new();
    let mut sources = Vec::new();
    for i in first..first + n {
        let src = template(rng);
        let t = write(dir, &format!("t{i}.jinja"), &src);
        let case = json!({"id": i, "template": t, "context": messages()});
        cases.push_str(&case.to_string());
        cases.push('\n');
        sources.push(src);
    }
    let file = write(dir, "cases.jsonl", cases);
    let args: [&std::ffi::OsStr; 7] = [
        "--color".as_ref(),
        "never".as_ref(),
        "render".as_ref(),
        "--batch".as_ref(),
        file.as_os_str(),
        "--now".as_ref(),
        "1721952000".as_ref(),
    ];
    let confine = Confine {
        address_space: Some(2 << 30),
        ..Confine::default()
    };
    // Each case is bounded by the render deadline (10 s); real ones take milliseconds.
    let limit = Duration::from_secs(60 + 2 * n as u64);
    let run = run_cmd_with(bin(), &args, None, limit, &confine);
    let kept = keep_cases(dir, seed, first, n);
    let replay = format!(
        "replay with RMLX_TEMPLATE_FUZZ_SEED={seed} (cases kept in {})",
        kept.display()
    );
    run.assert_sane(&replay);
    assert_eq!(run.code, Some(0), "{replay}\n{}", run.describe());
    let lines = json_lines(&run.stdout_text());
    assert_eq!(lines.len(), n, "{replay}: answers\n{}", run.describe());
    let (mut ok, mut err) = (0, 0);
    for (line, src) in lines.iter().zip(&sources) {
        if line["ok"] == true {
            let len = line["output"].as_str().map_or(usize::MAX, str::len);
            assert!(
                len <= MAX_OUTPUT,
                "{replay}: output of {len} bytes from\n{src}"
            );
            ok += 1;
        } else {
            let code = line["code"].as_str().unwrap_or_default();
            assert!(
                code.starts_with("rmlx::template::"),
                "{replay}: unexpected failure {line} from\n{src}"
            );
            err += 1;
        }
    }
    let _ = std::fs::remove_dir_all(&kept);
    (ok, err)
}

/// Copies the batch's case file and templates to `target/template-tests/fuzz-<seed>/`
/// (replaced by each batch; left behind when a batch fails).
fn keep_cases(dir: &std::path::Path, seed: u64, first: usize, n: usize) -> std::path::PathBuf {
    let keep = crate::support::repo_root()
        .join("target")
        .join("template-tests")
        .join(format!("fuzz-{seed}"));
    let _ = std::fs::remove_dir_all(&keep);
    let _ = std::fs::create_dir_all(&keep);
    for i in first..first + n {
        let name = format!("t{i}.jinja");
        let _ = std::fs::copy(dir.join(&name), keep.join(&name));
    }
    let _ = std::fs::copy(dir.join("cases.jsonl"), keep.join("cases.jsonl"));
    keep
}

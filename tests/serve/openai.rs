//! Compatibility with the official `openai` Python package (pinned in
//! `tests/serve/openai-requirements.txt`, installed into a venv by
//! `tests/serve/openai-venv.sh`): models.list, chat completions streaming and not, logprobs,
//! completions, and its typed errors for 404 and 400.

use std::process::Command;

use crate::support::*;

#[test]
fn official_openai_python_client() {
    let here = repo_root().join("tests").join("serve");
    let python = openai_python();

    let s = Server::model(&["--api-key", "sk-compat"]);
    let out = Command::new(python)
        .arg(here.join("openai_client.py"))
        .args([s.base.as_str(), MODEL_NAME, "sk-compat"])
        .output()
        .expect("run openai_client.py");
    assert!(
        out.status.success(),
        "the openai client failed\n--- stdout ---\n{}\n--- stderr ---\n{}\n--- server ---\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        s.log()
    );
    let line = String::from_utf8_lossy(&out.stdout);
    let seen: serde_json::Value = serde_json::from_str(line.trim()).expect("one JSON line");
    assert!(seen["answer"].as_str().unwrap().contains("Paris"), "{seen}");
}

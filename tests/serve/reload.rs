//! Hot reload under `--watch`, with a client sending requests the whole time: template edits
//! (saved the way editors do: a temporary file renamed over the original) swap in a new
//! version; an edit that breaks the template fails the probe and the old version keeps
//! serving; no request fails. Also for a model declared in rmlx.toml, which is rebuilt.

use std::fs;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::support::*;

const RELOAD_TIMEOUT: Duration = Duration::from_secs(240);

/// SmolLM2's template with `marker` appended to its default system prompt (the probe still
/// gets "Paris" from every marker used here).
fn template(marker: &str) -> String {
    format!(
        "{{% for message in messages %}}{{% if loop.first and messages[0]['role'] != 'system' %}}{{{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face. {marker}.<|im_end|>\n' }}}}{{% endif %}}{{{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}}}{{% endfor %}}{{% if add_generation_prompt %}}{{{{ '<|im_start|>assistant\n' }}}}{{% endif %}}"
    )
}

/// Saves like an editor: write a temporary file next to it, then rename it over the target.
fn editor_save(path: &Path, text: &str) {
    let tmp = path.with_file_name(format!(
        ".{}.swp",
        path.file_name().unwrap().to_string_lossy()
    ));
    fs::write(&tmp, text).unwrap();
    fs::rename(&tmp, path).unwrap();
}

#[derive(Debug, Clone)]
struct Sample {
    status: u16,
    marker: String,
    version: Option<u64>,
    body: String,
}

/// A client loop (bounded in time and count) recording what each response saw.
struct Load {
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<Vec<Sample>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(base: String, model: &'static str, markers: &'static [&'static str]) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let (st, sa) = (stop.clone(), samples.clone());
        let thread = std::thread::spawn(move || {
            let started = Instant::now();
            for _ in 0..5000 {
                if st.load(Ordering::Relaxed) || started.elapsed() > Duration::from_secs(900) {
                    break;
                }
                let body = json!({
                    "model": model,
                    "messages": [{"role": "user", "content": "Say hi."}],
                    "max_tokens": 1,
                    "return_prompt": true,
                });
                let sample = match agent()
                    .post(&format!("{base}/v1/chat/completions"))
                    .header("content-type", "application/json")
                    .send(body.to_string())
                {
                    Ok(mut r) => {
                        let status = r.status().as_u16();
                        let version = r
                            .headers()
                            .get("x-rmlx-model-version")
                            .and_then(|v| v.to_str().ok()?.parse().ok());
                        let text = r.body_mut().read_to_string().unwrap_or_default();
                        let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
                        let prompt = v["prompt"]["text"].as_str().unwrap_or("");
                        let marker = markers
                            .iter()
                            .find(|m| prompt.contains(*m))
                            .map_or("?", |m| m)
                            .to_string();
                        Sample {
                            status,
                            marker,
                            version,
                            body: text,
                        }
                    }
                    Err(e) => Sample {
                        status: 0,
                        marker: String::new(),
                        version: None,
                        body: e.to_string(),
                    },
                };
                sa.lock().unwrap().push(sample);
            }
        });
        Load {
            stop,
            samples,
            thread: Some(thread),
        }
    }

    fn count(&self) -> usize {
        self.samples.lock().unwrap().len()
    }

    fn last_marker(&self) -> Option<String> {
        self.samples
            .lock()
            .unwrap()
            .last()
            .map(|s| s.marker.clone())
    }

    fn finish(mut self) -> Vec<Sample> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        self.samples.lock().unwrap().clone()
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Waits until the load sees `marker` (with at least one more request after `after`).
fn wait_for_marker(s: &Server, load: &Load, marker: &str) {
    let start = Instant::now();
    loop {
        if load.last_marker().as_deref() == Some(marker) {
            return;
        }
        assert!(
            start.elapsed() < RELOAD_TIMEOUT,
            "`{marker}` never served; last: {:?}\n{}",
            load.last_marker(),
            s.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn check_no_failures(samples: &[Sample], order: &[&str]) {
    let failed: Vec<&Sample> = samples.iter().filter(|s| s.status != 200).collect();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed: {failed:#?}",
        failed.len(),
        samples.len()
    );
    // Responses switch forward only: once a newer template serves, no older one does.
    let mut at = 0;
    for s in samples {
        let i = order
            .iter()
            .position(|m| *m == s.marker)
            .unwrap_or_else(|| panic!("unexpected prompt: {}", s.body));
        assert!(i >= at, "went back from `{}` to `{}`", order[at], s.marker);
        at = i;
    }
    assert_eq!(at, order.len() - 1, "the last template never served");
    let versions: Vec<u64> = samples.iter().filter_map(|s| s.version).collect();
    assert!(versions.windows(2).all(|w| w[0] <= w[1]), "{versions:?}");
    let mut seen = versions.clone();
    seen.dedup();
    eprintln!(
        "{} requests during the reloads, all 200; versions served in order: {seen:?}",
        samples.len()
    );
}

#[test]
fn hot_reload_of_a_model_directory_under_load() {
    let scratch = scratch_dir();
    let dir = copy_model(scratch.path());
    let tpl = dir.join("chat_template.jinja");
    fs::write(&tpl, template("Version ZERO")).unwrap();
    let s = start_watching(&dir, scratch.path());
    assert!(s.log().contains("Watching"), "{}", s.log());
    const MARKERS: &[&str] = &["Version ZERO", "Version ONE", "Version TWO"];
    let load = Load::start(s.base.clone(), MODEL_NAME, MARKERS);
    wait_until("the first responses", Duration::from_secs(120), || {
        load.count() >= 2
    });

    // 1: a valid edit, saved the editor way (several file events): one reload.
    editor_save(&tpl, &template("Version ONE"));
    wait_for_marker(&s, &load, "Version ONE");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        s.metric("rmlx_reloads_total", &["result=\"ok\""]),
        2.0,
        "startup + exactly one reload\n{}",
        s.log()
    );

    // 2: a broken edit: the probe fails, the old version keeps serving.
    editor_save(&tpl, "{{ raise_exception('broken on purpose') }}");
    wait_until("the failed reload", RELOAD_TIMEOUT, || {
        s.metric("rmlx_reloads_total", &["result=\"failed\""]) >= 1.0
    });
    let served_after_failure = load.count();
    wait_until(
        "requests after the failure",
        Duration::from_secs(120),
        || load.count() >= served_after_failure + 3,
    );
    assert_eq!(load.last_marker().as_deref(), Some("Version ONE"));
    let m = s.get("/v1/models").json["data"][0].clone();
    assert_eq!(m["state"], "ready", "{m}");
    assert!(
        m["last_error"]["message"]
            .as_str()
            .unwrap()
            .contains("broken on purpose"),
        "{m}"
    );
    assert!(s.log().contains("keeps serving"), "{}", s.log());

    // 3: fixed again: the new version serves.
    editor_save(&tpl, &template("Version TWO"));
    wait_for_marker(&s, &load, "Version TWO");
    let samples = load.finish();
    check_no_failures(&samples, MARKERS);
    assert_eq!(
        s.metric("rmlx_reloads_total", &["result=\"ok\""]),
        3.0,
        "{}",
        s.log()
    );
    assert!(samples.len() >= 10, "only {} requests", samples.len());
    let m = s.get("/v1/models").json["data"][0].clone();
    assert!(m["last_error"].is_null(), "{m}");
}

#[test]
fn declared_model_is_rebuilt_and_reloaded_under_watch() {
    let scratch = scratch_dir();
    let src = copy_model(scratch.path());
    let tpl = scratch.path().join("chat.jinja");
    fs::write(&tpl, template("Version THREE")).unwrap();
    let manifest = scratch.path().join("rmlx.toml");
    let toml = format!(
        "[models.smol]\nsource = \"{}\"\nchat-template = \"chat.jinja\"\n",
        src.file_name().unwrap().to_string_lossy()
    );
    fs::write(&manifest, &toml).unwrap();
    let args = vec![
        "--manifest-path".into(),
        manifest.display().to_string(),
        "--watch".into(),
        "--debounce-ms".into(),
        "300".into(),
    ];
    let s = Server::start(&args, scratch.path());
    s.wait_ready();
    const MARKERS: &[&str] = &["Version THREE", "Version FOUR"];
    let load = Load::start(s.base.clone(), "smol", MARKERS);
    wait_until("the first responses", Duration::from_secs(120), || {
        load.count() >= 2
    });
    assert_eq!(load.last_marker().as_deref(), Some("Version THREE"));

    // A broken rmlx.toml is reported; the model keeps serving.
    editor_save(&manifest, "[models.smol\n");
    wait_until("the manifest error in the log", RELOAD_TIMEOUT, || {
        s.log().contains("rmlx::manifest::")
    });
    editor_save(&manifest, &toml);

    // The template override changes: rebuild, reload.
    editor_save(&tpl, &template("Version FOUR"));
    wait_for_marker(&s, &load, "Version FOUR");
    let samples = load.finish();
    check_no_failures(&samples, MARKERS);
    assert!(s.log().contains("Building"), "{}", s.log());
    let built =
        fs::read_to_string(scratch.path().join("target/rmlx/smol/chat_template.jinja")).unwrap();
    assert!(built.contains("Version FOUR"));
}

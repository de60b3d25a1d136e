//! Prometheus metrics of the server (`GET /metrics`, text exposition format 0.0.4).
//!
//! Counters and histograms are keyed by their label values and kept in one mutex: updates
//! happen a few times per request, never per token.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;

use crate::engine::PrefixCache;

/// Buckets of the time-to-first-token histogram (seconds).
const TTFT_BUCKETS: &[f64] = &[0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];
/// Buckets of the decode-throughput histogram (tokens per second).
const TPS_BUCKETS: &[f64] = &[1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0];
/// Buckets of the queue-time histogram (seconds from arrival to joining the batch).
const QUEUE_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];
/// Buckets of the batch-size histogram (sequences per decode pass).
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0, 24.0, 32.0, 64.0];
/// Buckets of the request-duration histogram (seconds).
const DURATION_BUCKETS: &[f64] = &[
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

#[derive(Debug, Clone)]
struct Histogram {
    bounds: &'static [f64],
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            counts: vec![0; bounds.len()],
            sum: 0.0,
            count: 0,
        }
    }

    fn observe(&mut self, v: f64) {
        for (b, c) in self.bounds.iter().zip(&mut self.counts) {
            if v <= *b {
                *c += 1;
            }
        }
        self.sum += v;
        self.count += 1;
    }
}

type Labels = Vec<(&'static str, String)>;

#[derive(Debug, Default)]
struct Inner {
    requests: BTreeMap<Labels, u64>,
    prompt_tokens: BTreeMap<Labels, u64>,
    generated_tokens: BTreeMap<Labels, u64>,
    cancelled: BTreeMap<Labels, u64>,
    rejected: BTreeMap<Labels, u64>,
    probes: BTreeMap<Labels, u64>,
    reloads: BTreeMap<Labels, u64>,
    queue_depth: BTreeMap<Labels, i64>,
    running: BTreeMap<Labels, i64>,
    ready: BTreeMap<Labels, i64>,
    ttft: BTreeMap<Labels, Histogram>,
    decode_tps: BTreeMap<Labels, Histogram>,
    duration: BTreeMap<Labels, Histogram>,
    queue_time: BTreeMap<Labels, Histogram>,
    batch_size: BTreeMap<Labels, Histogram>,
    prompt_cache: PromptCacheMetrics,
}

/// The prompt cache's series (`engine::prefix_cache`).
#[derive(Debug, Default)]
struct PromptCacheMetrics {
    hits: BTreeMap<Labels, u64>,
    cached_tokens: BTreeMap<Labels, u64>,
    evictions: BTreeMap<Labels, u64>,
    bytes: BTreeMap<Labels, i64>,
    entries: BTreeMap<Labels, i64>,
}

/// The server's metrics.
#[derive(Debug, Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
}

fn model(m: &str) -> Labels {
    vec![("model", m.to_string())]
}

fn bump(map: &mut BTreeMap<Labels, u64>, labels: Labels, by: u64) {
    *map.entry(labels).or_default() += by;
}

impl Metrics {
    fn with<R>(&self, f: impl FnOnce(&mut Inner) -> R) -> R {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut g)
    }

    /// A finished HTTP request to an API endpoint.
    pub fn request(&self, model_name: &str, endpoint: &str, status: u16, seconds: f64) {
        self.with(|m| {
            let labels = vec![
                ("model", model_name.to_string()),
                ("endpoint", endpoint.to_string()),
                ("status", status.to_string()),
            ];
            bump(&mut m.requests, labels, 1);
            let key = vec![
                ("model", model_name.to_string()),
                ("endpoint", endpoint.to_string()),
            ];
            m.duration
                .entry(key)
                .or_insert_with(|| Histogram::new(DURATION_BUCKETS))
                .observe(seconds);
        });
    }

    /// A generation finished (or was cut short) after producing tokens.
    pub fn generation(
        &self,
        model_name: &str,
        prompt_tokens: usize,
        generated: usize,
        ttft: Option<f64>,
        decode_tps: Option<f64>,
    ) {
        self.with(|m| {
            bump(
                &mut m.prompt_tokens,
                model(model_name),
                prompt_tokens as u64,
            );
            bump(&mut m.generated_tokens, model(model_name), generated as u64);
            if let Some(t) = ttft {
                m.ttft
                    .entry(model(model_name))
                    .or_insert_with(|| Histogram::new(TTFT_BUCKETS))
                    .observe(t);
            }
            if let Some(t) = decode_tps {
                m.decode_tps
                    .entry(model(model_name))
                    .or_insert_with(|| Histogram::new(TPS_BUCKETS))
                    .observe(t);
            }
        });
    }

    /// A generation stopped because its client went away or its time ran out.
    pub fn cancelled(&self, model_name: &str, reason: &str) {
        self.with(|m| {
            let labels = vec![
                ("model", model_name.to_string()),
                ("reason", reason.to_string()),
            ];
            bump(&mut m.cancelled, labels, 1);
        });
    }

    /// A request refused before it reached a model (`queue-full`, `not-ready`).
    pub fn rejected(&self, model_name: &str, reason: &str) {
        self.with(|m| {
            let labels = vec![
                ("model", model_name.to_string()),
                ("reason", reason.to_string()),
            ];
            bump(&mut m.rejected, labels, 1);
        });
    }

    /// A probe verdict.
    pub fn probe(&self, model_name: &str, verdict: &str) {
        self.with(|m| {
            let labels = vec![
                ("model", model_name.to_string()),
                ("verdict", verdict.to_string()),
            ];
            bump(&mut m.probes, labels, 1);
        });
    }

    /// A load or reload attempt (`ok` or `failed`).
    pub fn reload(&self, model_name: &str, result: &str) {
        self.with(|m| {
            let labels = vec![
                ("model", model_name.to_string()),
                ("result", result.to_string()),
            ];
            bump(&mut m.reloads, labels, 1);
        });
    }

    /// Requests waiting in a model's queue: +1 on enqueue, -1 on dequeue.
    pub fn queue_delta(&self, model_name: &str, delta: i64) {
        self.with(|m| *m.queue_depth.entry(model(model_name)).or_default() += delta);
    }

    /// A request left the queue and joined its model's batch after `seconds` of waiting.
    pub fn queue_time(&self, model_name: &str, seconds: f64) {
        self.with(|m| {
            m.queue_time
                .entry(model(model_name))
                .or_insert_with(|| Histogram::new(QUEUE_BUCKETS))
                .observe(seconds);
        });
    }

    /// One decode pass of a model ran `size` sequences together.
    pub fn batch_size(&self, model_name: &str, size: usize) {
        self.with(|m| {
            m.batch_size
                .entry(model(model_name))
                .or_insert_with(|| Histogram::new(BATCH_BUCKETS))
                .observe(size as f64);
        });
    }

    /// Generations running on a model: +1 at start, -1 at the end.
    pub fn running_delta(&self, model_name: &str, delta: i64) {
        self.with(|m| *m.running.entry(model(model_name)).or_default() += delta);
    }

    /// Whether a model serves (1) or not (0).
    pub fn set_ready(&self, model_name: &str, ready: bool) {
        self.with(|m| {
            m.ready.insert(model(model_name), i64::from(ready));
        });
    }

    /// Requests waiting for `model_name` now.
    pub fn queue_depth(&self, model_name: &str) -> i64 {
        self.with(|m| m.queue_depth.get(&model(model_name)).copied().unwrap_or(0))
    }

    /// Takes a model's prompt-cache counts since the last call and its current size.
    pub fn prompt_cache(&self, model_name: &str, cache: &mut PrefixCache) {
        let counts = cache.take_counts();
        self.with(|m| {
            let p = &mut m.prompt_cache;
            bump(&mut p.hits, model(model_name), counts.hits);
            bump(
                &mut p.cached_tokens,
                model(model_name),
                counts.cached_tokens,
            );
            bump(&mut p.evictions, model(model_name), counts.evictions);
            p.bytes.insert(model(model_name), cache.bytes() as i64);
            p.entries.insert(model(model_name), cache.len() as i64);
        });
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        self.with(|m| {
            let mut out = String::new();
            counter(&mut out, "rmlx_requests_total", "HTTP requests to the API endpoints, by final status.", &m.requests);
            counter(&mut out, "rmlx_prompt_tokens_total", "Prompt tokens processed.", &m.prompt_tokens);
            counter(&mut out, "rmlx_generated_tokens_total", "Tokens generated.", &m.generated_tokens);
            counter(&mut out, "rmlx_requests_cancelled_total", "Generations stopped early because the client disconnected or the request timed out.", &m.cancelled);
            counter(&mut out, "rmlx_requests_rejected_total", "Requests refused before reaching a model (queue full, model not ready).", &m.rejected);
            counter(&mut out, "rmlx_probe_verdicts_total", "Probe verdicts of loaded model versions.", &m.probes);
            counter(&mut out, "rmlx_reloads_total", "Model loads and reloads (build, load, probe, swap), by result.", &m.reloads);
            gauge(&mut out, "rmlx_queue_depth", "Requests waiting for a model.", &m.queue_depth);
            gauge(&mut out, "rmlx_running_requests", "Generations running on a model.", &m.running);
            gauge(&mut out, "rmlx_model_ready", "1 when the model serves requests.", &m.ready);
            histogram(&mut out, "rmlx_time_to_first_token_seconds", "Time from request arrival to the first generated token.", &m.ttft);
            histogram(&mut out, "rmlx_decode_tokens_per_second", "Decode throughput of one generation (tokens after the first).", &m.decode_tps);
            histogram(&mut out, "rmlx_request_duration_seconds", "Duration of API requests.", &m.duration);
            let p = &m.prompt_cache;
            counter(&mut out, "rmlx_prompt_cache_hits_total", "Generations that resumed from a cached prompt prefix.", &p.hits);
            counter(&mut out, "rmlx_prompt_cache_cached_tokens_total", "Prompt tokens taken from the prompt cache instead of being computed.", &p.cached_tokens);
            counter(&mut out, "rmlx_prompt_cache_evictions_total", "Prompt-cache entries evicted to stay within --prompt-cache-mb.", &p.evictions);
            gauge(&mut out, "rmlx_prompt_cache_bytes", "Bytes held by the prompt cache of the model version in service.", &p.bytes);
            gauge(&mut out, "rmlx_prompt_cache_entries", "Entries held by the prompt cache of the model version in service.", &p.entries);
            histogram(&mut out, "rmlx_queue_time_seconds", "Time from request arrival until it joins the model's running batch.", &m.queue_time);
            histogram(&mut out, "rmlx_batch_size", "Sequences decoded together per model step (continuous batching).", &m.batch_size);
            out
        })
    }
}

fn label_str(labels: &Labels, extra: Option<(&str, String)>) -> String {
    let mut parts: Vec<String> = labels
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
        .collect();
    if let Some((k, v)) = extra {
        parts.push(format!("{k}=\"{v}\""));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!("{{{}}}", parts.join(","))
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn header(out: &mut String, name: &str, help: &str, kind: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

fn counter(out: &mut String, name: &str, help: &str, map: &BTreeMap<Labels, u64>) {
    header(out, name, help, "counter");
    for (l, v) in map {
        let _ = writeln!(out, "{name}{} {v}", label_str(l, None));
    }
}

fn gauge(out: &mut String, name: &str, help: &str, map: &BTreeMap<Labels, i64>) {
    header(out, name, help, "gauge");
    for (l, v) in map {
        let _ = writeln!(out, "{name}{} {v}", label_str(l, None));
    }
}

fn histogram(out: &mut String, name: &str, help: &str, map: &BTreeMap<Labels, Histogram>) {
    header(out, name, help, "histogram");
    for (l, h) in map {
        for (b, c) in h.bounds.iter().zip(&h.counts) {
            let _ = writeln!(
                out,
                "{name}_bucket{} {c}",
                label_str(l, Some(("le", b.to_string())))
            );
        }
        let _ = writeln!(
            out,
            "{name}_bucket{} {}",
            label_str(l, Some(("le", "+Inf".into()))),
            h.count
        );
        let _ = writeln!(out, "{name}_sum{} {}", label_str(l, None), h.sum);
        let _ = writeln!(out, "{name}_count{} {}", label_str(l, None), h.count);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_cumulative_histograms() {
        let m = Metrics::default();
        m.request("smol", "chat", 200, 0.3);
        m.generation("smol", 10, 5, Some(0.02), Some(40.0));
        m.queue_delta("smol", 1);
        m.queue_time("smol", 0.003);
        m.batch_size("smol", 3);
        let text = m.render();
        assert!(text.contains("rmlx_queue_time_seconds_bucket{model=\"smol\",le=\"0.001\"} 0"));
        assert!(text.contains("rmlx_queue_time_seconds_bucket{model=\"smol\",le=\"0.005\"} 1"));
        assert!(text.contains("rmlx_batch_size_bucket{model=\"smol\",le=\"2\"} 0"));
        assert!(text.contains("rmlx_batch_size_bucket{model=\"smol\",le=\"3\"} 1"));
        assert!(text.contains("rmlx_batch_size_sum{model=\"smol\"} 3"));
        assert!(
            text.contains("rmlx_requests_total{model=\"smol\",endpoint=\"chat\",status=\"200\"} 1")
        );
        assert!(text.contains("rmlx_prompt_tokens_total{model=\"smol\"} 10"));
        assert!(text.contains("rmlx_queue_depth{model=\"smol\"} 1"));
        assert!(
            text.contains("rmlx_time_to_first_token_seconds_bucket{model=\"smol\",le=\"0.025\"} 1")
        );
        assert!(
            text.contains("rmlx_time_to_first_token_seconds_bucket{model=\"smol\",le=\"0.01\"} 0")
        );
        assert!(text
            .contains("rmlx_request_duration_seconds_count{model=\"smol\",endpoint=\"chat\"} 1"));
    }
}

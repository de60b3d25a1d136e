//! Progress reporting: whether progress bars may be drawn at all (the front-end decides once:
//! `-q`, JSON output), the one bar style of the library, and the byte-progress sink of model
//! loading.
//!
//! Loading reports bytes, not tensors: whoever reads weight bytes from disk calls
//! [`bytes_read`] after each read (on the loading thread), or takes [`current_sink`] there
//! and calls [`ByteSink::add`] from its worker threads. A front-end that wants a bar wraps the
//! load in [`with_sink`]; without one, reporting costs a thread-local lookup.

use std::cell::RefCell;
use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use indicatif::{ProgressBar, ProgressStyle};

static ALLOWED: AtomicBool = AtomicBool::new(true);

/// Allows or forbids progress bars for the rest of the process (`-q` and JSON output forbid
/// them). Allowed by default.
pub fn set_allowed(allowed: bool) {
    ALLOWED.store(allowed, Ordering::Relaxed);
}

/// Whether a bar would be drawn: allowed, and stderr is a terminal.
pub fn visible() -> bool {
    ALLOWED.load(Ordering::Relaxed) && std::io::stderr().is_terminal()
}

/// A bar of `len` steps named `message`, counting `unit` (`tensors`, …); hidden unless
/// [`visible`].
pub fn bar(len: u64, message: String, unit: &str) -> ProgressBar {
    if !visible() {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(len);
    let template = format!("{{msg}} [{{bar:30}}] {{pos}}/{{len}} {unit} ({{elapsed}})");
    if let Ok(style) = ProgressStyle::with_template(&template) {
        pb.set_style(style.progress_chars("=> "));
    }
    pb.set_message(message);
    pb
}

/// Receives the number of weight bytes read while a model loads. Called from any thread.
pub trait ByteSink: Send + Sync {
    /// `bytes` more were read.
    fn add(&self, bytes: u64);
}

thread_local! {
    static SINK: RefCell<Option<Arc<dyn ByteSink>>> = const { RefCell::new(None) };
}

/// Runs `f` with `sink` receiving this thread's [`bytes_read`] reports; the previous sink
/// (if any) is restored afterwards, also when `f` panics.
pub fn with_sink<R>(sink: Arc<dyn ByteSink>, f: impl FnOnce() -> R) -> R {
    struct Restore(Option<Arc<dyn ByteSink>>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let previous = self.0.take();
            SINK.with(|s| *s.borrow_mut() = previous);
        }
    }
    let previous = SINK.with(|s| s.borrow_mut().replace(sink));
    let _restore = Restore(previous);
    f()
}

/// The sink of this thread, for handing to worker threads that read bytes.
pub fn current_sink() -> Option<Arc<dyn ByteSink>> {
    SINK.with(|s| s.borrow().clone())
}

/// Reports `bytes` read on this thread to its sink, if there is one.
pub fn bytes_read(bytes: u64) {
    SINK.with(|s| {
        if let Some(sink) = s.borrow().as_ref() {
            sink.add(bytes);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    #[derive(Default)]
    struct Count(AtomicU64);
    impl ByteSink for Count {
        fn add(&self, bytes: u64) {
            self.0.fetch_add(bytes, Ordering::Relaxed);
        }
    }

    #[test]
    fn reports_reach_the_innermost_sink_of_this_thread_only() {
        let outer = Arc::new(Count::default());
        let inner = Arc::new(Count::default());
        bytes_read(1); // no sink: nothing happens
        with_sink(outer.clone(), || {
            bytes_read(10);
            with_sink(inner.clone(), || {
                bytes_read(100);
                let handed = current_sink().expect("a sink is installed");
                std::thread::scope(|s| {
                    s.spawn(|| bytes_read(1000)); // another thread: no sink there
                    s.spawn(|| handed.add(7));
                });
            });
            bytes_read(20);
        });
        bytes_read(1);
        assert_eq!(outer.0.load(Ordering::Relaxed), 30);
        assert_eq!(inner.0.load(Ordering::Relaxed), 107);
        assert!(current_sink().is_none());
    }

    #[test]
    fn forbidden_bars_are_hidden() {
        set_allowed(false);
        assert!(!visible());
        assert!(bar(10, "x".into(), "tensors").is_hidden());
        set_allowed(true);
    }
}

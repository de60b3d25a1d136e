//! `--watch`: file events → debounce → rebuild/reload the affected models.
//!
//! Watched: each served model directory (models given as directories); for models declared
//! in rmlx.toml, rmlx.toml itself, the declared `source` (file or directory) and
//! `chat-template` override. Directories are watched rather than files, so editors that save
//! by writing a temporary file and renaming it over the original are seen. Events are
//! collected until the files have been quiet for the debounce interval, so one save (often
//! several events) causes one reload; a reload whose model files turn out unchanged (a stat
//! fingerprint) swaps nothing.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{channel, RecvTimeoutError};
use std::sync::Arc;
use std::time::Duration;

use notify::event::{AccessKind, AccessMode};
use notify::{EventKind, RecursiveMode, Watcher};

use super::registry::{Entry, EventSink, Registry, Trigger};
use super::ServeEvent;
use crate::diagnostic::{code, Diagnostic, Result};
use crate::manifest::Manifest;

/// Starts the watcher thread.
pub fn spawn(registry: Arc<Registry>, events: EventSink, debounce: Duration) -> Result<()> {
    let (tx, rx) = channel::<notify::Event>();
    let mut watcher =
        notify::recommended_watcher(move |res: notify::Result<notify::Event>| match res {
            Ok(ev) => {
                let _ = tx.send(ev);
            }
            Err(e) => tracing::warn!("file watcher: {e}"),
        })
        .map_err(|e| {
            Diagnostic::error(
                code::Serve::Watch,
                format!("cannot start the file watcher: {e}"),
            )
        })?;
    let mut watched = BTreeSet::new();
    register(&mut watcher, &mut watched, &registry, &events);
    std::thread::Builder::new()
        .name("rmlx-watch".into())
        .spawn(move || loop {
            let Ok(first) = rx.recv() else { return };
            let mut paths = BTreeSet::new();
            collect(&first, &mut paths);
            loop {
                match rx.recv_timeout(debounce) {
                    Ok(ev) => collect(&ev, &mut paths),
                    Err(RecvTimeoutError::Timeout) => break,
                    Err(RecvTimeoutError::Disconnected) => return,
                }
            }
            if paths.is_empty() {
                continue;
            }
            tracing::debug!("watch: changed {paths:?}");
            let affected = affected(&registry, &paths, &events);
            register(&mut watcher, &mut watched, &registry, &events);
            for entry in affected {
                registry.reload(&entry, Trigger::Watch);
            }
        })
        .map_err(|e| {
            Diagnostic::error(
                code::Serve::Watch,
                format!("cannot start the watcher thread: {e}"),
            )
        })?;
    Ok(())
}

/// Paths of an event that may change a model (reads are not changes).
fn collect(ev: &notify::Event, out: &mut BTreeSet<PathBuf>) {
    let relevant = match ev.kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    };
    if relevant {
        out.extend(ev.paths.iter().cloned());
    }
}

/// The directories to watch.
fn targets(registry: &Registry) -> BTreeSet<PathBuf> {
    let mut out = BTreeSet::new();
    let parent = |p: &Path| p.parent().map(Path::to_path_buf);
    if let Some(m) = registry
        .manifest
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .as_ref()
    {
        out.extend(parent(&m.path));
    }
    for e in &registry.entries {
        let src = e.source();
        match &src.decl {
            None => {
                out.insert(src.dir.clone());
            }
            Some(decl) => {
                if decl.source.is_dir() {
                    out.insert(decl.source.clone());
                } else {
                    out.extend(parent(&decl.source));
                }
                if let Some((t, _)) = &decl.chat_template {
                    out.extend(parent(t));
                }
            }
        }
    }
    out
}

fn register(
    watcher: &mut notify::RecommendedWatcher,
    watched: &mut BTreeSet<PathBuf>,
    registry: &Registry,
    events: &EventSink,
) {
    let want = targets(registry);
    let mut added = Vec::new();
    for dir in want.difference(watched) {
        match watcher.watch(dir, RecursiveMode::NonRecursive) {
            Ok(()) => added.push(dir.clone()),
            Err(e) => tracing::warn!("cannot watch {}: {e}", dir.display()),
        }
    }
    if !added.is_empty() {
        (events)(ServeEvent::Watching { paths: &added });
        watched.extend(added);
    }
}

/// Which models the changed `paths` concern; re-reads rmlx.toml when it changed.
fn affected(registry: &Registry, paths: &BTreeSet<PathBuf>, events: &EventSink) -> Vec<Arc<Entry>> {
    let mut out: Vec<Arc<Entry>> = Vec::new();
    let old = registry
        .manifest
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    if let Some(old) = old.filter(|m| paths.contains(&m.path)) {
        match Manifest::load(&old.path, old.target_dir.clone()) {
            Ok(new) => {
                for e in &registry.entries {
                    let Some(prev) = e.source().decl else {
                        continue;
                    };
                    match new.model(&e.name) {
                        Some(decl) if *decl != prev => {
                            e.set_decl(decl.clone());
                            out.push(e.clone());
                        }
                        Some(_) => {}
                        None => tracing::warn!(
                            "model `{}` is no longer declared in {}; it keeps serving until the \
                             server restarts",
                            e.name,
                            new.path.display()
                        ),
                    }
                }
                for decl in &new.models {
                    if registry.get(&decl.name).is_none() {
                        tracing::warn!(
                            "model `{}` was added to {}; restart the server to serve it",
                            decl.name,
                            new.path.display()
                        );
                    }
                }
                *registry.manifest.lock().unwrap_or_else(|e| e.into_inner()) = Some(new);
            }
            Err(d) => (events)(ServeEvent::WatchError { diagnostic: &d }),
        }
    }
    for e in &registry.entries {
        if out.iter().any(|o| Arc::ptr_eq(o, e)) {
            continue;
        }
        let src = e.source();
        let hit = paths.iter().any(|p| match &src.decl {
            None => p.parent() == Some(src.dir.as_path()),
            Some(decl) => {
                p == &decl.source
                    || (decl.source.is_dir() && p.starts_with(&decl.source))
                    || decl.chat_template.as_ref().is_some_and(|(t, _)| p == t)
            }
        });
        if hit {
            out.push(e.clone());
        }
    }
    out
}

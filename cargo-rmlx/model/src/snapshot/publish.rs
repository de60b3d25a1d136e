//! Publishing a model directory safely — the one mechanism `cargo rmlx build` and
//! `cargo rmlx convert` share: a lock file per output (`.<name>.lock` next to it) serialises
//! writers, the output is written into a private sibling (`.<name>.tmp-<pid>`) and swapped into
//! place atomically (`renameat2(RENAME_EXCHANGE)` on Linux, rename-aside elsewhere), so readers
//! see the old or the new directory, never a mix. What a killed writer left behind
//! (`.<name>.tmp-*`, `.<name>.old-*`, `.<name>.gguf-*`, and the `.<name>.rmlx-import-*` /
//! `.<name>.rmlx-old-*` directories of older versions) is removed by the next writer once it
//! holds the lock, so such directories never accumulate.

use std::fs::File;
use std::path::{Path, PathBuf};

use crate::diagnostic::{code, Diagnostic, Result};

fn io(what: &str, path: &Path, e: &std::io::Error) -> Diagnostic {
    Diagnostic::io(code::Build::Io, what, path, e)
}

/// The exclusive right to write one output `<root>/<name>`; released when dropped (or when the
/// process dies).
#[derive(Debug)]
pub struct OutputLock {
    root: PathBuf,
    name: String,
    _file: File,
}

impl OutputLock {
    /// Takes the lock of `<root>/<name>` (creating `root`), calling `on_wait` once if another
    /// writer holds it and then blocking until it is free. Removes the leftovers of
    /// interrupted writers of this output.
    pub fn acquire(root: &Path, name: &str, on_wait: &mut dyn FnMut()) -> Result<Self> {
        std::fs::create_dir_all(root).map_err(|e| io("cannot create", root, &e))?;
        let path = root.join(format!(".{name}.lock"));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| io("cannot open", &path, &e))?;
        if let Err(e) = flock(&file, libc::LOCK_EX | libc::LOCK_NB) {
            if e.kind() != std::io::ErrorKind::WouldBlock {
                return Err(io("cannot lock", &path, &e));
            }
            on_wait();
            flock(&file, libc::LOCK_EX).map_err(|e| io("cannot lock", &path, &e))?;
        }
        let lock = Self {
            root: root.to_path_buf(),
            name: name.to_owned(),
            _file: file,
        };
        lock.remove_leftovers();
        Ok(lock)
    }

    /// The locked output path.
    pub fn output(&self) -> PathBuf {
        self.root.join(&self.name)
    }

    /// A fresh private directory `.<name>.<kind>-<pid>` next to the output, removed when the
    /// returned value is dropped uncommitted.
    pub fn stage(&self, kind: &str) -> Result<Staged> {
        let path = self
            .root
            .join(format!(".{}.{kind}-{}", self.name, std::process::id()));
        remove_path(&path).map_err(|e| io("cannot remove", &path, &e))?;
        std::fs::create_dir_all(&path).map_err(|e| io("cannot create", &path, &e))?;
        Ok(Staged { path: Some(path) })
    }

    fn remove_leftovers(&self) {
        let name = &self.name;
        let prefixes = [
            format!(".{name}.tmp-"),
            format!(".{name}.old-"),
            format!(".{name}.gguf-"),
            format!("..{name}.gguf-"),
            format!(".{name}.rmlx-import-"),
            format!(".{name}.rmlx-old-"),
        ];
        let Ok(entries) = std::fs::read_dir(&self.root) else {
            return;
        };
        for e in entries.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if prefixes.iter().any(|p| n.starts_with(p.as_str())) {
                tracing::info!(
                    "removing {} (left by an interrupted build or convert)",
                    e.path().display()
                );
                if let Err(err) = remove_path(&e.path()) {
                    tracing::warn!("could not remove {}: {err}", e.path().display());
                }
            }
        }
    }
}

fn flock(f: &File, op: libc::c_int) -> std::io::Result<()> {
    use std::os::unix::io::AsRawFd;
    // SAFETY: a valid open descriptor; flock has no memory effects. The lock is released when
    // the file is closed (or the process dies).
    if unsafe { libc::flock(f.as_raw_fd(), op) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Removes a file or a directory tree; a missing path is not an error.
pub fn remove_path(p: &Path) -> std::io::Result<()> {
    let r = match std::fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(p),
        Ok(_) => std::fs::remove_file(p),
        Err(e) => Err(e),
    };
    match r {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// A private directory being written; removed on drop unless committed.
#[derive(Debug)]
pub struct Staged {
    path: Option<PathBuf>,
}

/// Whether [`Staged::commit`] may replace an existing plain file at the output path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplaceFile {
    /// Only a directory may be replaced (the default).
    Refuse,
    /// A plain file may be replaced too (`convert --force`).
    Allow,
}

impl Staged {
    /// The directory to write into.
    pub fn path(&self) -> &Path {
        self.path.as_deref().unwrap_or(Path::new(""))
    }

    /// Moves the finished directory to `out`, atomically replacing a previous output. The
    /// caller holds the output's [`OutputLock`].
    pub fn commit(mut self, out: &Path, replace_file: ReplaceFile) -> Result<()> {
        let Some(tmp) = self.path.take() else {
            return Ok(());
        };
        let result = commit(&tmp, out, replace_file);
        if result.is_err() {
            self.path = Some(tmp);
        }
        result
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if let Some(p) = self.path.take() {
            if let Err(e) = remove_path(&p) {
                tracing::warn!("could not remove {}: {e}", p.display());
            }
        }
    }
}

fn commit(tmp: &Path, out: &Path, replace_file: ReplaceFile) -> Result<()> {
    let Ok(meta) = std::fs::symlink_metadata(out) else {
        return std::fs::rename(tmp, out).map_err(|e| io("cannot move the output into", out, &e));
    };
    if !meta.is_dir() && replace_file == ReplaceFile::Refuse {
        return Err(Diagnostic::error(
            code::Build::Io,
            format!("{} exists and is not a directory", out.display()),
        )
        .with_file(out));
    }
    #[cfg(target_os = "linux")]
    {
        if exchange(tmp, out).is_ok() {
            // `tmp` now holds the previous output.
            if let Err(e) = remove_path(tmp) {
                tracing::warn!(
                    "could not remove the previous output {}: {e}",
                    tmp.display()
                );
            }
            return Ok(());
        }
    }
    let old = tmp.with_file_name(
        tmp.file_name()
            .map(|n| n.to_string_lossy().replacen(".tmp-", ".old-", 1))
            .unwrap_or_else(|| ".old".into()),
    );
    std::fs::rename(out, &old).map_err(|e| io("cannot move aside", out, &e))?;
    if let Err(e) = std::fs::rename(tmp, out) {
        let _ = std::fs::rename(&old, out);
        return Err(io("cannot move the output into", out, &e));
    }
    if let Err(e) = remove_path(&old) {
        tracing::warn!(
            "could not remove the previous output {}: {e}",
            old.display()
        );
    }
    Ok(())
}

#[cfg(target_os = "linux")]
fn exchange(a: &Path, b: &Path) -> std::io::Result<()> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let ca = CString::new(a.as_os_str().as_bytes())?;
    let cb = CString::new(b.as_os_str().as_bytes())?;
    // SAFETY: two valid NUL-terminated paths; renameat2 does not retain them.
    let r = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            ca.as_ptr(),
            libc::AT_FDCWD,
            cb.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

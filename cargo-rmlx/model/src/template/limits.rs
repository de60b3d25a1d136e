//! Resource limits of one render, checked BEFORE anything is allocated: the size of a value
//! a method or filter would build ([`check_bytes`], [`check_items`], [`check_width`]), the
//! size of the rendered output ([`CappedWriter`]) and the nesting of values printed or
//! stored ([`MAX_DEPTH`]).
//!
//! A limit that is hit becomes a minijinja error carrying [`ResourceLimit`] as its source,
//! located by minijinja at the call that would have allocated, and reported as
//! `rmlx::template::resources`. What the engine itself allocates (`~`, `+` on strings and
//! lists) cannot be checked from here; the sandbox worker ([`super::sandbox`]) bounds that
//! from outside the process.

use minijinja::{Error, ErrorKind};

/// Largest string, JSON text or rendered output one render may build (64 MiB): far above
/// any real prompt (a million-token context is a few MB of text).
pub const MAX_VALUE_BYTES: usize = 64 << 20;

/// Largest list a filter may build (`batch`, `slice` with a fill value).
pub const MAX_ITEMS: usize = 1 << 20;

/// Largest field width or precision of `str.format`, `%`-format, `indent`, `tojson(indent)`
/// or a padding method: real templates use a few dozen.
pub const MAX_WIDTH: u64 = 1 << 20;

/// Deepest nesting of lists, dicts and namespaces a render may print or store.
pub const MAX_DEPTH: usize = 256;

/// Marker source of an error raised because a render would exceed a resource limit.
#[derive(Debug, Clone)]
pub struct ResourceLimit(pub String);

impl std::fmt::Display for ResourceLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ResourceLimit {}

/// The error for a limit hit by `what`.
pub fn exceeded(what: impl Into<String>) -> Error {
    let msg = what.into();
    Error::new(ErrorKind::InvalidOperation, msg.clone()).with_source(ResourceLimit(msg))
}

/// Fails when `what` would build a string of `bytes` bytes (a `u128` so that callers can
/// multiply without overflow).
pub fn check_bytes(what: &str, bytes: u128) -> Result<(), Error> {
    if bytes > MAX_VALUE_BYTES as u128 {
        return Err(exceeded(format!(
            "{what} would build a string of {bytes} bytes, over the template limit of {} MiB",
            MAX_VALUE_BYTES >> 20
        )));
    }
    Ok(())
}

/// Fails when `what` would build a list of `items` items.
pub fn check_items(what: &str, items: u128) -> Result<(), Error> {
    if items > MAX_ITEMS as u128 {
        return Err(exceeded(format!(
            "{what} would build a list of {items} items, over the template limit of {MAX_ITEMS}"
        )));
    }
    Ok(())
}

/// Fails when a width, padding or precision argument of `what` is over [`MAX_WIDTH`].
pub fn check_width(what: &str, width: i128) -> Result<(), Error> {
    if width > i128::from(MAX_WIDTH) {
        return Err(exceeded(format!(
            "{what}: width {width} is over the template limit of {MAX_WIDTH}"
        )));
    }
    Ok(())
}

/// Fails when a value being printed or stored is nested deeper than [`MAX_DEPTH`].
pub fn check_depth(what: &str, depth: usize) -> Result<(), Error> {
    if depth > MAX_DEPTH {
        return Err(exceeded(format!(
            "{what}: value nested deeper than {MAX_DEPTH} levels (or containing itself)"
        )));
    }
    Ok(())
}

/// Every run of ASCII digits in `spec` that is inside a format field: for `str.format`
/// the fields are `{…}` (`{{` is a literal brace), for `%`-format they start at `%`.
/// Each number there is a width, precision or argument index; all are checked against
/// [`MAX_WIDTH`] (an index that large has no argument either).
pub fn check_format_spec(what: &str, spec: &str, printf: bool) -> Result<(), Error> {
    let bytes = spec.as_bytes();
    let mut in_field = false;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        let doubled = bytes.get(i + 1) == Some(&b);
        if !printf && matches!(b, b'{' | b'}') && doubled {
            i += 2;
            continue;
        }
        if printf {
            if b == b'(' && in_field {
                // `%(key)s`: skip the mapping key.
                i = spec[i..].find(')').map_or(bytes.len(), |p| i + p + 1);
                continue;
            }
            if b == b'%' {
                in_field = !(in_field && i > 0 && bytes[i - 1] == b'%');
            } else if in_field && b.is_ascii_alphabetic() {
                in_field = false;
            }
        } else if b == b'{' {
            in_field = true;
        } else if b == b'}' {
            in_field = false;
        }
        if in_field && b.is_ascii_digit() {
            let start = i;
            while i < bytes.len() && bytes[i].is_ascii_digit() {
                i += 1;
            }
            let n = spec[start..i].parse::<i128>().unwrap_or(i128::MAX);
            check_width(what, n)?;
            continue;
        }
        i += 1;
    }
    Ok(())
}

thread_local! {
    /// Bytes the render running on this thread has written so far (see [`CappedWriter`]).
    static WRITTEN: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Fails when printing `bytes` more would take the current render's output over the
/// limit: called by the formatter of `{{ … }}`, so the error is located at that tag.
pub fn check_output(bytes: usize) -> Result<(), Error> {
    let total = WRITTEN.with(std::cell::Cell::get) as u128 + bytes as u128;
    if total > MAX_VALUE_BYTES as u128 {
        return Err(exceeded(format!(
            "the rendered output would reach {total} bytes, over the template limit of {} MiB",
            MAX_VALUE_BYTES >> 20
        )));
    }
    Ok(())
}

/// An `io::Write` that accepts at most [`MAX_VALUE_BYTES`] and then fails: the render
/// output of one template. `{{ … }}` output is checked before it is written
/// ([`check_output`], a located error); template text between tags is stopped here, and
/// the refusal recorded so the caller can report it as a resource limit.
#[derive(Debug)]
pub struct CappedWriter {
    /// What was written.
    pub buf: Vec<u8>,
    /// Set when a write was refused.
    pub overflowed: bool,
}

impl Default for CappedWriter {
    /// A new output: the count [`check_output`] reads starts at zero on this thread.
    fn default() -> Self {
        WRITTEN.with(|w| w.set(0));
        CappedWriter {
            buf: Vec::new(),
            overflowed: false,
        }
    }
}

impl std::io::Write for CappedWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        if self.buf.len().saturating_add(data.len()) > MAX_VALUE_BYTES {
            self.overflowed = true;
            return Err(std::io::Error::other(format!(
                "rendered output over the template limit of {} MiB",
                MAX_VALUE_BYTES >> 20
            )));
        }
        self.buf.extend_from_slice(data);
        WRITTEN.with(|w| w.set(self.buf.len()));
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_specs_checked() {
        assert!(check_format_spec("f", "{:>10}{0}{{999999999999}}", false).is_ok());
        assert!(check_format_spec("f", "{:>1000000000000}", false).is_err());
        assert!(check_format_spec("f", "{:.99999999}", false).is_err());
        assert!(check_format_spec("f", "%5d %%99999999999 %s 1000000000", true).is_ok());
        assert!(check_format_spec("f", "%099999999999d", true).is_err());
        assert!(check_format_spec("f", "%(a1)099999999999d", true).is_err());
        assert!(check_format_spec("f", "%.99999999f", true).is_err());
    }

    #[test]
    fn writer_caps() {
        use std::io::Write;
        let mut w = CappedWriter::default();
        assert!(w.write_all(&vec![b'a'; MAX_VALUE_BYTES]).is_ok());
        assert!(w.write_all(b"b").is_err());
        assert!(w.overflowed);
        assert_eq!(w.buf.len(), MAX_VALUE_BYTES);
    }
}

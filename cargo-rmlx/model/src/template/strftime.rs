//! `strftime_now(fmt)` for chat templates, as transformers defines it:
//! `datetime.now().strftime(fmt)` — the LOCAL time as a naive datetime — or, with a fixed
//! clock ([`super::TemplateOptions::now`]), `datetime.fromtimestamp(now).strftime(fmt)`.
//!
//! Python handles `%f` (microseconds), `%z`, `%:z` and `%Z` itself (a naive datetime has no
//! offset or zone: they print nothing) and hands every other directive to the C library's
//! `strftime` with `tm_isdst = -1`. This module does the same, one directive at a time, so
//! every conversion and flag the platform's C library knows (`%U %W %V %G %c %x %X %-d %_5d
//! %^a` …) prints exactly what Python prints on that platform, in the C locale.

use std::time::{SystemTime, UNIX_EPOCH};

use minijinja::{Error, ErrorKind};

use super::limits::check_width;

/// A point in time: seconds since the Unix epoch and microseconds within that second.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Instant {
    /// Seconds since the Unix epoch (negative before 1970).
    pub secs: i64,
    /// Microseconds, 0..1_000_000.
    pub micros: u32,
}

impl Instant {
    /// The current time.
    pub fn now() -> Instant {
        match SystemTime::now().duration_since(UNIX_EPOCH) {
            Ok(d) => Instant {
                secs: d.as_secs() as i64,
                micros: d.subsec_micros(),
            },
            Err(e) => {
                let d = e.duration();
                let micros = d.subsec_micros();
                Instant {
                    secs: -(d.as_secs() as i64) - i64::from(micros > 0),
                    micros: if micros > 0 { 1_000_000 - micros } else { 0 },
                }
            }
        }
    }

    /// A whole second (`--now`).
    pub fn at(secs: i64) -> Instant {
        Instant { secs, micros: 0 }
    }
}

/// Python's `datetime.fromtimestamp(t.secs + t.micros / 1e6).strftime(fmt)` (local time).
pub fn strftime_local(fmt: &str, t: Instant) -> Result<String, Error> {
    if fmt.contains('\0') {
        return Err(Error::new(
            ErrorKind::InvalidOperation,
            "strftime_now: embedded null character",
        ));
    }
    let tm = local_tm(t.secs)?;
    let mut out = String::with_capacity(fmt.len() * 2);
    let mut rest = fmt;
    while let Some(pos) = rest.find('%') {
        out.push_str(&rest[..pos]);
        let directive = directive_at(&rest[pos..]);
        match directive {
            "%f" => out.push_str(&format!("{:06}", t.micros)),
            "%z" | "%Z" | "%:z" => {}
            _ => c_strftime(directive, &tm, &mut out)?,
        }
        rest = &rest[pos + directive.len()..];
    }
    out.push_str(rest);
    Ok(out)
}

/// The directive at the start of `s` (which starts with `%`): `%` + the C library's
/// flags, width and `E`/`O` modifier + one conversion character; `%:z` as Python 3.12
/// reads it; a lone `%` at the end.
fn directive_at(s: &str) -> &str {
    if s.starts_with("%:z") {
        return &s[..3];
    }
    let bytes = s.as_bytes();
    let mut i = 1;
    while i < bytes.len() && matches!(bytes[i], b'_' | b'-' | b'0' | b'^' | b'#') {
        i += 1;
    }
    while i < bytes.len() && bytes[i].is_ascii_digit() {
        i += 1;
    }
    if i < bytes.len() && matches!(bytes[i], b'E' | b'O') {
        i += 1;
    }
    // One character (possibly multi-byte) ends the directive.
    match s[i..].chars().next() {
        Some(c) if i == 1 && matches!(c, 'z' | 'Z' | 'f') => &s[..2],
        Some(c) => &s[..i + c.len_utf8()],
        None => s,
    }
}

/// Local broken-down time of `secs`, as Python's naive `timetuple()` gives it to C:
/// `tm_isdst = -1`, no zone name, no offset.
fn local_tm(secs: i64) -> Result<libc::tm, Error> {
    let t = libc::time_t::try_from(secs).map_err(|_| {
        Error::new(
            ErrorKind::InvalidOperation,
            "strftime_now: time out of range",
        )
    })?;
    // SAFETY: `tm` is plain data; localtime_r writes it and reads `t` only.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    let ok = unsafe { !libc::localtime_r(&t, &mut tm).is_null() };
    if !ok {
        return Err(Error::new(
            ErrorKind::InvalidOperation,
            "strftime_now: time out of range",
        ));
    }
    tm.tm_isdst = -1;
    #[cfg(any(target_os = "linux", target_os = "macos"))]
    {
        tm.tm_gmtoff = 0;
        tm.tm_zone = std::ptr::null_mut();
    }
    Ok(tm)
}

/// Appends C `strftime(directive, tm)`.
fn c_strftime(directive: &str, tm: &libc::tm, out: &mut String) -> Result<(), Error> {
    let width: i128 = directive
        .trim_start_matches('%')
        .trim_start_matches(['_', '-', '0', '^', '#'])
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .unwrap_or(0);
    check_width("strftime_now", width)?;
    let Ok(c_fmt) = std::ffi::CString::new(directive) else {
        return Err(Error::new(
            ErrorKind::InvalidOperation,
            "strftime_now: embedded null character",
        ));
    };
    let mut buf = vec![0u8; width as usize + 256];
    // SAFETY: `buf` has `buf.len()` writable bytes, `c_fmt` is NUL-terminated, `tm` valid.
    let n = unsafe { libc::strftime(buf.as_mut_ptr().cast(), buf.len(), c_fmt.as_ptr(), tm) };
    out.push_str(&String::from_utf8_lossy(&buf[..n]));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directives_split_like_python() {
        assert_eq!(directive_at("%Y-%m"), "%Y");
        assert_eq!(directive_at("%-d x"), "%-d");
        assert_eq!(directive_at("%_10Ey"), "%_10Ey");
        assert_eq!(directive_at("%:z!"), "%:z");
        assert_eq!(directive_at("%"), "%");
        assert_eq!(directive_at("%é"), "%é");
    }

    #[test]
    fn naive_datetime_prints_no_zone() {
        let t = Instant::at(1_709_211_909);
        assert_eq!(strftime_local("[%z|%Z|%:z|%f]", t).unwrap(), "[|||000000]");
        assert_eq!(strftime_local("%%|%Q|%", t).unwrap(), "%|%Q|%");
        assert!(strftime_local("a\0b", t).is_err());
        assert!(strftime_local("%1000000000Y", t).is_err());
    }
}

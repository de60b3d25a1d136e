//! JSON as it streams: where a value that is still being generated ends, and the streaming of
//! a `{"name": …, "arguments": {…}}` call object (Hermes, Llama 3, Mistral's JSON list) whose
//! arguments are forwarded as they arrive.

use serde_json::Value;

use super::{Calls, Delta};

/// How far a JSON value at the start of a text (after whitespace) got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scan {
    /// The value ends at this byte offset.
    Complete(usize),
    /// The text ends inside the value.
    Incomplete,
    /// The text does not start a JSON value.
    Invalid,
}

/// Where the JSON value starting at the beginning of `s` (leading whitespace allowed) ends.
/// Structure only (brackets, strings, escapes); `serde_json` validates the finished value.
pub fn scan_value(s: &str) -> Scan {
    let b = s.as_bytes();
    let start = b.len() - s.trim_start().len();
    let Some(&first) = b.get(start) else {
        return Scan::Incomplete;
    };
    match first {
        b'{' | b'[' => scan_nested(b, start),
        b'"' => scan_string(b, start + 1).map_or(Scan::Incomplete, Scan::Complete),
        b'-' | b'0'..=b'9' | b't' | b'f' | b'n' => {
            let scalar = |c: &u8| c.is_ascii_alphanumeric() || matches!(c, b'+' | b'-' | b'.');
            match b[start..].iter().position(|c| !scalar(c)) {
                Some(len) => Scan::Complete(start + len),
                None => Scan::Incomplete,
            }
        }
        _ => Scan::Invalid,
    }
}

/// The end (one past the closing quote) of a string whose body starts at `i`.
fn scan_string(b: &[u8], mut i: usize) -> Option<usize> {
    while i < b.len() {
        match b[i] {
            b'\\' => i += 2,
            b'"' => return Some(i + 1),
            _ => i += 1,
        }
    }
    None
}

fn scan_nested(b: &[u8], start: usize) -> Scan {
    let mut depth = 0usize;
    let mut i = start;
    while i < b.len() {
        match b[i] {
            b'"' => match scan_string(b, i + 1) {
                Some(end) => {
                    i = end;
                    continue;
                }
                None => return Scan::Incomplete,
            },
            b'{' | b'[' => depth += 1,
            b'}' | b']' => {
                depth -= 1;
                if depth == 0 {
                    return Scan::Complete(i + 1);
                }
            }
            _ => {}
        }
        i += 1;
    }
    Scan::Incomplete
}

/// One member of a JSON object being generated: its key and where its value lies.
#[derive(Debug, Clone)]
struct Member {
    key: String,
    start: usize,
    /// `None` while the value is incomplete.
    end: Option<usize>,
}

/// The members of the object that `body` starts (so far), and whether it is closed.
fn members(body: &str) -> (Vec<Member>, bool) {
    let b = body.as_bytes();
    let mut out = Vec::new();
    let ws = |mut i: usize| {
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        i
    };
    let mut i = ws(0);
    if b.get(i) != Some(&b'{') {
        return (out, false);
    }
    i = ws(i + 1);
    loop {
        match b.get(i) {
            Some(b'}') => return (out, true),
            Some(b'"') => {}
            _ => return (out, false),
        }
        let Some(key_end) = scan_string(b, i + 1) else {
            return (out, false);
        };
        let Ok(key) = serde_json::from_str::<String>(&body[i..key_end]) else {
            return (out, false);
        };
        i = ws(key_end);
        if b.get(i) != Some(&b':') {
            return (out, false);
        }
        let start = ws(i + 1);
        if start >= b.len() {
            return (out, false);
        }
        let end = match scan_value(&body[start..]) {
            Scan::Complete(n) => Some(start + n),
            Scan::Incomplete => None,
            Scan::Invalid => return (out, false),
        };
        out.push(Member { key, start, end });
        let Some(end) = end else {
            return (out, false);
        };
        i = ws(end);
        if b.get(i) == Some(&b',') {
            i = ws(i + 1);
        }
    }
}

/// A `{"name": …, "arguments": …}` object being generated (`parameters` is accepted for
/// `arguments`, as Llama 3 writes it). The name is announced as soon as it is complete; the
/// arguments are forwarded as they arrive when they are an object (a JSON-string argument is
/// forwarded decoded, once complete).
#[derive(Debug, Default)]
pub struct ObjectCall {
    index: Option<usize>,
    /// Bytes of the raw arguments value already forwarded.
    sent: usize,
    done: bool,
}

impl ObjectCall {
    /// Whether the name was seen (the call was announced).
    pub fn started(&self) -> bool {
        self.index.is_some()
    }

    /// Feeds the object's whole text so far.
    pub fn update(&mut self, body: &str, calls: &mut Calls, out: &mut Delta) {
        let (members, _) = members(body);
        if self.index.is_none() {
            let name = members
                .iter()
                .find(|m| m.key == "name")
                .and_then(|m| m.end.map(|e| &body[m.start..e]))
                .and_then(|raw| serde_json::from_str::<String>(raw).ok());
            match name {
                Some(name) => self.index = Some(calls.start(name, out)),
                None => return,
            }
        }
        let Some(index) = self.index else { return };
        let Some(args) = members
            .iter()
            .find(|m| m.key == "arguments" || m.key == "parameters")
        else {
            return;
        };
        if body[args.start..].starts_with('"') {
            if let (Some(end), 0) = (args.end, self.sent) {
                let s = serde_json::from_str::<String>(&body[args.start..end]).unwrap_or_default();
                self.sent = end - args.start;
                calls.args(index, &s, out);
            }
            return;
        }
        let end = args.end.unwrap_or(body.len());
        let from = args.start + self.sent;
        if end > from {
            calls.args(index, &body[from..end], out);
            self.sent = end - args.start;
        }
    }

    /// The object is complete (or the text ended): a call without arguments gets `{}`.
    /// `false` when no call was announced (the text was not a call).
    pub fn finish(&mut self, body: &str, calls: &mut Calls, out: &mut Delta) -> bool {
        if self.done {
            return self.started();
        }
        self.done = true;
        self.update(body, calls, out);
        let Some(index) = self.index else {
            return false;
        };
        if self.sent == 0 {
            calls.args(index, "{}", out);
        }
        if serde_json::from_str::<Value>(body.trim()).is_err() {
            tracing::warn!("tool call {index}: the call object is not complete JSON: {body:?}");
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scan_finds_the_end_of_values_and_waits_for_incomplete_ones() {
        assert_eq!(
            scan_value(r#" {"a": "}", "b": [1, {"c": 2}]} tail"#),
            Scan::Complete(31)
        );
        assert_eq!(scan_value(r#"{"a": "x\"}"#), Scan::Incomplete);
        assert_eq!(scan_value(r#""a\"b" x"#), Scan::Complete(6));
        assert_eq!(scan_value("12, 3"), Scan::Complete(2));
        assert_eq!(scan_value("12"), Scan::Incomplete);
        assert_eq!(scan_value("  "), Scan::Incomplete);
        assert_eq!(scan_value("x"), Scan::Invalid);
    }

    #[test]
    fn object_call_streams_arguments_in_pieces() {
        let text = r#"{"name": "get_weather", "arguments": {"city": "Paris", "n": [1, 2]}}"#;
        for step in [1, 3, 7] {
            let (mut calls, mut out) = (Calls::default(), Delta::default());
            let mut call = ObjectCall::default();
            let mut fed = String::new();
            for c in text.chars().collect::<Vec<_>>().chunks(step) {
                fed.extend(c);
                call.update(&fed, &mut calls, &mut out);
            }
            assert!(call.finish(&fed, &mut calls, &mut out));
            let list = calls.into_list();
            assert_eq!(list[0].name, "get_weather");
            assert_eq!(list[0].arguments, r#"{"city": "Paris", "n": [1, 2]}"#);
            let streamed: String = out
                .tool_calls
                .iter()
                .map(|d| d.arguments.as_str())
                .collect();
            assert_eq!(streamed, list[0].arguments);
        }
    }

    #[test]
    fn string_arguments_are_decoded_and_missing_ones_are_empty_objects() {
        let (mut calls, mut out) = (Calls::default(), Delta::default());
        let mut call = ObjectCall::default();
        let body = r#"{"name": "f", "arguments": "{\"x\": 1}"}"#;
        assert!(call.finish(body, &mut calls, &mut out));
        let mut c2 = ObjectCall::default();
        assert!(c2.finish(r#"{"name": "g"}"#, &mut calls, &mut out));
        let list = calls.into_list();
        assert_eq!(list[0].arguments, r#"{"x": 1}"#);
        assert_eq!(list[1].arguments, "{}");
        let mut c3 = ObjectCall::default();
        assert!(!c3.finish(r#"{"answer": 42}"#, &mut Calls::default(), &mut out));
    }
}

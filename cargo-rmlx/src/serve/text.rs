//! The text a generation streams out, after stop strings and tool-call markers.
//!
//! Generated text arrives in pieces; a stop string or a `<tool_call>` marker can span pieces.
//! [`TextFilter`] holds back the shortest tail that could still grow into a marker, emits
//! everything before it, ends the text at a stop string (the stop string itself is not part
//! of the output, as in OpenAI's API) and captures everything from a tool-call marker on, so
//! the caller can parse it when the generation ends.

/// Where the filter is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Keep generating.
    Continue,
    /// A stop string was found: stop generating.
    Stop,
}

/// Stop strings and tool-call capture over streamed text.
#[derive(Debug, Clone)]
pub struct TextFilter {
    stops: Vec<String>,
    tool_marker: Option<&'static str>,
    pending: String,
    captured: Option<String>,
    stopped: bool,
}

impl TextFilter {
    /// A filter ending the text at any of `stops` and, when `tool_marker` is set, capturing
    /// the text from that marker on.
    pub fn new(stops: Vec<String>, tool_marker: Option<&'static str>) -> Self {
        Self {
            stops: stops.into_iter().filter(|s| !s.is_empty()).collect(),
            tool_marker,
            pending: String::new(),
            captured: None,
            stopped: false,
        }
    }

    /// Whether a stop string ended the text.
    pub fn stopped(&self) -> bool {
        self.stopped
    }

    /// Adds generated text; returns the text that is now final and whether to stop.
    pub fn push(&mut self, text: &str) -> (String, Flow) {
        if self.stopped {
            return (String::new(), Flow::Stop);
        }
        let max_stop = self.max_stop_len();
        if let Some(cap) = &mut self.captured {
            let start = cap.len();
            cap.push_str(text);
            // A stop string ends the capture too (searching a little before the new text, so
            // a stop string spanning pieces is found).
            let from = floor_boundary(cap, start.saturating_sub(max_stop));
            if let Some(pos) = earliest(&cap[from..], &self.stops).map(|(p, _)| p + from) {
                cap.truncate(pos);
                self.stopped = true;
                return (String::new(), Flow::Stop);
            }
            return (String::new(), Flow::Continue);
        }
        self.pending.push_str(text);
        let stop_at = earliest(&self.pending, &self.stops);
        let tool_at = self
            .tool_marker
            .and_then(|m| self.pending.find(m).map(|p| (p, m.len())));
        match (stop_at, tool_at) {
            (Some((s, _)), t) if t.is_none_or(|(tp, _)| s <= tp) => {
                let out = self.pending[..s].to_string();
                self.pending.clear();
                self.stopped = true;
                (out, Flow::Stop)
            }
            (_, Some((tp, _))) => {
                let out = self.pending[..tp].to_string();
                self.captured = Some(self.pending[tp..].to_string());
                self.pending.clear();
                (out, Flow::Continue)
            }
            _ => {
                let keep = self.holdback();
                let cut = self.pending.len() - keep;
                let out = self.pending[..cut].to_string();
                self.pending.drain(..cut);
                (out, Flow::Continue)
            }
        }
    }

    /// Ends the stream: returns the held-back text (no marker completed) and the captured
    /// tool-call text, if any.
    pub fn finish(&mut self) -> (String, Option<String>) {
        (std::mem::take(&mut self.pending), self.captured.take())
    }

    fn max_stop_len(&self) -> usize {
        self.stops.iter().map(String::len).max().unwrap_or(0)
    }

    /// Length of the longest tail of `pending` that is a proper prefix of a marker.
    fn holdback(&self) -> usize {
        let markers = self
            .stops
            .iter()
            .map(String::as_str)
            .chain(self.tool_marker);
        let mut keep = 0;
        for m in markers {
            for (i, _) in m.char_indices().skip(1) {
                if i > keep && self.pending.ends_with(&m[..i]) {
                    keep = i;
                }
            }
        }
        keep
    }
}

/// The earliest occurrence of any of `needles` in `hay`: (byte position, needle length).
fn earliest(hay: &str, needles: &[String]) -> Option<(usize, usize)> {
    needles
        .iter()
        .filter_map(|n| hay.find(n.as_str()).map(|p| (p, n.len())))
        .min_by_key(|&(p, _)| p)
}

fn floor_boundary(s: &str, mut i: usize) -> usize {
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(filter: &mut TextFilter, pieces: &[&str]) -> (String, bool) {
        let mut out = String::new();
        for p in pieces {
            let (t, flow) = filter.push(p);
            out.push_str(&t);
            if flow == Flow::Stop {
                return (out, true);
            }
        }
        let (rest, _) = filter.finish();
        out.push_str(&rest);
        (out, false)
    }

    #[test]
    fn stop_string_spanning_pieces_ends_the_text() {
        let mut f = TextFilter::new(vec!["END".into()], None);
        assert_eq!(
            run(&mut f, &["Paris is", " the E", "N", "D of it"]),
            ("Paris is the ".to_string(), true)
        );
    }

    #[test]
    fn held_back_prefix_is_released_when_it_does_not_complete() {
        let mut f = TextFilter::new(vec!["\n\n".into()], None);
        let (t, _) = f.push("a\n");
        assert_eq!(t, "a");
        let (t, _) = f.push("b");
        assert_eq!(t, "\nb");
        assert_eq!(f.finish().0, "");
    }

    #[test]
    fn earliest_stop_wins_and_multibyte_is_safe() {
        let mut f = TextFilter::new(vec!["é!".into(), "b".into()], None);
        assert_eq!(run(&mut f, &["aé", "!b"]), ("a".to_string(), true));
    }

    #[test]
    fn tool_marker_captures_the_rest() {
        let mut f = TextFilter::new(vec![], Some("<tool_call>"));
        let (out, stopped) = run(&mut f, &["Sure. <tool", "_call>\n{\"name\"", ": 1}"]);
        assert!(!stopped);
        assert_eq!(out, "Sure. ");
        let mut f = TextFilter::new(vec![], Some("<tool_call>"));
        for p in ["x<tool_call>{", "}</tool_call>"] {
            f.push(p);
        }
        assert_eq!(
            f.finish(),
            (String::new(), Some("<tool_call>{}</tool_call>".into()))
        );
    }
}

//! The verdict rules of the smoke probe, on a window of greedy steps. Pieces are normalised
//! per tokenizer family (byte-level BPE `Ġ`/`Ċ`, SentencePiece `▁`) before the single-character
//! rules, so the rules work the same for every vocabulary.

use serde::Serialize;

use crate::diagnostic::code;

/// A probe verdict. Names are stable (JSON, docs, exit codes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    /// The model answered coherently (and as expected, when an expectation is declared).
    Ok,
    /// One token, or a 1–2 token cycle, dominates the window.
    BrokenLoop,
    /// Non-finite logits.
    BrokenNan,
    /// Immediate end-of-sequence, or only whitespace/special tokens.
    BrokenEmpty,
    /// The declared `expect` substring is absent from the answer.
    UnexpectedAnswer,
    /// The model's predictions disagree with the reference beyond the thresholds.
    Diverged,
    /// Too little evidence to judge.
    Inconclusive,
}

impl Verdict {
    /// The stable name (`ok`, `broken-loop`, …).
    pub fn name(self) -> &'static str {
        match self {
            Verdict::Ok => "ok",
            Verdict::BrokenLoop => "broken-loop",
            Verdict::BrokenNan => "broken-nan",
            Verdict::BrokenEmpty => "broken-empty",
            Verdict::UnexpectedAnswer => "unexpected-answer",
            Verdict::Diverged => "diverged",
            Verdict::Inconclusive => "inconclusive",
        }
    }

    /// Whether a model with this verdict may serve.
    pub fn is_healthy(self) -> bool {
        self == Verdict::Ok
    }

    /// The stable diagnostic code of this verdict (`rmlx::probe::<verdict>`).
    pub fn code(self) -> code::Probe {
        match self {
            Verdict::Ok => code::Probe::Ok,
            Verdict::BrokenLoop => code::Probe::BrokenLoop,
            Verdict::BrokenNan => code::Probe::BrokenNan,
            Verdict::BrokenEmpty => code::Probe::BrokenEmpty,
            Verdict::UnexpectedAnswer => code::Probe::UnexpectedAnswer,
            Verdict::Diverged => code::Probe::Diverged,
            Verdict::Inconclusive => code::Probe::Inconclusive,
        }
    }

    /// Exit code of `cargo rmlx probe` for this verdict (README: exit codes), from the code
    /// table ([`code::Probe::exit`]).
    pub fn exit_code(self) -> u8 {
        self.code().exit().code()
    }
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What the classifier sees of one step.
#[derive(Debug, Clone)]
pub struct StepView<'a> {
    /// Token id.
    pub id: u32,
    /// Raw vocabulary piece.
    pub piece: &'a str,
    /// Count of non-finite logits.
    pub non_finite: usize,
    /// Whether the token is an EOS token.
    pub is_eos: bool,
    /// Whether the token is a special (control) token.
    pub is_special: bool,
}

/// A verdict with the reason, in words, and the rule that fired.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Classification {
    /// The verdict.
    pub verdict: Verdict,
    /// Stable rule name (e.g. `repeated-token`).
    pub rule: &'static str,
    /// Human explanation of the evidence.
    pub reason: String,
}

/// Fewest steps before the first EOS for a loop judgement.
pub const MIN_STEPS: usize = 2;

/// Share of the window one token (or one single-character piece) must take to be a loop.
pub const LOOP_SHARE: f64 = 0.75;

/// Shortest window in which a 1–2 token cycle counts as a loop.
pub const MIN_CYCLE_WINDOW: usize = 6;

/// Normalises a vocabulary piece: byte-level BPE `Ġ` (space) and `Ċ` (newline), SentencePiece
/// `▁` (space) become plain whitespace, then surrounding whitespace is trimmed.
pub fn normalize_piece(piece: &str) -> String {
    piece
        .replace(['Ġ', '▁'], " ")
        .replace('Ċ', "\n")
        .replace('ĉ', "\t")
        .trim()
        .to_string()
}

fn is_single_symbol(norm: &str) -> bool {
    let mut chars = norm.chars();
    matches!((chars.next(), chars.next()), (Some(c), None) if !c.is_alphabetic())
}

/// `broken-nan` when any step has non-finite logits.
pub fn non_finite(steps: &[StepView<'_>]) -> Option<Classification> {
    let (i, s) = steps.iter().enumerate().find(|(_, s)| s.non_finite > 0)?;
    Some(Classification {
        verdict: Verdict::BrokenNan,
        rule: "non-finite-logits",
        reason: format!("step {i} has {} NaN/Inf logits", s.non_finite),
    })
}

/// Judges a window of greedy steps (EOS ignored while generating). `expect` is checked
/// against `answer`, the decoded text up to the first EOS.
pub fn classify(steps: &[StepView<'_>], answer: &str, expect: Option<&str>) -> Classification {
    let c = |verdict, rule, reason: String| Classification {
        verdict,
        rule,
        reason,
    };
    if let Some(nan) = non_finite(steps) {
        return nan;
    }
    if steps.is_empty() {
        return c(
            Verdict::Inconclusive,
            "no-steps",
            "the model produced no steps".into(),
        );
    }
    if steps[0].is_eos {
        return c(
            Verdict::BrokenEmpty,
            "immediate-eos",
            format!("the first token is end-of-sequence `{}`", steps[0].piece),
        );
    }
    // The answer ends at the first EOS; what follows is not part of it.
    let window: Vec<&StepView<'_>> = steps.iter().take_while(|s| !s.is_eos).collect();
    let norms: Vec<String> = window.iter().map(|s| normalize_piece(s.piece)).collect();
    let content = window
        .iter()
        .zip(&norms)
        .filter(|(s, n)| !s.is_special && !n.is_empty())
        .count();
    if content == 0 {
        return c(
            Verdict::BrokenEmpty,
            "no-content",
            format!(
                "{} steps before end-of-sequence, all whitespace or special tokens",
                window.len()
            ),
        );
    }
    let n = window.len();
    if n >= MIN_STEPS {
        // Longest run of one id.
        let (mut best, mut run, mut best_id) = (1, 1, window[0].id);
        for i in 1..n {
            run = if window[i].id == window[i - 1].id {
                run + 1
            } else {
                1
            };
            if run > best {
                best = run;
                best_id = window[i].id;
            }
        }
        if n >= 4 && best as f64 >= LOOP_SHARE * n as f64 {
            let piece = window
                .iter()
                .find(|s| s.id == best_id)
                .map_or("", |s| s.piece);
            return c(
                Verdict::BrokenLoop,
                "repeated-token",
                format!("token {best_id} `{piece}` repeats {best} times in a row out of {n} steps"),
            );
        }
        // A 1–2 token cycle filling the window.
        if n >= MIN_CYCLE_WINDOW && (2..n).all(|i| window[i].id == window[i - 2].id) {
            return c(
                Verdict::BrokenLoop,
                "two-token-cycle",
                format!(
                    "the {n} steps alternate between `{}` and `{}`",
                    window[0].piece, window[1].piece
                ),
            );
        }
        // One single-character symbol (after normalisation) dominating, whatever its ids.
        let mut counts: std::collections::HashMap<&str, usize> = Default::default();
        for norm in &norms {
            if is_single_symbol(norm) {
                *counts.entry(norm.as_str()).or_default() += 1;
            }
        }
        if let Some((sym, k)) = counts.into_iter().max_by_key(|(_, k)| *k) {
            if n >= 4 && k as f64 >= LOOP_SHARE * n as f64 {
                return c(
                    Verdict::BrokenLoop,
                    "single-symbol",
                    format!("the symbol `{sym}` makes {k} of {n} steps"),
                );
            }
        }
    } else if expect.is_none() {
        return c(
            Verdict::Inconclusive,
            "too-few-steps",
            format!("only {n} step(s) before end-of-sequence"),
        );
    }
    if let Some(want) = expect {
        if !answer.to_lowercase().contains(&want.to_lowercase()) {
            return c(
                Verdict::UnexpectedAnswer,
                "expect",
                format!("the answer {answer:?} does not contain {want:?}"),
            );
        }
    }
    c(
        Verdict::Ok,
        "healthy",
        format!("{n} varied steps: {answer:?}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn steps<'a>(pieces: &[(u32, &'a str)]) -> Vec<StepView<'a>> {
        pieces
            .iter()
            .map(|&(id, piece)| StepView {
                id,
                piece,
                non_finite: 0,
                is_eos: piece == "<eos>" || piece == "<|im_end|>",
                is_special: piece.starts_with('<') && piece.ends_with('>'),
            })
            .collect()
    }

    fn verdict(pieces: &[(u32, &str)], expect: Option<&str>) -> Verdict {
        let s = steps(pieces);
        let answer: String = s
            .iter()
            .take_while(|s| !s.is_eos)
            .map(|s| s.piece.replace(['Ġ', '▁'], " "))
            .collect();
        classify(&s, &answer, expect).verdict
    }

    #[test]
    fn healthy_answers_in_each_tokenizer_family() {
        let bpe = [
            (1, "The"),
            (2, "Ġcapital"),
            (3, "Ġof"),
            (4, "ĠFrance"),
            (5, "Ġis"),
            (6, "ĠParis"),
            (7, "."),
            (8, "<|im_end|>"),
        ];
        let sp = [
            (1, "▁The"),
            (2, "▁capital"),
            (3, "▁of"),
            (4, "▁France"),
            (5, "▁is"),
            (6, "▁Paris"),
            (7, "."),
            (8, "<eos>"),
        ];
        let plain = [
            (1, "The"),
            (2, " capital"),
            (3, " of"),
            (4, " France"),
            (5, " is"),
            (6, " Paris"),
            (7, "."),
            (8, "\n"),
        ];
        for p in [&bpe[..], &sp[..], &plain[..]] {
            assert_eq!(verdict(p, None), Verdict::Ok, "{p:?}");
            assert_eq!(verdict(p, Some("paris")), Verdict::Ok, "{p:?}");
            assert_eq!(
                verdict(p, Some("Berlin")),
                Verdict::UnexpectedAnswer,
                "{p:?}"
            );
        }
    }

    #[test]
    fn the_the_repetition_is_healthy() {
        let p = [
            (1, "Ġthe"),
            (1, "Ġthe"),
            (2, "Ġcapital"),
            (3, "Ġis"),
            (4, "ĠParis"),
            (5, "."),
            (6, "ĠIt"),
            (7, "Ġis"),
        ];
        assert_eq!(verdict(&p, None), Verdict::Ok);
    }

    #[test]
    fn repeated_token_is_a_loop() {
        let p = [(33, "1"); 8];
        let s = steps(&p);
        let c = classify(&s, "11111111", None);
        assert_eq!(c.verdict, Verdict::BrokenLoop);
        assert_eq!(c.rule, "repeated-token");
    }

    #[test]
    fn two_token_cycle_is_a_loop() {
        let p = [
            (5, "ĠParis"),
            (6, "Ġand"),
            (5, "ĠParis"),
            (6, "Ġand"),
            (5, "ĠParis"),
            (6, "Ġand"),
            (5, "ĠParis"),
            (6, "Ġand"),
        ];
        assert_eq!(verdict(&p, None), Verdict::BrokenLoop);
    }

    #[test]
    fn single_symbol_is_a_loop_across_tokenizer_families() {
        // Different ids for the same normalised symbol: "." "Ġ." "▁." …
        for p in [
            [
                (1, "."),
                (2, "Ġ."),
                (1, "."),
                (2, "Ġ."),
                (1, "."),
                (3, "Ġ,"),
                (2, "Ġ."),
                (1, "."),
            ],
            [
                (1, "▁."),
                (2, "."),
                (1, "▁."),
                (2, "."),
                (1, "▁."),
                (2, "."),
                (4, "▁a"),
                (1, "▁."),
            ],
        ] {
            let s = steps(&p);
            let c = classify(&s, ". . . .", None);
            assert_eq!(c.verdict, Verdict::BrokenLoop, "{p:?}");
        }
    }

    #[test]
    fn nan_logits_are_broken_nan() {
        let mut s = steps(&[(1, "The"), (2, "Ġcapital")]);
        s[1].non_finite = 49152;
        assert_eq!(
            classify(&s, "The capital", None).verdict,
            Verdict::BrokenNan
        );
    }

    #[test]
    fn immediate_eos_and_whitespace_only_are_empty() {
        assert_eq!(
            verdict(&[(9, "<eos>"), (1, "The")], None),
            Verdict::BrokenEmpty
        );
        let p = [(1, "Ċ"), (2, "Ġ"), (3, "▁"), (1, "Ċ"), (9, "<eos>")];
        assert_eq!(verdict(&p, None), Verdict::BrokenEmpty);
    }

    #[test]
    fn too_few_steps_is_inconclusive_unless_the_answer_is_checked() {
        assert_eq!(
            verdict(&[(6, "ĠParis"), (9, "<eos>")], None),
            Verdict::Inconclusive
        );
        assert_eq!(
            verdict(&[(6, "ĠParis"), (9, "<eos>")], Some("Paris")),
            Verdict::Ok
        );
        assert_eq!(verdict(&[], None), Verdict::Inconclusive);
    }

    #[test]
    fn normalisation_of_pieces() {
        assert_eq!(normalize_piece("Ġ."), ".");
        assert_eq!(normalize_piece("▁."), ".");
        assert_eq!(normalize_piece("ĊĊ"), "");
        assert!(is_single_symbol("1"));
        assert!(!is_single_symbol("a"));
        assert!(!is_single_symbol("Paris"));
    }
}

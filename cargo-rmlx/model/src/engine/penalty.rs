//! Logit adjustments applied before sampling: repetition penalty (mlx-lm / Hugging Face
//! semantics), presence and frequency penalties (OpenAI semantics) and `logit_bias`.
//!
//! They change which token is picked, never the evidence recorded for a step: logprobs and
//! top logits stay those of the model, so the probe and `logprobs` mean the same thing with
//! or without penalties.

use std::collections::HashMap;

/// Tokens the repetition penalty looks back over when none is given (mlx-lm's default).
pub const DEFAULT_REPETITION_CONTEXT: usize = 20;

/// Penalty settings; the default changes nothing.
#[derive(Debug, Clone, PartialEq)]
pub struct Penalties {
    /// Divide positive (multiply negative) logits of recently seen tokens by this; 1 = off.
    pub repetition: f32,
    /// How many of the latest tokens (prompt included) the repetition penalty sees.
    pub repetition_context: usize,
    /// Subtracted once from every token already generated; 0 = off.
    pub presence: f32,
    /// Subtracted per occurrence of each token already generated; 0 = off.
    pub frequency: f32,
    /// Added to the given tokens' logits (`-100` effectively bans a token).
    pub logit_bias: Vec<(u32, f32)>,
}

impl Default for Penalties {
    fn default() -> Self {
        Self {
            repetition: 1.0,
            repetition_context: DEFAULT_REPETITION_CONTEXT,
            presence: 0.0,
            frequency: 0.0,
            logit_bias: Vec::new(),
        }
    }
}

impl Penalties {
    /// Whether these settings leave logits untouched.
    pub fn is_neutral(&self) -> bool {
        self.repetition == 1.0
            && self.presence == 0.0
            && self.frequency == 0.0
            && self.logit_bias.is_empty()
    }

    /// The largest token id named by `logit_bias`.
    pub fn max_biased_id(&self) -> Option<u32> {
        self.logit_bias.iter().map(|b| b.0).max()
    }
}

/// Tracks the token history a generation needs for its penalties.
#[derive(Debug, Clone)]
pub struct PenaltyState {
    cfg: Penalties,
    /// The latest tokens, prompt included, at most `repetition_context`.
    recent: Vec<u32>,
    /// How often each generated token occurred.
    counts: HashMap<u32, u32>,
}

impl PenaltyState {
    /// State after the prompt.
    pub fn new(cfg: &Penalties, prompt: &[u32]) -> Self {
        let keep = cfg.repetition_context.min(prompt.len());
        Self {
            cfg: cfg.clone(),
            recent: prompt[prompt.len() - keep..].to_vec(),
            counts: HashMap::new(),
        }
    }

    /// Records a generated token.
    pub fn push(&mut self, id: u32) {
        *self.counts.entry(id).or_default() += 1;
        if self.cfg.repetition_context > 0 {
            if self.recent.len() == self.cfg.repetition_context {
                self.recent.remove(0);
            }
            self.recent.push(id);
        }
    }

    /// Adjusts `logits` in place.
    pub fn apply(&self, logits: &mut [f32]) {
        let cfg = &self.cfg;
        if cfg.repetition != 1.0 {
            let mut seen: Vec<u32> = self.recent.clone();
            seen.sort_unstable();
            seen.dedup();
            for id in seen {
                if let Some(l) = logits.get_mut(id as usize) {
                    *l = if *l > 0.0 {
                        *l / cfg.repetition
                    } else {
                        *l * cfg.repetition
                    };
                }
            }
        }
        if cfg.presence != 0.0 || cfg.frequency != 0.0 {
            for (&id, &n) in &self.counts {
                if let Some(l) = logits.get_mut(id as usize) {
                    *l -= cfg.presence + cfg.frequency * n as f32;
                }
            }
        }
        for &(id, bias) in &cfg.logit_bias {
            if let Some(l) = logits.get_mut(id as usize) {
                *l += bias;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn neutral_settings_change_nothing() {
        let cfg = Penalties::default();
        assert!(cfg.is_neutral());
        let mut s = PenaltyState::new(&cfg, &[0, 1, 2]);
        s.push(1);
        let mut l = vec![1.0, -2.0, 3.0];
        s.apply(&mut l);
        assert_eq!(l, vec![1.0, -2.0, 3.0]);
    }

    #[test]
    fn repetition_penalty_scales_recent_tokens_toward_unlikely() {
        let cfg = Penalties {
            repetition: 2.0,
            repetition_context: 2,
            ..Default::default()
        };
        // Prompt [0, 1, 2] → only the last two (1, 2) are recent.
        let s = PenaltyState::new(&cfg, &[0, 1, 2]);
        let mut l = vec![4.0, 4.0, -4.0, 4.0];
        s.apply(&mut l);
        assert_eq!(l, vec![4.0, 2.0, -8.0, 4.0]);
    }

    #[test]
    fn repetition_window_slides_with_generated_tokens() {
        let cfg = Penalties {
            repetition: 2.0,
            repetition_context: 2,
            ..Default::default()
        };
        let mut s = PenaltyState::new(&cfg, &[0, 1]);
        s.push(3);
        let mut l = vec![4.0; 4];
        s.apply(&mut l);
        assert_eq!(l, vec![4.0, 2.0, 4.0, 2.0]);
    }

    #[test]
    fn presence_and_frequency_follow_openai() {
        let cfg = Penalties {
            presence: 0.5,
            frequency: 0.25,
            ..Default::default()
        };
        // Prompt tokens do not count for presence/frequency.
        let mut s = PenaltyState::new(&cfg, &[0]);
        s.push(1);
        s.push(1);
        s.push(2);
        let mut l = vec![1.0; 3];
        s.apply(&mut l);
        assert_eq!(l, vec![1.0, 1.0 - 0.5 - 0.5, 1.0 - 0.5 - 0.25]);
    }

    #[test]
    fn logit_bias_adds_and_ignores_out_of_range() {
        let cfg = Penalties {
            logit_bias: vec![(0, -100.0), (2, 5.0), (99, 1.0)],
            ..Default::default()
        };
        let s = PenaltyState::new(&cfg, &[]);
        let mut l = vec![1.0; 3];
        s.apply(&mut l);
        assert_eq!(l, vec![-99.0, 1.0, 6.0]);
        assert_eq!(cfg.max_biased_id(), Some(99));
    }
}

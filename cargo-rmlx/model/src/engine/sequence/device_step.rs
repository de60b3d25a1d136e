//! Greedy steps picked on the device ([`super::device_sampling`]): a sequence's own step
//! ([`DeviceStep`], queued with `async_eval` and read back when needed; pipelined alone) and
//! the bare steps of a batched pass ([`BatchPicks`]: every row's arg-max and its logit from
//! one evaluation, read back once for all rows), behind one [`Pending`] step.

use std::sync::{Arc, Mutex};

use mlx_rs::ops::indexing::IndexOp;
use mlx_rs::Array;

use super::super::generate::{GenerateOptions, Step};
use crate::diagnostic::{code, Diagnostic, Result};

/// A greedy step evaluated on the device: the arg-max token and the numbers of its
/// [`Step`], queued with `async_eval` and read back when needed. Same semantics as
/// `evidence::describe_step`: non-finite logits are counted and left out of the arg-max, the
/// log-sum-exp and `max_abs_logit`.
pub(super) struct DeviceStep {
    /// The arg-max token (`[]` uint32).
    pub(super) next: Array,
    top_ids: Array,
    top_logits: Array,
    chosen_logit: Array,
    lse: Array,
    max_abs: Array,
    non_finite: Array,
}

impl DeviceStep {
    pub(super) fn queue(logits: &Array, opts: &GenerateOptions) -> Result<Self> {
        use mlx_rs::ops::{argpartition_axis, indexing::argmax, select};
        let Masked {
            logits,
            finite,
            masked,
        } = Masked::new(logits)?;
        let vocab = logits.size();
        let next = argmax(&masked, None)?;
        if !evidence_wanted(opts) {
            return Self::bare(&logits, next);
        }
        let k = opts.top.clamp(1, vocab) as i32;
        let top_ids = if k == 1 {
            // The arg-max is the top-1: no partition over the vocabulary.
            next.reshape(&[1])?
        } else if k as usize == vocab {
            mlx_rs::ops::arange::<_, u32>(0, vocab as i32, None)?
        } else {
            argpartition_axis(masked.negative()?, k - 1, 0)?.index(..k)
        };
        let step = Self {
            top_logits: logits.take_axis(&top_ids, 0)?,
            chosen_logit: logits.take_axis(&next, 0)?,
            lse: masked.logsumexp(None)?,
            max_abs: select(&finite, logits.abs()?, Array::from_f32(0.0))?.max(None)?,
            non_finite: finite
                .logical_not()?
                .sum(None)?
                .as_dtype(mlx_rs::Dtype::Int32)?,
            next,
            top_ids,
        };
        step.queued()
    }

    /// The arg-max `next` and its logit only (no reductions over the vocabulary): the
    /// step of a caller that reads no evidence ([`GenerateOptions::evidence`]).
    fn bare(logits: &Array, next: Array) -> Result<Self> {
        let nan = || Array::from_f32(f32::NAN);
        let chosen = logits.take_axis(&next, 0)?;
        let step = Self {
            top_ids: next.reshape(&[1])?,
            top_logits: chosen.reshape(&[1])?,
            chosen_logit: chosen,
            lse: nan(),
            max_abs: nan(),
            non_finite: Array::from_int(0),
            next,
        };
        step.queued()
    }

    /// Queues every array [`Self::read`] touches, the views too: a view evaluated only at the
    /// read would be a new operation on the stream, behind the step pipelined after this
    /// one, and the read would wait for that step as well.
    fn queued(self) -> Result<Self> {
        mlx_rs::transforms::async_eval([
            &self.next,
            &self.top_ids,
            &self.top_logits,
            &self.chosen_logit,
            &self.lse,
            &self.max_abs,
            &self.non_finite,
        ])?;
        Ok(self)
    }

    pub(super) fn read(self) -> Result<Step> {
        let scalar = read_scalar;
        let id = scalar(&self.next)? as u32;
        let ids = self.top_ids.as_dtype(mlx_rs::Dtype::Uint32)?;
        let mut top: Vec<(u32, f32)> = ids
            .as_slice::<u32>()
            .iter()
            .copied()
            .zip(self.top_logits.as_slice::<f32>().iter().copied())
            .collect();
        top.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        let lse = scalar(&self.lse)?;
        Ok(Step {
            id,
            top_logprobs: top.iter().map(|(_, l)| l - lse).collect(),
            top,
            max_abs_logit: scalar(&self.max_abs)?,
            non_finite: scalar(&self.non_finite)? as usize,
            logprob: scalar(&self.chosen_logit)? - lse,
        })
    }
}

/// Logits as a device step reads them: cast to float32, which of them are finite, and the
/// copy the arg-max runs over (non-finite logits set to -inf, so they are never picked).
/// [`DeviceStep`] and [`BatchPicks`] both start here, so they pick alike.
struct Masked {
    logits: Array,
    finite: Array,
    masked: Array,
}

impl Masked {
    fn new(logits: &Array) -> Result<Self> {
        let logits = logits.as_dtype(mlx_rs::Dtype::Float32)?;
        let finite = logits.is_finite()?;
        let masked = mlx_rs::ops::select(&finite, &logits, Array::from_f32(f32::NEG_INFINITY))?;
        Ok(Self {
            logits,
            finite,
            masked,
        })
    }
}

/// The value of an evaluated (or queued) scalar as `f32`, read in its own dtype: a cast would
/// be a new operation, queued on the device behind the step pipelined after this one, so the
/// read would wait for that step too and the host could not build the next graph meanwhile.
/// `RMLX_STEP_SYNC=1` reads through such a cast instead (A/B timing of the old behaviour).
fn read_scalar(a: &Array) -> Result<f32> {
    use mlx_rs::Dtype;
    let cast = super::super::switches::step_sync();
    let value = match a.dtype() {
        _ if cast => a.try_item_cast::<f32>(),
        Dtype::Float32 => a.try_item_exact::<f32>(),
        Dtype::Uint32 => a.try_item_exact::<u32>().map(|v| v as f32),
        Dtype::Int32 => a.try_item_exact::<i32>().map(|v| v as f32),
        _ => a.try_item_cast::<f32>(),
    };
    value.map_err(|e| Diagnostic::error(code::Engine::Eval, format!("reading a step back: {e}")))
}

/// Whether a step computes its evidence (on the device or on the host, `super::evidence`):
/// the caller asks, or `RMLX_STEP_EVIDENCE=1`.
pub(super) fn evidence_wanted(opts: &GenerateOptions) -> bool {
    opts.evidence || super::super::switches::step_evidence()
}

/// The bare steps (arg-max and its logit, no evidence) of every row of one batched pass
/// `[B, vocab]`, evaluated together and read back to the host at the first read of any row:
/// one device round trip for the batch instead of one per row. Same values as
/// [`DeviceStep`]'s bare step on each row alone (non-finite logits left out of the arg-max).
pub(super) struct BatchPicks(Mutex<Picks>);

/// The picks of a batch: queued on the device, then read back (or failed to).
enum Picks {
    Queued { next: Array, chosen: Array },
    Read(std::result::Result<HostPicks, Diagnostic>),
}

/// Every row's token and its logit, on the host.
type HostPicks = (Vec<u32>, Vec<f32>);

impl BatchPicks {
    /// Queues the picks of every row of `logits` (`[B, vocab]`).
    pub(super) fn queue(logits: &Array) -> Result<Arc<Self>> {
        use mlx_rs::ops::{indexing::argmax_axis, indexing::take_along_axis};
        let Masked { logits, masked, .. } = Masked::new(logits)?;
        let rows = logits.shape()[0];
        let next = argmax_axis(&masked, -1, true)?;
        let chosen = take_along_axis(&logits, &next, -1)?.reshape(&[rows])?;
        let next = next.reshape(&[rows])?;
        mlx_rs::transforms::async_eval([&next, &chosen])?;
        Ok(Arc::new(Self(Mutex::new(Picks::Queued { next, chosen }))))
    }

    /// Row `row`'s step (the first call of any row waits for the device and reads all).
    pub(super) fn read(&self, row: usize) -> Result<Step> {
        let mut picks = self.0.lock().map_err(|_| {
            Diagnostic::error(
                code::Engine::Eval,
                "batched steps left inconsistent by an earlier panic (internal error)",
            )
        })?;
        if let Picks::Queued { next, chosen } = &*picks {
            *picks = Picks::Read(read_back(next, chosen));
        }
        let Picks::Read(host) = &*picks else {
            unreachable!("the picks were read back just above");
        };
        let (ids, logits) = host.as_ref().map_err(Clone::clone)?;
        match (ids.get(row), logits.get(row)) {
            (Some(&id), Some(&logit)) => Ok(bare_step(id, logit)),
            _ => Err(Diagnostic::error(
                code::Engine::Eval,
                format!(
                    "row {row} read from a batch of {} steps (internal error)",
                    ids.len()
                ),
            )),
        }
    }
}

/// Waits for the picks `next` (uint32) and `chosen` (float32) and copies them to the host.
fn read_back(next: &Array, chosen: &Array) -> std::result::Result<HostPicks, Diagnostic> {
    let failed = |e: &dyn std::fmt::Display| {
        Diagnostic::error(
            code::Engine::Eval,
            format!("reading batched steps back: {e}"),
        )
    };
    mlx_rs::transforms::eval([next, chosen]).map_err(|e| failed(&e))?;
    let ids = next.try_as_slice::<u32>().map_err(|e| failed(&e))?;
    let logits = chosen.try_as_slice::<f32>().map_err(|e| failed(&e))?;
    Ok((ids.to_vec(), logits.to_vec()))
}

/// Whether a batched pass's bare steps are picked together ([`BatchPicks`]), unless
/// `RMLX_BATCH_PICKS=0` (each row then queues its own [`DeviceStep`]: the A/B of the old
/// behaviour).
pub(super) fn batch_picks_enabled() -> bool {
    super::super::switches::batch_picks()
}

/// The [`Step`] of a bare step (a device step's, or a host-picked one without evidence): the
/// token and its logit, no evidence (the log-sum-exp, hence every log-probability, and
/// `max_abs_logit` are NaN).
pub(super) fn bare_step(id: u32, logit: f32) -> Step {
    Step {
        id,
        top: vec![(id, logit)],
        top_logprobs: vec![f32::NAN],
        max_abs_logit: f32::NAN,
        non_finite: 0,
        logprob: f32::NAN,
    }
}

/// A step queued on the device for one sequence: its own, or its row of a batch's picks.
pub(super) enum Pending {
    Own(DeviceStep),
    Row(Arc<BatchPicks>, usize),
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every array a queued step's `read` touches was queued with it, in both kinds of step:
    /// once the stream has finished, each holds its values. One left out (a view made for the
    /// read) would be evaluated only at the read — behind the step pipelined after this one,
    /// so the host would wait for that step too (round 11 measured 8.2 → 5.8 ms per decode
    /// step on an H100 when the bare step's two views were queued).
    #[test]
    fn a_queued_step_reads_only_what_it_queued() {
        let logits = Array::from_slice(&[0.5f32, 2.0, f32::NAN, 3.0, -1.0], &[5]);
        for evidence in [false, true] {
            for top in [1, 3] {
                let opts = GenerateOptions {
                    evidence,
                    top,
                    ..GenerateOptions::default()
                };
                let step = DeviceStep::queue(&logits, &opts).unwrap();
                crate::mlx::synchronize();
                let arrays = [
                    ("next", &step.next),
                    ("top_ids", &step.top_ids),
                    ("top_logits", &step.top_logits),
                    ("chosen_logit", &step.chosen_logit),
                    ("lse", &step.lse),
                    ("max_abs", &step.max_abs),
                    ("non_finite", &step.non_finite),
                ];
                for (name, a) in arrays {
                    assert!(
                        crate::mlx::host::is_available(a),
                        "{name} was not queued with the step (evidence {evidence}, top {top})"
                    );
                }
                assert_eq!(step.read().unwrap().id, 3);
            }
        }
    }

    /// Three rows with a tie, a non-finite maximum and a plain row: every row's batched pick
    /// equals the bare step of the row alone, token and logit.
    #[test]
    fn batched_picks_equal_each_rows_own_bare_step() {
        let rows: [[f32; 5]; 3] = [
            [0.5, 2.0, 2.0, -1.0, 0.0],
            [f32::INFINITY, 1.0, f32::NAN, 3.0, -2.0],
            [-4.0, -3.0, -5.0, -3.5, -8.0],
        ];
        let flat: Vec<f32> = rows.iter().flatten().copied().collect();
        let logits = Array::from_slice(&flat, &[3, 5]);
        let picks = BatchPicks::queue(&logits).unwrap();
        let opts = GenerateOptions {
            evidence: false,
            ..GenerateOptions::default()
        };
        for (b, row) in rows.iter().enumerate() {
            let alone = DeviceStep::queue(&Array::from_slice(row, &[5]), &opts)
                .unwrap()
                .read()
                .unwrap();
            let batched = picks.read(b).unwrap();
            assert_eq!(batched.id, alone.id, "row {b}");
            assert_eq!(batched.top, alone.top, "row {b}");
            assert_eq!(batched.non_finite, alone.non_finite, "row {b}");
        }
        assert_eq!(
            picks.read(0).unwrap().id,
            1,
            "a tie goes to the first index"
        );
        assert_eq!(
            picks.read(1).unwrap().id,
            3,
            "non-finite logits are left out"
        );
        assert!(
            picks.read(3).is_err(),
            "a row outside the batch is an error"
        );
    }
}

//! `generate` against the reference implementation (mlx-lm 0.32.2 on MLX's CPU backend) on
//! the same converted SmolLM2 directory: same prompt ids, same step-0 prediction and logit,
//! same greedy tokens (allowing for near-ties, see below).

use std::fmt::Write as _;
use std::sync::Arc;

use crate::support::{
    converted, generate, oracle, Generation, OracleDtype, Step, Variant, CHAT_PROMPT, ORACLE_STEPS,
    RAW_PROMPT,
};

/// How closely a run must follow mlx-lm's float32 run.
#[derive(Debug, Clone, Copy)]
pub struct Tolerance {
    /// Largest distance of our step-0 top-1 logit from mlx-lm's.
    pub step0_logit: LogitTolerance,
    /// `Some(margin)`: a divergence from mlx-lm's float32 tokens is accepted when our tokens
    /// equal mlx-lm's at the model's dtype, or only at a step whose float32 top-1/top-2
    /// margin is below `margin` (and only to its runner-up): there, rounding differences
    /// legitimately flip the choice. `None`: the tokens must equal the float32 run's.
    pub near_tie: Option<f64>,
}

#[derive(Debug, Clone, Copy)]
pub enum LogitTolerance {
    Absolute(f64),
    /// A fraction of |mlx-lm's logit|.
    Relative(f64),
}

impl LogitTolerance {
    fn allows(self, ours: f64, reference: f64) -> bool {
        let bound = match self {
            LogitTolerance::Absolute(t) => t,
            LogitTolerance::Relative(r) => r * reference.abs(),
        };
        (ours - reference).abs() <= bound
    }
}

/// Real checkpoints stored in bf16 (or quantized with bf16 scales) run in float32 by us:
/// SmolLM2 has chat prompts with margins of 0.05–0.11.
pub const REAL_MODEL: Tolerance = Tolerance {
    step0_logit: LogitTolerance::Absolute(0.5),
    near_tie: Some(NEAR_TIE_MARGIN),
};

const NEAR_TIE_MARGIN: f64 = 0.15;

fn check(variant: Variant, prompt: &str, chat: bool) {
    check_dir(&converted(variant), &variant.to_string(), prompt, chat);
}

/// [`check_dir_with`] at the [`REAL_MODEL`] tolerance.
pub fn check_dir(dir: &std::path::Path, name: &str, prompt: &str, chat: bool) {
    check_dir_with(dir, name, prompt, chat, REAL_MODEL);
}

/// Compares `generate` on `dir` with mlx-lm on the same directory (see the module docs).
pub fn check_dir_with(
    dir: &std::path::Path,
    name: &str,
    prompt: &str,
    chat: bool,
    tolerance: Tolerance,
) {
    let dir = dir.to_path_buf();
    let case = format!(
        "{name}, {} prompt {prompt:?}",
        if chat { "chat" } else { "raw" }
    );
    let ours = generate(&dir, prompt, chat, ORACLE_STEPS, &["--ignore-eos"]);
    let reference = oracle(&dir, prompt, chat, OracleDtype::Float32);

    // 1. The same prompt ids (template rendering, BOS, tokenizer).
    assert_eq!(
        ours.prompt_ids, reference.prompt_ids,
        "{case}: prompt ids differ from mlx-lm's (left: ours, right: mlx-lm)"
    );

    // 2. Our JSON is self-consistent and complete.
    assert_eq!(
        ours.generated_ids.len(),
        ORACLE_STEPS,
        "{case}: with --ignore-eos and --max-tokens {ORACLE_STEPS}, expected exactly \
         {ORACLE_STEPS} generated ids: {:?}",
        ours.generated_ids
    );
    assert_eq!(
        ours.steps.len(),
        ORACLE_STEPS,
        "{case}: expected one step per token"
    );
    for (i, step) in ours.steps.iter().enumerate() {
        assert!(
            step.top.len() >= 5,
            "{case}: step {i} has fewer than 5 top entries"
        );
        assert!(step.piece.is_some(), "{case}: step {i} has no `piece`");
        assert_eq!(
            step.id, ours.generated_ids[i],
            "{case}: steps[{i}].id != generated_ids[{i}]"
        );
        assert_eq!(
            step.rank(0).0,
            step.id,
            "{case}: greedy step {i} did not pick its own top-1"
        );
        assert!(
            step.top.iter().all(|(_, l)| l.is_some_and(f64::is_finite)),
            "{case}: step {i} has non-finite logits: {:?}",
            step.top
        );
    }

    // 3. Step 0: same prediction, logit within tolerance of the float32 reference.
    let (our_id, our_logit) = ours.steps[0].rank(0);
    let (ref_id, ref_logit) = reference.steps[0].rank(0);
    assert_eq!(
        our_id,
        ref_id,
        "{case}: step-0 top-1 differs from mlx-lm float32 (mlx-lm's top-1/top-2 margin \
         there: {:.3})\n{}",
        reference.steps[0].margin(),
        table(&ours, &reference)
    );
    assert!(
        tolerance.step0_logit.allows(our_logit, ref_logit),
        "{case}: step-0 top-1 logit {our_logit:.6} vs mlx-lm float32 {ref_logit:.6} \
         (tolerance {:?})\n{}",
        tolerance.step0_logit,
        table(&ours, &reference)
    );

    // 4. Greedy tokens: identical to mlx-lm float32, or (where the tolerance allows) to
    //    mlx-lm at the model's dtype, or diverging from float32 only at a near-tie.
    let ours_ids = &ours.generated_ids[..ORACLE_STEPS];
    let verdict = match tolerance.near_tie {
        Some(margin) => compare_tokens(ours_ids, &reference, margin, || {
            oracle(&dir, prompt, chat, OracleDtype::Model)
        }),
        None if reference.generated_ids.get(..ORACLE_STEPS) == Some(ours_ids) => {
            Ok(TokenMatch::Float32)
        }
        None => Err("greedy tokens differ from mlx-lm's float32 run".to_string()),
    };
    match verdict {
        Ok(TokenMatch::Float32) => assert_eq!(
            ours.text, reference.text,
            "{case}: same ids, but the decoded text differs from mlx-lm's"
        ),
        Ok(TokenMatch::ModelDtype) => eprintln!(
            "note: {case}: greedy tokens match mlx-lm at the model's dtype, not its float32 run"
        ),
        Ok(TokenMatch::NearTie { step, margin }) => eprintln!(
            "note: {case}: accepted a divergence from mlx-lm float32 at step {step}, a near-tie \
             (margin {margin:.3} < {:?}): ours {} vs {}",
            tolerance.near_tie, ours_ids[step], reference.generated_ids[step]
        ),
        Err(why) => panic!("{case}: {why}\n{}", table(&ours, &reference)),
    }
}

/// How our greedy tokens agree with the reference.
#[derive(Debug, PartialEq)]
enum TokenMatch {
    /// Identical to mlx-lm's float32 run.
    Float32,
    /// Identical to mlx-lm's run at the model's own dtype.
    ModelDtype,
    /// Identical to the float32 run up to `step`, where its top-1/top-2 margin is below
    /// the near-tie margin and we picked its runner-up.
    NearTie { step: usize, margin: f64 },
}

/// Judges `ours` against mlx-lm's float32 run; `model_dtype` (the reference at the model's
/// dtype, slow on CPU) is only run when needed.
fn compare_tokens(
    ours: &[u32],
    float32: &Generation,
    near_tie: f64,
    model_dtype: impl FnOnce() -> Arc<Generation>,
) -> Result<TokenMatch, String> {
    let n = ours.len();
    if float32.generated_ids.get(..n) == Some(ours) {
        return Ok(TokenMatch::Float32);
    }
    let model_dtype = model_dtype();
    if model_dtype.generated_ids.get(..n) == Some(ours) {
        return Ok(TokenMatch::ModelDtype);
    }
    let k = ours
        .iter()
        .zip(&float32.generated_ids)
        .position(|(a, b)| a != b)
        .unwrap_or(n.min(float32.generated_ids.len()));
    let Some(step) = float32.steps.get(k) else {
        return Err(format!(
            "mlx-lm's float32 run has only {} steps, ours {n}",
            float32.steps.len()
        ));
    };
    let margin = step.margin();
    let runner_up = step.rank(1).0;
    if margin < near_tie && ours[k] == runner_up {
        return Ok(TokenMatch::NearTie { step: k, margin });
    }
    Err(format!(
        "greedy tokens diverge from mlx-lm's float32 run at step {k} (ours {}, mlx-lm {}) \
         and from its model-dtype run. A divergence is accepted only at a near-tie: mlx-lm \
         float32's top-1/top-2 margin there must be < {near_tie} and we must pick its \
         runner-up; the margin is {margin:.3} and its runner-up is {runner_up}.\n\
         ours:               {ours:?}\nmlx-lm float32:     {:?}\nmlx-lm model dtype: {:?}",
        ours[k], float32.generated_ids[k], float32.generated_ids, model_dtype.generated_ids,
    ))
}

/// Step-by-step comparison for failure messages.
fn table(ours: &Generation, reference: &Generation) -> String {
    let mut out = String::from(
        "step | ours: top-1 (logit), top-2 | mlx-lm f32: top-1 (logit), top-2 (logit)\n",
    );
    for (i, (a, b)) in ours.steps.iter().zip(&reference.steps).enumerate() {
        let (a1, al1) = a.rank(0);
        let (a2, al2) = a.rank(1);
        let (b1, bl1) = b.rank(0);
        let (b2, bl2) = b.rank(1);
        let _ = writeln!(
            out,
            "{i:4} | {a1:6} ({al1:8.3}), {a2:6} ({al2:8.3}) | {b1:6} ({bl1:8.3}), {b2:6} ({bl2:8.3}){}",
            if a1 != b1 { "   <- differs" } else { "" }
        );
    }
    out
}

#[test]
fn bf16_chat_prompt_matches_mlx_lm() {
    check(Variant::Bf16, CHAT_PROMPT, true);
}

#[test]
fn bf16_raw_prompt_matches_mlx_lm() {
    check(Variant::Bf16, RAW_PROMPT, false);
}

#[test]
fn q4_chat_prompt_matches_mlx_lm() {
    check(Variant::Q4, CHAT_PROMPT, true);
}

#[test]
fn q4_raw_prompt_matches_mlx_lm() {
    check(Variant::Q4, RAW_PROMPT, false);
}

/// A prompt of about 150 tokens: the CPU prefill runs the host GEMM (`engine::gemm`) and the
/// blocked host attention (`attention::prefill`) over two whole blocks of 64 queries and a
/// partial one (the chat prompt's 37 rows make a single partial block).
const LONG_PROMPT: &str = "The river starts in the mountains, where snow melts every spring \
    and runs down through narrow valleys full of pine trees. Farmers in the lower valleys use \
    its water for their fields of wheat, barley and potatoes, and in summer children swim in \
    the slow bends near the villages. Further south the river grows wide and brown, carrying \
    boats loaded with wood, stone and grain towards the harbour city at its mouth. The city \
    was founded by traders more than a thousand years ago, and its old market square is still \
    surrounded by tall houses with painted fronts. Every year in autumn the people of the city \
    hold a festival on the water, and the most famous part of it is";

#[test]
fn q4_long_prompt_matches_mlx_lm() {
    check(Variant::Q4, LONG_PROMPT, false);
}

/// The near-tie rule itself, on made-up runs.
mod rule {
    use super::*;

    fn run(ids: &[u32], tops: &[[(u32, f64); 2]]) -> Generation {
        Generation {
            prompt_ids: vec![],
            generated_ids: ids.to_vec(),
            text: String::new(),
            steps: tops
                .iter()
                .zip(ids)
                .map(|(top, &id)| Step {
                    id,
                    piece: None,
                    top: top.iter().map(|&(i, l)| (i, Some(l))).collect(),
                })
                .collect(),
        }
    }

    fn float32() -> Generation {
        // Step 1 is a near-tie (margin 0.1), step 2 is not (margin 2).
        run(
            &[1, 2, 3],
            &[
                [(1, 10.0), (9, 8.0)],
                [(2, 10.0), (7, 9.9)],
                [(3, 10.0), (8, 8.0)],
            ],
        )
    }

    fn no_model_run() -> Arc<Generation> {
        Arc::new(run(&[], &[]))
    }

    #[test]
    fn identical_tokens_match() {
        assert_eq!(
            compare_tokens(&[1, 2, 3], &float32(), NEAR_TIE_MARGIN, || unreachable!()),
            Ok(TokenMatch::Float32)
        );
    }

    #[test]
    fn model_dtype_run_is_the_second_reference() {
        let model = || Arc::new(run(&[1, 5, 6], &[[(1, 1.0), (2, 0.0)]; 3]));
        assert_eq!(
            compare_tokens(&[1, 5, 6], &float32(), NEAR_TIE_MARGIN, model),
            Ok(TokenMatch::ModelDtype)
        );
    }

    #[test]
    fn divergence_to_the_runner_up_at_a_near_tie_is_accepted() {
        let verdict = compare_tokens(&[1, 7, 4], &float32(), NEAR_TIE_MARGIN, no_model_run);
        assert!(
            matches!(verdict, Ok(TokenMatch::NearTie { step: 1, .. })),
            "{verdict:?}"
        );
    }

    #[test]
    fn divergence_at_a_clear_margin_is_rejected() {
        let verdict = compare_tokens(&[1, 2, 8], &float32(), NEAR_TIE_MARGIN, no_model_run);
        assert!(
            verdict.as_ref().is_err_and(|e| e.contains("near-tie")),
            "{verdict:?}"
        );
        let verdict = compare_tokens(&[9, 2, 3], &float32(), NEAR_TIE_MARGIN, no_model_run);
        assert!(verdict.is_err(), "{verdict:?}");
    }

    #[test]
    fn divergence_to_another_token_at_a_near_tie_is_rejected() {
        let verdict = compare_tokens(&[1, 4, 3], &float32(), NEAR_TIE_MARGIN, no_model_run);
        assert!(verdict.is_err(), "{verdict:?}");
    }
}

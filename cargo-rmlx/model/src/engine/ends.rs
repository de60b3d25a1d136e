//! The two ends every decoder-only model shares: token embeddings (optionally scaled) on the
//! way in, the final RMSNorm and the LM head (separate, or the tied embedding table, with
//! optional final-logit softcapping) on the way out.

use mlx_rs::{Array, Dtype};

use super::layers::{softcap, Embedding, Linear, LoadCtx, RmsNorm};
use crate::diagnostic::Result;

/// Embeddings in, final norm and LM head out.
#[derive(Debug)]
pub struct Ends {
    embed: Embedding,
    norm: RmsNorm,
    lm_head: Option<Linear>,
    embed_scale: Option<f32>,
    softcap: Option<f32>,
}

impl Ends {
    /// Loads `model.embed_tokens`, `model.norm` and `lm_head` (unless `tied`; see
    /// [`LoadCtx::lm_head`]).
    pub fn load(
        ctx: &LoadCtx<'_>,
        norm_one_plus: bool,
        embed_scale: Option<f32>,
        tied: bool,
    ) -> Result<Self> {
        let c = ctx.config;
        Ok(Self {
            embed: ctx.embedding("model.embed_tokens", c.vocab_size, c.hidden_size)?,
            norm: ctx.rms_norm("model.norm", c.hidden_size, c.rms_norm_eps, norm_one_plus)?,
            lm_head: ctx.lm_head("lm_head", tied)?,
            embed_scale,
            softcap: None,
        })
    }

    /// The same ends with the logits softcapped to `cap` (`cap · tanh(logits / cap)`, in the
    /// compute dtype, before the float32 cast), when given (Gemma 4).
    pub fn with_softcap(self, cap: Option<f32>) -> Self {
        Self {
            softcap: cap,
            ..self
        }
    }

    /// `ids` (`[B, L]` int32) → scaled embeddings `[B, L, hidden]`.
    pub fn embed(&self, ids: &Array) -> Result<Array> {
        let x = self.embed.forward(ids)?;
        match self.embed_scale {
            Some(scale) => Ok(x.multiply(Array::from_f32(scale).as_dtype(x.dtype())?)?),
            None => Ok(x),
        }
    }

    /// Final norm and LM head → float32 logits.
    pub fn logits(&self, x: &Array) -> Result<Array> {
        let x = self.norm.forward(x)?;
        let logits = match &self.lm_head {
            Some(head) => head.forward(&x)?,
            None => self.embed.as_linear(&x)?,
        };
        let logits = match self.softcap {
            Some(cap) => softcap(&logits, cap)?,
            None => logits,
        };
        Ok(logits.as_dtype(Dtype::Float32)?)
    }
}

//! `TimeEmbedding`: sinusoidal features of the step t (cosine first, as the original), then a
//! two-layer MLP. Only the inner module of the original's `time_emb` sequential lives here; the
//! two outer linears belong to [`super::Dit`].

use tch::nn::{self, Module};
use tch::{Kind, Tensor};

/// Width of the sinusoidal features (fixed in the original, independent of `emb_size`).
pub const TIME_FEATURES: i64 = 256;
/// Longest period of the sinusoids, as in "Attention Is All You Need" §3.5.
const MAX_FREQ_PERIOD: f64 = 10_000.0;

#[derive(Debug)]
pub struct TimeEmbedding {
    mlp_0: nn::Linear,
    mlp_2: nn::Linear,
}

impl TimeEmbedding {
    pub fn new(vs: nn::Path, emb_size: i64) -> Self {
        let mlp = &vs / "mlp";
        Self {
            mlp_0: super::init::linear(&mlp / 0, TIME_FEATURES, emb_size),
            mlp_2: super::init::linear(&mlp / 2, emb_size, emb_size),
        }
    }

    /// The 256 sinusoidal features of integer steps `t` (B) → (B, 256).
    pub fn features(t: &Tensor) -> Tensor {
        let half = TIME_FEATURES / 2;
        // f_i = exp(i · (−ln 10000 / half)), computed in float32 the way the original does.
        let freqs =
            (Tensor::arange(half, (Kind::Float, t.device())) * (-MAX_FREQ_PERIOD.ln() / half as f64)).exp(); // (half)
        let angles = t.to_kind(Kind::Float).unsqueeze(-1) * freqs.unsqueeze(0); // (B, half)
        Tensor::cat(&[angles.cos(), angles.sin()], -1) // (B, 256), cosine first
    }
}

impl Module for TimeEmbedding {
    fn forward(&self, t: &Tensor) -> Tensor {
        let h = Self::features(t); // (B, 256)
        self.mlp_2.forward(&self.mlp_0.forward(&h).relu()) // (B, E)
    }
}

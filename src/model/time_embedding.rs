//! `TimeEmbedding`: sinusoidal features of the step t (cosine first, as the original), then a
//! two-layer MLP. Only the inner module of the original's `time_emb` sequential lives here; the
//! two outer linears belong to [`super::original::Original`]. LightningDiT's `t_embedder` is
//! the same module with SiLU in place of ReLU and its own rounding of the frequencies
//! ([`Flavor`]), fed the flow time t in [0, 1] unscaled.

use tch::nn::{self, Module};
use tch::{Kind, Tensor};

/// Width of the sinusoidal features (fixed in the original, independent of `emb_size`).
pub const TIME_FEATURES: i64 = 256;
/// Longest period of the sinusoids, as in "Attention Is All You Need" §3.5.
const MAX_FREQ_PERIOD: f64 = 10_000.0;

/// Whose time embedding: the activation between the two linears, and how the frequencies are
/// rounded (each as its code computes them, so the features match bit for bit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// ReLU; f_i = exp(i · (−ln 10⁴ / half)).
    Original,
    /// SiLU; f_i = exp((−ln 10⁴ · i) / half) (DiT's and LightningDiT's `TimestepEmbedder`).
    Lightning,
}

#[derive(Debug)]
pub struct TimeEmbedding {
    mlp_0: nn::Linear,
    mlp_2: nn::Linear,
    flavor: Flavor,
}

impl TimeEmbedding {
    /// The original's module, initialised as PyTorch's `nn.Linear`s.
    pub fn new(vs: nn::Path, emb_size: i64) -> Self {
        let mlp = &vs / "mlp";
        Self {
            mlp_0: super::init::linear(&mlp / 0, TIME_FEATURES, emb_size),
            mlp_2: super::init::linear(&mlp / 2, emb_size, emb_size),
            flavor: Flavor::Original,
        }
    }

    /// LightningDiT's `t_embedder` from its two linears.
    pub fn lightning(mlp_0: nn::Linear, mlp_2: nn::Linear) -> Self {
        Self { mlp_0, mlp_2, flavor: Flavor::Lightning }
    }

    /// The 256 sinusoidal features of steps (or flow times) `t` (B) → (B, 256), as the
    /// original computes them.
    pub fn features(t: &Tensor) -> Tensor {
        Self::features_of(t, Flavor::Original)
    }

    fn features_of(t: &Tensor, flavor: Flavor) -> Tensor {
        let half = TIME_FEATURES / 2;
        let i = Tensor::arange(half, (Kind::Float, t.device()));
        let freqs = match flavor {
            Flavor::Original => (i * (-MAX_FREQ_PERIOD.ln() / half as f64)).exp(),
            Flavor::Lightning => (i * -MAX_FREQ_PERIOD.ln() / half as f64).exp(),
        }; // (half)
        let angles = t.to_kind(Kind::Float).unsqueeze(-1) * freqs.unsqueeze(0); // (B, half)
        Tensor::cat(&[angles.cos(), angles.sin()], -1) // (B, 256), cosine first
    }
}

impl Module for TimeEmbedding {
    fn forward(&self, t: &Tensor) -> Tensor {
        let h = self.mlp_0.forward(&Self::features_of(t, self.flavor)); // (B, E)
        let h = match self.flavor {
            Flavor::Original => h.relu(),
            Flavor::Lightning => h.silu(),
        };
        self.mlp_2.forward(&h) // (B, E)
    }
}

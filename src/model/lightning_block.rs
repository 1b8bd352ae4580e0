//! `LightningDiTBlock` (Yao et al. 2025, `models/lightningdit.py`): DiT's adaLN-Zero block
//! (Peebles & Xie 2023) with LightningDiT's switches: RMSNorm in place of LayerNorm, QK-norm,
//! 2-D RoPE on queries and keys, a SwiGLU feed-forward, and adaLN without shifts. Heads are
//! `emb_size / head` wide and scores are scaled by 1/sqrt(head width), as in DiT.

use tch::nn::{self, Module};
use tch::{Kind, Tensor};

use super::compute::Compute;
use super::dit_block::{cast, linear};
use super::rope::Rope;
use crate::config::ModelConfig;

/// LightningDiT's LayerNorms have no weights and eps 1e-6; its RMSNorm has a weight.
pub(super) const NORM_EPS: f64 = 1e-6;
/// eps of the QK-norm when it is a LayerNorm (timm's default `nn.LayerNorm`).
const QK_LAYER_NORM_EPS: f64 = 1e-5;

/// A normalisation over the last dimension, computed in float32.
#[derive(Debug)]
pub(super) enum Norm {
    /// LayerNorm; with `affine`, a weight and a bias (QK-norm), else none.
    Layer { affine: Option<(Tensor, Tensor)>, eps: f64 },
    /// RMSNorm: x / sqrt(mean(x²) + eps) · weight.
    Rms { weight: Tensor },
}

impl Norm {
    /// The block norms (and `final_layer.norm_final`): RMSNorm with a weight when `rms`, else
    /// a LayerNorm without one.
    pub(super) fn block(vs: nn::Path, width: i64, rms: bool) -> Self {
        if rms {
            Self::Rms { weight: vs.ones("weight", &[width]) }
        } else {
            Self::Layer { affine: None, eps: NORM_EPS }
        }
    }

    /// A QK-norm: RMSNorm with `use_rmsnorm`, else timm's LayerNorm (weight and bias, eps 1e-5).
    fn qk(vs: nn::Path, width: i64, rms: bool) -> Self {
        if rms {
            Self::Rms { weight: vs.ones("weight", &[width]) }
        } else {
            let affine = (vs.ones("weight", &[width]), vs.zeros("bias", &[width]));
            Self::Layer { affine: Some(affine), eps: QK_LAYER_NORM_EPS }
        }
    }

    /// x (…, W) in its own kind → the same kind; the statistics in float32.
    pub(super) fn forward(&self, x: &Tensor) -> Tensor {
        let kind = x.kind();
        let xf = cast(x, Kind::Float);
        let width = *x.size().last().expect("a norm's input has a last dimension");
        let out = match self {
            Self::Layer { affine, eps } => {
                let (w, b) = affine.as_ref().map(|(w, b)| (w, b)).unzip();
                xf.layer_norm([width], w, b, *eps, false)
            }
            Self::Rms { weight } => {
                let rms = (xf.square().mean_dim(-1, true, Kind::Float) + NORM_EPS).rsqrt();
                return cast(&(xf * rms), kind) * cast(weight, kind);
            }
        };
        cast(&out, kind)
    }
}

/// The feed-forward: timm's `Mlp` with tanh-approximated GELU (`fc1`, `fc2`), or SwiGLU
/// (`w12`, `w3`).
#[derive(Debug)]
enum FeedForward {
    Gelu { fc1: nn::Linear, fc2: nn::Linear },
    SwiGlu { w12: nn::Linear, w3: nn::Linear },
}

impl FeedForward {
    fn new(vs: nn::Path, cfg: &ModelConfig) -> Self {
        let e = cfg.emb_size;
        let hidden = (e as f64 * cfg.mlp_ratio) as i64; // int(hidden_size * mlp_ratio)
        if cfg.use_swiglu {
            let h = (2.0 / 3.0 * hidden as f64) as i64; // int(2/3 * mlp_hidden_dim)
            Self::SwiGlu { w12: xavier(&vs / "w12", e, 2 * h), w3: xavier(&vs / "w3", h, e) }
        } else {
            Self::Gelu { fc1: xavier(&vs / "fc1", e, hidden), fc2: xavier(&vs / "fc2", hidden, e) }
        }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        match self {
            Self::Gelu { fc1, fc2 } => linear(fc2, &linear(fc1, x).gelu("tanh")),
            Self::SwiGlu { w12, w3 } => {
                let x12 = linear(w12, x).chunk(2, -1);
                linear(w3, &(x12[0].silu() * &x12[1]))
            }
        }
    }
}

/// `nn.Linear` as LightningDiT initialises it: Xavier-uniform weight, zero bias.
pub(super) fn xavier(vs: nn::Path, in_dim: i64, out_dim: i64) -> nn::Linear {
    let bound = (6.0 / (in_dim + out_dim) as f64).sqrt();
    let config = nn::LinearConfig {
        ws_init: nn::Init::Uniform { lo: -bound, up: bound },
        bs_init: Some(nn::Init::Const(0.0)),
        bias: true,
    };
    nn::linear(vs, in_dim, out_dim, config)
}

/// A linear initialised to zero (adaLN-Zero's modulation and the final projection).
pub(super) fn zero_linear(vs: nn::Path, in_dim: i64, out_dim: i64) -> nn::Linear {
    let config =
        nn::LinearConfig { ws_init: nn::Init::Const(0.0), bs_init: Some(nn::Init::Const(0.0)), bias: true };
    nn::linear(vs, in_dim, out_dim, config)
}

/// x·(1 + scale) + shift, each (B, E) broadcast over the tokens; no shift under `wo_shift`.
/// One fused multiply-add over the tokens where there is a shift.
pub(super) fn modulate(x: &Tensor, shift: Option<&Tensor>, scale: &Tensor) -> Tensor {
    let factor = scale.unsqueeze(1) + 1.0;
    match shift {
        Some(shift) => shift.unsqueeze(1).addcmul(x, &factor),
        None => x * factor,
    }
}

#[derive(Debug)]
pub struct LightningBlock {
    norm1: Norm,
    norm2: Norm,
    qkv: nn::Linear,
    q_norm: Option<Norm>,
    k_norm: Option<Norm>,
    proj: nn::Linear,
    mlp: FeedForward,
    /// `adaLN_modulation.1`: (B, E) → 6·E, or 4·E without shifts.
    modulation: nn::Linear,
    wo_shift: bool,
    head: i64,
}

impl LightningBlock {
    pub fn new(vs: nn::Path, cfg: &ModelConfig) -> Self {
        let (e, hd) = (cfg.emb_size, cfg.head_width());
        let attn = &vs / "attn";
        let qk = |name: &str| cfg.use_qknorm.then(|| Norm::qk(&attn / name, hd, cfg.use_rmsnorm));
        let chunks = if cfg.wo_shift { 4 } else { 6 };
        Self {
            norm1: Norm::block(&vs / "norm1", e, cfg.use_rmsnorm),
            norm2: Norm::block(&vs / "norm2", e, cfg.use_rmsnorm),
            qkv: xavier(&attn / "qkv", e, 3 * e),
            q_norm: qk("q_norm"),
            k_norm: qk("k_norm"),
            proj: xavier(&attn / "proj", e, e),
            mlp: FeedForward::new(&vs / "mlp", cfg),
            modulation: zero_linear(&vs / "adaLN_modulation" / 1, e, chunks * e),
            wo_shift: cfg.wo_shift,
            head: cfg.head,
        }
    }

    /// x (B, L, E) float32, cond (B, E) float32 → (B, L, E) float32; the token products in
    /// `how.dtype`, attention with `how.kernel`, RoPE from `rope` when the model has it.
    pub fn forward(&self, x: &Tensor, cond: &Tensor, how: &Compute, rope: Option<&Rope>) -> Tensor {
        let m = self.modulation.forward(&cond.silu()).chunk(if self.wo_shift { 4 } else { 6 }, 1);
        let (shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp) = if self.wo_shift {
            (None, &m[0], &m[1], None, &m[2], &m[3])
        } else {
            (Some(&m[0]), &m[1], &m[2], Some(&m[3]), &m[4], &m[5])
        };
        let h = cast(&modulate(&self.norm1.forward(x), shift_msa, scale_msa), how.dtype);
        // x + gate·y, one fused multiply-add each.
        let x = x.addcmul(&gate_msa.unsqueeze(1), &cast(&self.attention(&h, how, rope), Kind::Float));
        let h = cast(&modulate(&self.norm2.forward(&x), shift_mlp, scale_mlp), how.dtype);
        x.addcmul(&gate_mlp.unsqueeze(1), &cast(&self.mlp.forward(&h), Kind::Float))
    }

    /// Multi-head self-attention of h (B, L, E) in its own kind.
    fn attention(&self, h: &Tensor, how: &Compute, rope: Option<&Rope>) -> Tensor {
        let (b, l, e) = h.size3().expect("a block's input is (B, L, E)");
        let hd = e / self.head;
        // q, k and v (3, B, H, L, hd) by one unbind, whose backward is one stack, rather than three
        // selects, each of whose backward passes writes a zeroed tensor the size of all three.
        let qkv = linear(&self.qkv, h).reshape([b, l, 3, self.head, hd]).permute([2, 0, 3, 1, 4]);
        let [mut q, mut k, v]: [Tensor; 3] = qkv.unbind(0).try_into().expect("q, k and v");
        if let (Some(qn), Some(kn)) = (&self.q_norm, &self.k_norm) {
            (q, k) = (qn.forward(&q), kn.forward(&k));
        }
        if let Some(rope) = rope {
            (q, k) = (rope.apply(&q), rope.apply(&k));
        }
        let o = how.kernel.attend(&q, &k, &v, (hd as f64).sqrt()); // (B, H, L, hd)
        linear(&self.proj, &o.transpose(1, 2).reshape([b, l, e]))
    }
}

//! LightningDiT's model (Yao et al. 2025, `models/lightningdit.py`, MIT): a conv patch embedding
//! straight to tokens, fixed 2-D sine-cosine positions (MAE's), optional 2-D RoPE, DiT's time
//! and label embedders, [`LightningBlock`]s and DiT's final layer. Every parameter and buffer
//! has the published name (`x_embedder.proj`, `blocks.0.attn.qkv`, `feat_rope.freqs_cos`, …),
//! so the state_dicts exchange strictly; with every switch off and `learn_sigma` on it is
//! facebookresearch/DiT's model. Initialised as the published `initialize_weights` does
//! (Xavier-uniform linears, zero adaLN and output), not draw for draw.

use tch::nn::{self, Module};
use tch::{Kind, Tensor};

use super::compute::Compute;
use super::dit_block::{cast, linear};
use super::lightning_block::{modulate, xavier, zero_linear, LightningBlock, Norm};
use super::original::unpatchify;
use super::rope::Rope;
use super::time_embedding::{TimeEmbedding, TIME_FEATURES};
use crate::config::ModelConfig;

#[derive(Debug)]
pub struct Lightning {
    x_embedder: nn::Conv2D,
    pos_embed: Tensor,
    t_embedder: TimeEmbedding,
    y_embedder: nn::Embedding,
    feat_rope: Option<Rope>,
    blocks: Vec<LightningBlock>,
    norm_final: Norm,
    final_linear: nn::Linear,
    final_modulation: nn::Linear,
    cfg: ModelConfig,
}

impl Lightning {
    /// LightningDiT for `cfg`, the DiT's own arguments ([`ModelConfig::dit`]).
    pub fn new(vs: &nn::Path, cfg: &ModelConfig) -> Self {
        let (c, p, e, side) = (cfg.channel, cfg.patch_size, cfg.emb_size, cfg.patches_per_side());
        // Xavier on the kernel seen as a (E, C·p²) matrix, as the published init does.
        let bound = (6.0 / (c * p * p + e) as f64).sqrt();
        let conv = nn::ConvConfig {
            stride: p,
            ws_init: nn::Init::Uniform { lo: -bound, up: bound },
            bs_init: nn::Init::Const(0.0),
            ..Default::default()
        };
        let pos_embed = vs.zeros_no_train("pos_embed", &[1, side * side, e]);
        tch::no_grad(|| pos_embed.shallow_clone().copy_(&sincos_positions(e, side).unsqueeze(0)));
        let t = vs / "t_embedder" / "mlp";
        let normal = |vs: nn::Path, i: i64, o: i64| {
            let l = xavier(vs, i, o);
            tch::no_grad(|| {
                let _ = l.ws.shallow_clone().normal_(0.0, 0.02);
            });
            l
        };
        let table =
            nn::EmbeddingConfig { ws_init: nn::Init::Randn { mean: 0.0, stdev: 0.02 }, ..Default::default() };
        let out_channels = if cfg.learn_sigma { 2 * c } else { c };
        let fin = vs / "final_layer";
        Self {
            x_embedder: nn::conv2d(vs / "x_embedder" / "proj", c, e, p, conv),
            pos_embed,
            t_embedder: TimeEmbedding::lightning(normal(&t / 0, TIME_FEATURES, e), normal(&t / 2, e, e)),
            y_embedder: nn::embedding(vs / "y_embedder" / "embedding_table", cfg.label_rows(), e, table),
            feat_rope: cfg.use_rope.then(|| Rope::new(vs / "feat_rope", side, cfg.head_width())),
            blocks: (0..cfg.dit_num).map(|i| LightningBlock::new(vs / "blocks" / i, cfg)).collect(),
            norm_final: Norm::block(&fin / "norm_final", e, cfg.use_rmsnorm),
            final_linear: zero_linear(&fin / "linear", e, p * p * out_channels),
            final_modulation: zero_linear(&fin / "adaLN_modulation" / 1, e, 2 * e),
            cfg: cfg.clone(),
        }
    }

    /// The label table (rows, E).
    pub(super) fn label_table(&self) -> &Tensor {
        &self.y_embedder.ws
    }

    /// The tokens (B, L, E) of x (B, C, I, I) and the conditioning (B, E) of labels y and
    /// times t (B, float; DDPM's integer steps are taken as they are).
    pub(super) fn stem(&self, x: &Tensor, y: &Tensor, t: &Tensor) -> (Tensor, Tensor) {
        let tokens = self.x_embedder.forward(x).flatten(2, 3).transpose(1, 2) + &self.pos_embed; // (B, L, E)
        let cond = self.t_embedder.forward(t) + self.y_embedder.forward(&y.to_kind(Kind::Int64)); // (B, E)
        (tokens, cond)
    }

    pub(super) fn block(&self, i: usize, x: &Tensor, cond: &Tensor, how: &Compute) -> Tensor {
        self.blocks[i].forward(x, cond, how, self.feat_rope.as_ref())
    }

    pub(super) fn depth(&self) -> usize {
        self.blocks.len()
    }

    /// The final layer on the blocks' output (B, L, E) → (B, C, I, I), the learned-Σ half dropped.
    pub(super) fn head(&self, x: &Tensor, cond: &Tensor, how: &Compute) -> Tensor {
        let m = self.final_modulation.forward(&cond.silu()).chunk(2, 1);
        let h = cast(&modulate(&self.norm_final.forward(x), Some(&m[0]), &m[1]), how.dtype);
        let out = cast(&linear(&self.final_linear, &h), Kind::Float); // (B, L, p²·C_out)
        let c = self.cfg.channel;
        let images = unpatchify(&out, &self.cfg, if self.cfg.learn_sigma { 2 * c } else { c });
        if self.cfg.learn_sigma {
            images.narrow(1, 0, c)
        } else {
            images
        }
    }
}

/// MAE's fixed 2-D sine-cosine positions (E, computed in float64 and stored as float32) for a
/// `side` × `side` grid, tokens row-major: the first half of a token's width encodes its column,
/// the second its row (the published code's meshgrid puts the column first), each half as
/// [sin(pos·ω), cos(pos·ω)] with ω_k = 10000^(−k/(E/4)).
fn sincos_positions(e: i64, side: i64) -> Tensor {
    let quarter = e / 4;
    let one_axis = |pos: i64| -> Vec<f64> {
        let angles = (0..quarter).map(|k| pos as f64 / 10_000f64.powf(k as f64 / quarter as f64));
        let (s, c): (Vec<f64>, Vec<f64>) = angles.map(|a| (a.sin(), a.cos())).unzip();
        [s, c].concat()
    };
    let values: Vec<f32> = (0..side * side)
        .flat_map(|m| [one_axis(m % side), one_axis(m / side)].concat())
        .map(|v| v as f32)
        .collect();
    Tensor::from_slice(&values).view([side * side, e])
}

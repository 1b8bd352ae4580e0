//! The original's `DIT` (docs/ORIGINAL.md §3): patchify, time and label conditioning, the block
//! stack, and the original's unpatchify.

use tch::nn::{self, Module};
use tch::{Kind, Tensor};

use super::compute::Compute;
use super::dit_block::{cast, linear, MODULATION};
use super::init;
use super::{DiTBlock, TimeEmbedding};
use crate::config::ModelConfig;

#[derive(Debug)]
pub struct Original {
    conv: nn::Conv2D,
    patch_emb: nn::Linear,
    position_emb: Tensor,
    time_emb: TimeEmbedding,
    time_emb_1: nn::Linear,
    time_emb_3: nn::Linear,
    label_emb: nn::Embedding,
    model_list: Vec<DiTBlock>,
    ln: nn::LayerNorm,
    linear: nn::Linear,
    cfg: ModelConfig,
}

impl Original {
    /// The original's model for `cfg`, the DiT's own arguments ([`ModelConfig::dit`]).
    pub fn new(vs: &nn::Path, cfg: &ModelConfig) -> Self {
        let (c, p, e) = (cfg.channel, cfg.patch_size, cfg.emb_size);
        let patch_dim = c * p * p;
        let time_emb = vs / "time_emb";
        let blocks = vs / "model_list";
        Self {
            // Created in the original's order, which is the order of the random draws.
            conv: init::patchify_conv(vs / "conv", c, patch_dim, p),
            patch_emb: init::linear(vs / "patch_emb", patch_dim, e),
            // torch.rand: uniform in [0, 1), as the original initialises it.
            position_emb: vs.var(
                "position_emb",
                &[1, cfg.tokens(), e],
                nn::Init::Uniform { lo: 0.0, up: 1.0 },
            ),
            time_emb: TimeEmbedding::new(&time_emb / 0, e),
            time_emb_1: init::linear(&time_emb / 1, e, e),
            time_emb_3: init::linear(&time_emb / 3, e, e),
            label_emb: nn::embedding(vs / "label_emb", cfg.label_rows(), e, Default::default()),
            model_list: (0..cfg.dit_num).map(|i| DiTBlock::new(&blocks / i, cfg)).collect(),
            ln: nn::layer_norm(vs / "ln", vec![e], Default::default()),
            linear: init::linear(vs / "linear", e, patch_dim),
            cfg: cfg.clone(),
        }
    }

    /// The label table (rows, E).
    pub(super) fn label_table(&self) -> &Tensor {
        &self.label_emb.ws
    }

    /// Block `i` on tokens x (B, L, E) under the conditioning (B, E).
    pub(super) fn block(&self, i: usize, x: &Tensor, cond: &Tensor, how: &Compute) -> Tensor {
        self.model_list[i].forward(x, cond, how)
    }

    pub(super) fn depth(&self) -> usize {
        self.model_list.len()
    }

    /// Everything before the blocks: the tokens (B, L, E) of x (B, C, I, I) and the
    /// conditioning (B, E) of labels y and steps t.
    pub(super) fn stem(&self, x: &Tensor, y: &Tensor, t: &Tensor) -> (Tensor, Tensor) {
        let b = x.size()[0];
        let (c, p) = (self.cfg.channel, self.cfg.patch_size);
        let l = self.cfg.tokens();

        let t_emb = self.time_emb.forward(t); // (B, E)
        let t_emb = self.time_emb_3.forward(&self.time_emb_1.forward(&t_emb).relu()); // (B, E)
        let cond = self.label_emb.forward(&y.to_kind(Kind::Int64)) + t_emb; // (B, E)

        let x = self.conv.forward(x); // (B, C·p², P, P)
        let x = x.permute([0, 2, 3, 1]).reshape([b, l, c * p * p]); // (B, L, C·p²), row-major patches
        (self.patch_emb.forward(&x) + &self.position_emb, cond) // (B, L, E)
    }

    /// Everything after the blocks: their output (B, L, E) → predicted noise (B, C, I, I).
    pub(super) fn head(&self, x: &Tensor, how: &Compute) -> Tensor {
        let x = cast(&linear(&self.linear, &cast(&self.ln.forward(x), how.dtype)), Kind::Float); // (B, L, C·p²)
                                                                                                 // This is not the inverse of the conv's channel order; keep it.
        unpatchify(&x, &self.cfg, self.cfg.channel)
    }
}

/// Tokens (B, L, p²·C) → images (B, C, I, I) as the original and DiT write it: channel fastest
/// within a patch (`nhwpqc -> nchpwq`).
pub(super) fn unpatchify(x: &Tensor, cfg: &ModelConfig, c: i64) -> Tensor {
    let b = x.size()[0];
    let (p, pp) = (cfg.patch_size, cfg.patches_per_side());
    x.reshape([b, pp, pp, p, p, c])
        .permute([0, 5, 1, 3, 2, 4]) // (B, C, P, p, P, p)
        .reshape([b, c, pp * p, pp * p]) // (B, C, I, I)
}

/// The model as PyTorch prints it (`print(model)` in the original's train.py).
impl std::fmt::Display for Original {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let c = &self.cfg;
        let (e, p, pd, he) = (c.emb_size, c.patch_size, c.channel * c.patch_size.pow(2), c.head * c.emb_size);
        let lin = |i: i64, o: i64| format!("Linear(in_features={i}, out_features={o}, bias=True)");
        let ln = format!("LayerNorm(({e},), eps=1e-05, elementwise_affine=True)");
        writeln!(f, "DIT(")?;
        writeln!(f, "  (conv): Conv2d({}, {pd}, kernel_size=({p}, {p}), stride=({p}, {p}))", c.channel)?;
        writeln!(f, "  (patch_emb): {}", lin(pd, e))?;
        writeln!(f, "  (time_emb): Sequential(")?;
        writeln!(f, "    (0): TimeEmbedding(")?;
        writeln!(f, "      (mlp): Sequential(")?;
        writeln!(f, "        (0): {}", lin(super::time_embedding::TIME_FEATURES, e))?;
        writeln!(f, "        (1): ReLU()")?;
        writeln!(f, "        (2): {}", lin(e, e))?;
        writeln!(f, "      )\n    )")?;
        writeln!(f, "    (1): {}\n    (2): ReLU()\n    (3): {}\n  )", lin(e, e), lin(e, e))?;
        writeln!(f, "  (label_emb): Embedding({}, {e})", c.label_rows())?;
        writeln!(f, "  (model_list): ModuleList(")?;
        writeln!(f, "    (0-{}): {} x DiTBlock(", c.dit_num - 1, c.dit_num)?;
        for m in MODULATION {
            writeln!(f, "      ({m}): {}", lin(e, e))?;
        }
        writeln!(f, "      (ln_1): {ln}")?;
        for m in ["q_emb", "k_emb", "v_emb"] {
            writeln!(f, "      ({m}): {}", lin(e, he))?;
        }
        writeln!(f, "      (linear_back): {}", lin(he, e))?;
        writeln!(f, "      (ln_2): {ln}")?;
        writeln!(f, "      (feed_forward): Sequential(")?;
        writeln!(
            f,
            "        (0): {}\n        (1): ReLU()\n        (2): {}\n      )",
            lin(e, 4 * e),
            lin(4 * e, e)
        )?;
        writeln!(f, "    )\n  )")?;
        writeln!(f, "  (ln): {ln}")?;
        writeln!(f, "  (linear): {}", lin(e, pd))?;
        write!(f, ")")
    }
}

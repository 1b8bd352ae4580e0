//! `Dit`: the one model interface the trainer, the samplers and the checkpoints see, whichever
//! network `model.arch` names (the original's [`Original`] or LightningDiT's [`Lightning`]),
//! with how it computes ([`Compute`]) kept beside it. Each network is a stem (tokens and
//! conditioning), a stack of blocks and a head; activation checkpointing
//! (`super::checkpointing`) works on that split alone.

use tch::{nn, Tensor};

use super::compute::Compute;
use super::lightning::Lightning;
use super::original::Original;
use crate::config::{Arch, ModelConfig, RuntimeConfig};

#[derive(Debug)]
enum Net {
    Original(Original),
    Lightning(Lightning),
}

#[derive(Debug)]
pub struct Dit {
    net: Net,
    cfg: ModelConfig,
    device: tch::Device,
    compute: Compute,
}

impl Dit {
    /// The model `cfg.arch` names, under the default runtime (`attention: auto`, fp32); see
    /// [`Dit::set_runtime`]. With `cfg.autoencoder` it is built on the latent's shape
    /// ([`ModelConfig::dit`]), which is then what [`Dit::config`] returns.
    pub fn new(vs: &nn::Path, cfg: &ModelConfig) -> Self {
        let cfg = cfg.dit();
        let net = match cfg.arch {
            Arch::Original => Net::Original(Original::new(vs, &cfg)),
            Arch::Lightning => Net::Lightning(Lightning::new(vs, &cfg)),
        };
        let compute = Compute::resolve(&RuntimeConfig::default(), vs.device(), cfg.tokens());
        Self { net, device: vs.device(), compute, cfg }
    }

    /// Gives every row of the label table the values of row 0 (`train.label_init = shared`).
    /// Draws nothing, so the random order of the initialisation stays the original's.
    pub fn share_label_rows(&self) {
        let ws = match &self.net {
            Net::Original(m) => m.label_table(),
            Net::Lightning(m) => m.label_table(),
        };
        let rows = ws.size()[0];
        if rows > 1 {
            tch::no_grad(|| {
                ws.narrow(0, 1, rows - 1).copy_(&ws.narrow(0, 0, 1).expand([rows - 1, -1], false))
            });
        }
    }

    /// Chooses how the forward pass computes (the `runtime` section); the weights stay float32.
    pub fn set_runtime(&mut self, runtime: &RuntimeConfig) {
        self.compute = Compute::resolve(runtime, self.device, self.cfg.tokens());
    }

    /// How the forward pass computes.
    pub fn compute(&self) -> Compute {
        self.compute
    }

    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    /// x (B, C, I, I) float, y (B) int64 labels, t (B) the process's times (DDPM: int64 steps;
    /// flow: float in [0, 1]) → the prediction (B, C, I, I).
    pub fn forward(&self, x: &Tensor, y: &Tensor, t: &Tensor) -> Tensor {
        let (mut x, cond) = self.stem(x, y, t);
        for i in 0..self.depth() {
            x = self.block(i, &x, &cond); // (B, L, E)
        }
        self.head(&x, &cond)
    }

    /// Blocks in the stack.
    pub(super) fn depth(&self) -> usize {
        match &self.net {
            Net::Original(m) => m.depth(),
            Net::Lightning(m) => m.depth(),
        }
    }

    /// Everything before the blocks: the tokens (B, L, E) of x (B, C, I, I) and the
    /// conditioning (B, E) of labels y and times t.
    pub(super) fn stem(&self, x: &Tensor, y: &Tensor, t: &Tensor) -> (Tensor, Tensor) {
        match &self.net {
            Net::Original(m) => m.stem(x, y, t),
            Net::Lightning(m) => m.stem(x, y, t),
        }
    }

    /// Block `i` on the tokens x (B, L, E) under the conditioning (B, E).
    pub(super) fn block(&self, i: usize, x: &Tensor, cond: &Tensor) -> Tensor {
        match &self.net {
            Net::Original(m) => m.block(i, x, cond, &self.compute),
            Net::Lightning(m) => m.block(i, x, cond, &self.compute),
        }
    }

    /// Everything after the blocks: their output (B, L, E) → the prediction (B, C, I, I).
    pub(super) fn head(&self, x: &Tensor, cond: &Tensor) -> Tensor {
        match &self.net {
            Net::Original(m) => m.head(x, &self.compute),
            Net::Lightning(m) => m.head(x, cond, &self.compute),
        }
    }
}

/// The model as PyTorch prints it (the original's `print(model)`); LightningDiT's in outline.
impl std::fmt::Display for Dit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.net {
            Net::Original(m) => m.fmt(f),
            Net::Lightning(_) => {
                let c = &self.cfg;
                let on: Vec<&str> = c.switches().iter().filter(|(_, v)| *v).map(|(n, _)| *n).collect();
                write!(
                    f,
                    "LightningDiT(input_size={}, patch_size={}, in_channels={}, hidden_size={}, depth={}, \
                     num_heads={}, mlp_ratio={}, num_classes={}, {})",
                    c.img_size,
                    c.patch_size,
                    c.channel,
                    c.emb_size,
                    c.dit_num,
                    c.head,
                    c.mlp_ratio,
                    c.label_num,
                    if on.is_empty() { "no switches".to_string() } else { on.join(", ") }
                )
            }
        }
    }
}

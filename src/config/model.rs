//! The `model` section (what the weights are) and the `runtime` section (how they are
//! computed), kept apart so that any checkpoint runs under any runtime choice.

use anyhow::{ensure, Result};
use serde::{Deserialize, Serialize};

use super::Variant;

/// Arithmetic of the transformer blocks (not part of the weights).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// float32 throughout, as the original.
    #[default]
    Fp32,
    /// Mixed precision: the blocks' token products and attention in bfloat16; layer norms,
    /// softmax, the residual stream, the loss, the optimiser and the weights themselves in
    /// float32, as under `torch.autocast(dtype=torch.bfloat16)`. Unlike autocast, the
    /// modulation's linear (on the (B, E) conditioning) stays float32: it is cheap, and its
    /// scales multiply every token. Meant for CUDA; on a CPU with AVX-512 BF16 it measured
    /// 1.2–1.6× faster than fp32, on one without (AVX2 only) 14× slower.
    Bf16,
    /// `bf16` where the device multiplies bfloat16 natively, `fp32` elsewhere
    /// (`crate::model::compute::native_bf16` says how that is detected).
    Auto,
}

/// How attention is computed. Both give the original's numbers (the parity tests run both);
/// they differ only in speed and memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Attention {
    /// `naive` on the CPU below 64 tokens, where it is faster; `fused` otherwise.
    #[default]
    Auto,
    /// libtorch's fused `scaled_dot_product_attention`, scale passed as 1/sqrt(L).
    Fused,
    /// The original's explicit softmax(q·kᵀ / sqrt(L))·v, which materialises (B, H, L, L).
    Naive,
}
/// What the backward pass recomputes instead of keeping (not part of the weights).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ActivationCheckpointing {
    /// Keep every activation until the backward pass (the original's).
    #[default]
    None,
    /// Keep only each DiT block's input and recompute the block in the backward pass
    /// (`crate::model::checkpointing`): activation memory of about one block, for one more
    /// forward pass of the blocks.
    Blocks,
}

/// Which transformer the model is (docs/RECIPES.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    /// The original's `DIT` (docs/ORIGINAL.md §2), its parameter names and quirks.
    #[default]
    Original,
    /// LightningDiT's model (Yao et al. 2025, `models/lightningdit.py`), its parameter names,
    /// with its switches (`use_qknorm` … `mlp_ratio`); every switch off and `learn_sigma` on
    /// is facebookresearch/DiT's model, key for key.
    Lightning,
}

impl Arch {
    pub fn name(self) -> &'static str {
        match self {
            Self::Original => "original",
            Self::Lightning => "lightning",
        }
    }
}

/// The architecture: the arguments of the original's `DIT(...)` constructor (or of
/// LightningDiT's, `arch`), and the space it works in (`autoencoder`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    /// `original` (the default) or `lightning`.
    pub arch: Arch,
    /// Side of the square images, in pixels (the DiT's input side in pixel space).
    pub img_size: i64,
    /// Side of a square patch; the DiT's input side must be a multiple of it.
    pub patch_size: i64,
    /// Image channels (3 for RGB).
    pub channel: i64,
    /// `None` (`"none"`, the original's): the DiT denoises pixels. A variant: it denoises that
    /// autoencoder's latents, `img_size / 8` a side with the variant's channels ([`Self::dit`]).
    #[serde(with = "super::autoencoder::option")]
    pub autoencoder: Option<Variant>,
    /// Number of DiT blocks.
    pub dit_num: i64,
    /// Attention heads per block (each head is `emb_size` wide, as in the original).
    pub head: i64,
    /// Rows of the label embedding table.
    pub label_num: i64,
    /// Token width.
    pub emb_size: i64,
    /// One extra "no label" row (index `label_num`) in the label table, for classifier-free
    /// guidance; set by training with `train.cfg_dropout` > 0. The original loads such weights
    /// when constructed with `label_num + 1`.
    pub null_label: bool,
    /// LightningDiT: RMSNorm (or LayerNorm) of each head's queries and keys.
    pub use_qknorm: bool,
    /// LightningDiT: a SwiGLU feed-forward of hidden width ⌊2/3·⌊emb_size·mlp_ratio⌋⌋.
    pub use_swiglu: bool,
    /// LightningDiT: 2-D rotary position embedding of queries and keys (EVA-02's).
    pub use_rope: bool,
    /// LightningDiT: RMSNorm with a weight in place of the parameter-free LayerNorms.
    pub use_rmsnorm: bool,
    /// LightningDiT: adaLN without the shifts (scale and gate only).
    pub wo_shift: bool,
    /// LightningDiT: twice the channels out, the second half dropped (DiT's learned Σ;
    /// only for weight exchange with DiT and SiT checkpoints).
    pub learn_sigma: bool,
    /// LightningDiT: feed-forward width over token width.
    pub mlp_ratio: f64,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            img_size: 256,
            patch_size: 4,
            channel: 3,
            autoencoder: None,
            dit_num: 3,
            head: 6,
            label_num: 1,
            emb_size: 64,
            null_label: false,
            arch: Arch::Original,
            use_qknorm: false,
            use_swiglu: false,
            use_rope: false,
            use_rmsnorm: false,
            wo_shift: false,
            learn_sigma: false,
            mlp_ratio: 4.0,
        }
    }
}

impl ModelConfig {
    /// The arguments the DiT itself is built with, those of the original's `DIT(...)`: this
    /// config in pixel space; with an autoencoder, side `img_size / 8` and the latent's channels.
    pub fn dit(&self) -> ModelConfig {
        match self.autoencoder {
            None => self.clone(),
            Some(ae) => ModelConfig {
                img_size: self.img_size / Variant::FACTOR,
                channel: ae.latent_channels(),
                autoencoder: None,
                ..self.clone()
            },
        }
    }

    /// The shape of `n` of the DiT's inputs (and of the noise): (n, C, I, I) of [`Self::dit`].
    pub fn input_shape(&self, n: i64) -> [i64; 4] {
        let d = self.dit();
        [n, d.channel, d.img_size, d.img_size]
    }

    /// Patches per side of the DiT's input, P = I / p.
    pub fn patches_per_side(&self) -> i64 {
        self.dit().img_size / self.patch_size
    }

    /// Rows of the label table: `label_num`, plus the "no label" row when there is one.
    pub fn label_rows(&self) -> i64 {
        self.label_num + i64::from(self.null_label)
    }

    /// Tokens per image, L = P².
    pub fn tokens(&self) -> i64 {
        self.patches_per_side().pow(2)
    }

    /// LightningDiT's switches, by name, with their values.
    pub fn switches(&self) -> [(&'static str, bool); 6] {
        [
            ("use_qknorm", self.use_qknorm),
            ("use_swiglu", self.use_swiglu),
            ("use_rope", self.use_rope),
            ("use_rmsnorm", self.use_rmsnorm),
            ("wo_shift", self.wo_shift),
            ("learn_sigma", self.learn_sigma),
        ]
    }

    /// Width of one attention head: `emb_size` in the original (each head is as wide as a
    /// token), `emb_size / head` in LightningDiT.
    pub fn head_width(&self) -> i64 {
        match self.arch {
            Arch::Original => self.emb_size,
            Arch::Lightning => self.emb_size / self.head,
        }
    }

    /// The switches belong to LightningDiT, whose widths must split evenly.
    fn validate_arch(&self) -> Result<()> {
        ensure!(
            self.mlp_ratio > 0.0 && self.mlp_ratio.is_finite(),
            "model.mlp_ratio must be a positive number, got {}",
            self.mlp_ratio
        );
        if self.arch == Arch::Original {
            if let Some((name, _)) = self.switches().into_iter().find(|(_, on)| *on) {
                anyhow::bail!(
                    "model.{name} is a switch of model.arch \"lightning\"; the original's model has none"
                );
            }
            ensure!(
                self.mlp_ratio == 4.0,
                "model.mlp_ratio applies to model.arch \"lightning\" (the original's feed-forward is 4 × emb_size), got {}",
                self.mlp_ratio
            );
            return Ok(());
        }
        let (e, h) = (self.emb_size, self.head);
        ensure!(
            e % h == 0,
            "model.emb_size ({e}) must be a multiple of model.head ({h}) with model.arch lightning"
        );
        // The fixed sine-cosine positions split the width in four (two axes, sine and cosine).
        ensure!(e % 4 == 0, "model.emb_size ({e}) must be a multiple of 4 with model.arch lightning");
        // RoPE rotates pairs along each of the two axes, so a head splits in four as well.
        ensure!(
            !self.use_rope || (e / h) % 4 == 0,
            "model.use_rope needs a head width (emb_size / head = {}) that is a multiple of 4",
            e / h
        );
        Ok(())
    }

    pub fn validate(&self) -> Result<()> {
        for (name, value) in [
            ("img_size", self.img_size),
            ("patch_size", self.patch_size),
            ("channel", self.channel),
            ("dit_num", self.dit_num),
            ("head", self.head),
            ("label_num", self.label_num),
            ("emb_size", self.emb_size),
        ] {
            ensure!(value > 0, "model.{name} must be a positive integer, got {value}");
        }
        self.validate_arch()?;
        let Some(ae) = self.autoencoder else {
            ensure!(
                self.img_size % self.patch_size == 0,
                "model.img_size ({}) must be a multiple of model.patch_size ({})",
                self.img_size,
                self.patch_size
            );
            return Ok(());
        };
        let f = Variant::FACTOR;
        ensure!(
            self.channel == 3,
            "model.channel must be 3 (RGB) with model.autoencoder {ae}, got {}",
            self.channel
        );
        ensure!(
            self.img_size % (f * self.patch_size) == 0,
            "model.img_size ({}) must be a multiple of {f} × model.patch_size ({}) with model.autoencoder {ae}: \
             the DiT works on latents of side img_size / {f}",
            self.img_size,
            self.patch_size
        );
        Ok(())
    }
}

/// How the model is computed: choices that change speed, memory and rounding but not the
/// weights, so a checkpoint resumes or samples under any of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeConfig {
    /// The attention kernel.
    pub attention: Attention,
    /// `fp32` (the original's), `bf16` mixed precision, or `auto`.
    pub precision: Precision,
    /// `none` (the original's) or `blocks`: recompute each block in the backward pass.
    pub activation_checkpointing: ActivationCheckpointing,
}

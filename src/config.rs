//! The run configuration: `config.json`, one serde struct per section, with the original's
//! names and default values (docs/ORIGINAL.md §1). Validation happens once, at load, and every
//! error names the offending field.

use std::path::Path;

use anyhow::{bail, ensure, Context, Result};
use serde::{Deserialize, Serialize};

/// Arithmetic of the transformer blocks (not part of the weights).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// float32 throughout, as the original.
    #[default]
    Fp32,
    /// Mixed precision, as `torch.autocast(dtype=torch.bfloat16)` arranges it: the matrix
    /// products and attention in bfloat16; layer norms, softmax, modulation, the residual
    /// stream, the loss, the optimiser and the weights themselves in float32. Meant for CUDA;
    /// on a CPU with AVX-512 BF16 it measured 1.2–1.6× faster than fp32.
    Bf16,
}

/// The config file commands read when none is named.
pub const DEFAULT_PATH: &str = "config.json";

/// How attention is computed. Both give the original's numbers (the parity tests run both);
/// they differ only in speed and memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Attention {
    /// `naive` on the CPU below 256 tokens, where it is faster; `fused` otherwise.
    #[default]
    Auto,
    /// libtorch's fused `scaled_dot_product_attention`, scale passed as 1/sqrt(L).
    Fused,
    /// The original's explicit softmax(q·kᵀ / sqrt(L))·v, which materialises (B, H, L, L).
    Naive,
}

/// The architecture: the arguments of the original's `DIT(...)` constructor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    /// Side of the square input image, in pixels.
    pub img_size: i64,
    /// Side of a square patch; `img_size` must be a multiple of it.
    pub patch_size: i64,
    /// Image channels (3 for RGB).
    pub channel: i64,
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
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            img_size: 256,
            patch_size: 4,
            channel: 3,
            dit_num: 3,
            head: 6,
            label_num: 1,
            emb_size: 64,
            null_label: false,
        }
    }
}

impl ModelConfig {
    /// Patches per image side, P = I / p.
    pub fn patches_per_side(&self) -> i64 {
        self.img_size / self.patch_size
    }

    /// Rows of the label table: `label_num`, plus the "no label" row when there is one.
    pub fn label_rows(&self) -> i64 {
        self.label_num + i64::from(self.null_label)
    }

    /// Tokens per image, L = P².
    pub fn tokens(&self) -> i64 {
        self.patches_per_side().pow(2)
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
        ensure!(
            self.img_size % self.patch_size == 0,
            "model.img_size ({}) must be a multiple of model.patch_size ({})",
            self.img_size,
            self.patch_size
        );
        Ok(())
    }
}

/// The DDPM noise schedule (docs/ORIGINAL.md §4).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DiffusionConfig {
    /// Number of diffusion steps T.
    pub max_t: i64,
    /// First value of the linear beta schedule.
    pub beta_start: f64,
    /// Last value of the linear beta schedule.
    pub beta_end: f64,
}

impl Default for DiffusionConfig {
    fn default() -> Self {
        Self { max_t: 1000, beta_start: 0.0001, beta_end: 0.02 }
    }
}

impl DiffusionConfig {
    pub fn validate(&self) -> Result<()> {
        ensure!(self.max_t > 0, "diffusion.max_t must be a positive integer, got {}", self.max_t);
        for (name, value) in [("beta_start", self.beta_start), ("beta_end", self.beta_end)] {
            ensure!(
                value > 0.0 && value < 1.0,
                "diffusion.{name} must lie strictly between 0 and 1, got {value}"
            );
        }
        ensure!(
            self.beta_start <= self.beta_end,
            "diffusion.beta_start ({}) must not exceed diffusion.beta_end ({})",
            self.beta_start,
            self.beta_end
        );
        Ok(())
    }
}

/// Training settings; the first six mirror the original's `config.py` and `train.py`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// Number of passes over the data.
    pub epoch: i64,
    /// Images per optimisation step.
    pub batch_size: i64,
    /// Adam learning rate (peak value when a schedule is used).
    pub lr: f64,
    /// Threads that decode images in the background.
    pub num_workers: i64,
    /// Image folder, or `builtin:pandas` for the procedural data set.
    pub data_path: String,
    /// Where the weights are saved each epoch; the extension picks the format
    /// (`.ot`, `.safetensors` or `.pth`).
    pub model_save_path: String,
    /// TensorBoard log folder.
    pub logdir: String,
    /// Seed of every random draw (data order, steps t, noise); null picks one and records it.
    pub seed: Option<u64>,
    /// Clip the gradients' global L2 norm to this value; 0 turns clipping off.
    pub grad_clip: f64,
    /// Decay of the exponential moving average of the weights used for previews (0 = off).
    pub ema_decay: f64,
    /// Learning-rate schedule: `constant` (the original's) or `cosine` (decays to `min_lr`).
    pub lr_schedule: LrSchedule,
    /// Steps of linear warm-up from 0 to `lr` (both schedules).
    pub warmup_steps: i64,
    /// Final learning rate of the cosine schedule.
    pub min_lr: f64,
    /// Log the `noise_prediction` and `target_noise` histograms every this many steps.
    pub histogram_every: i64,
    /// Keep decoded images in memory (as u8) so later epochs decode nothing.
    pub cache_images: bool,
    /// Probability of replacing a label by the "no label" row during training (classifier-free
    /// guidance, Ho & Salimans 2022); 0 keeps the original's behaviour and parameter shapes.
    pub cfg_dropout: f64,
    /// How a fresh run initialises the label table when it has more than one row: `shared`
    /// draws it as PyTorch does and then gives every row row 0's values, so the classes start
    /// from the one-class model and grow apart by training; `independent` keeps PyTorch's
    /// independent N(0, 1) rows. Identical for one row (the original's `label_num = 1`).
    pub label_init: LabelInit,
    /// On a non-finite loss or gradient: false stops the run (the last checkpoint stays as it
    /// was), true skips that step with a warning and goes on.
    pub skip_nonfinite: bool,
    /// The sample drawn and logged after epochs.
    pub preview: PreviewConfig,
}

/// Learning-rate schedules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LrSchedule {
    /// `lr` throughout, after the warm-up (the original has no schedule).
    #[default]
    Constant,
    /// Half a cosine from `lr` down to `min_lr` over the run, after the warm-up.
    Cosine,
}

/// Initialisation of the label table's rows (`train.label_init`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LabelInit {
    /// Every row starts as row 0. Measured on `builtin:pandas2` (configs/pandas2.json): the
    /// loss leaves the 0.7 plateau at about step 800, where independent rows stay on it for the
    /// whole 3520-step budget.
    #[default]
    Shared,
    /// PyTorch's `nn.Embedding` initialisation: independent N(0, 1) rows.
    Independent,
}

/// Samplers, for previews and the `sample` command (its behaviour: `crate::sampling`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum SamplerKind {
    /// The original's ancestral sampler (DDPM), all max_t steps.
    Ddpm,
    /// DDIM over a subset of the steps of the same model.
    #[default]
    Ddim,
}

impl SamplerKind {
    /// The name the config and the command line use.
    pub fn name(self) -> &'static str {
        match self {
            Self::Ddpm => "ddpm",
            Self::Ddim => "ddim",
        }
    }
}

/// The preview sample after epochs. The original draws a full 1000-step DDPM sample after
/// every epoch (tens of minutes on a CPU at 256²); `{"sampler": "ddpm", "steps": 1000}` keeps that.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PreviewConfig {
    /// `ddim` (default) or `ddpm`.
    pub sampler: SamplerKind,
    /// Denoising steps (`ddpm` needs `max_t`).
    pub steps: i64,
    /// Draw a preview every this many epochs; 0 turns previews off.
    pub every_epochs: i64,
    /// Images in the saved preview grid (the TensorBoard grid shows the first one's states).
    pub num: i64,
}

impl Default for PreviewConfig {
    fn default() -> Self {
        Self { sampler: SamplerKind::Ddim, steps: 50, every_epochs: 1, num: 16 }
    }
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            epoch: 10000,
            batch_size: 6,
            lr: 1e-6,
            num_workers: 10,
            data_path: "data/Pandas".into(),
            model_save_path: "checkpoints/dit_train.ot".into(),
            logdir: "dit_training".into(),
            seed: None,
            grad_clip: 1.0,
            ema_decay: 0.999,
            lr_schedule: LrSchedule::Constant,
            warmup_steps: 0,
            min_lr: 0.0,
            histogram_every: 100,
            cache_images: true,
            cfg_dropout: 0.0,
            label_init: LabelInit::Shared,
            skip_nonfinite: false,
            preview: PreviewConfig::default(),
        }
    }
}

impl TrainConfig {
    pub fn validate(&self) -> Result<()> {
        ensure!(self.epoch > 0, "train.epoch must be a positive integer, got {}", self.epoch);
        ensure!(self.batch_size > 0, "train.batch_size must be a positive integer, got {}", self.batch_size);
        ensure!(self.lr > 0.0 && self.lr.is_finite(), "train.lr must be a positive number, got {}", self.lr);
        ensure!(
            self.num_workers > 0,
            "train.num_workers must be a positive integer, got {}",
            self.num_workers
        );
        ensure!(!self.data_path.is_empty(), "train.data_path must not be empty");
        ensure!(!self.model_save_path.is_empty(), "train.model_save_path must not be empty");
        ensure!(!self.logdir.is_empty(), "train.logdir must not be empty");
        ensure!(
            self.grad_clip >= 0.0 && self.grad_clip.is_finite(),
            "train.grad_clip must be 0 (off) or positive, got {}",
            self.grad_clip
        );
        ensure!(
            (0.0..1.0).contains(&self.ema_decay),
            "train.ema_decay must lie in [0, 1), got {}",
            self.ema_decay
        );
        ensure!(self.warmup_steps >= 0, "train.warmup_steps must not be negative, got {}", self.warmup_steps);
        ensure!(
            self.min_lr >= 0.0 && self.min_lr <= self.lr,
            "train.min_lr must lie in [0, train.lr], got {}",
            self.min_lr
        );
        ensure!(
            self.histogram_every > 0,
            "train.histogram_every must be a positive integer, got {}",
            self.histogram_every
        );
        ensure!(
            (0.0..1.0).contains(&self.cfg_dropout),
            "train.cfg_dropout must lie in [0, 1), got {}",
            self.cfg_dropout
        );
        let p = &self.preview;
        ensure!(p.steps > 0, "train.preview.steps must be a positive integer, got {}", p.steps);
        ensure!(
            p.every_epochs >= 0,
            "train.preview.every_epochs must be 0 (off) or positive, got {}",
            p.every_epochs
        );
        ensure!(p.num > 0, "train.preview.num must be a positive integer, got {}", p.num);
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
    /// `fp32` (the original's) or `bf16` mixed precision.
    pub precision: Precision,
}

/// The whole `config.json`. Every section, and every field in it, may be left out.
///
/// Files written before the `runtime` section existed kept `attention` and `precision` in
/// `model`; they still load, the two fields moving to `runtime` (an error only when both
/// places name different values).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "serde_json::Value")]
pub struct Config {
    pub model: ModelConfig,
    pub diffusion: DiffusionConfig,
    pub train: TrainConfig,
    pub runtime: RuntimeConfig,
}

/// The sections as the file spells them (see [`Config`] for the legacy fields).
#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Sections {
    model: ModelConfig,
    diffusion: DiffusionConfig,
    train: TrainConfig,
    runtime: RuntimeConfig,
}

impl Default for Sections {
    fn default() -> Self {
        let Config { model, diffusion, train, runtime } = Config::default();
        Self { model, diffusion, train, runtime }
    }
}

impl TryFrom<serde_json::Value> for Config {
    type Error = String;

    fn try_from(mut value: serde_json::Value) -> Result<Self, String> {
        let legacy: Vec<(&str, serde_json::Value)> = ["attention", "precision"]
            .into_iter()
            .filter_map(|k| Some((k, value.get_mut("model")?.as_object_mut()?.remove(k)?)))
            .collect();
        if let (false, Some(root)) = (legacy.is_empty(), value.as_object_mut()) {
            let runtime = root.entry("runtime").or_insert_with(|| serde_json::json!({}));
            let runtime = runtime.as_object_mut().ok_or("runtime: expected a JSON object")?;
            for (key, old) in legacy {
                match runtime.get(key) {
                    Some(new) if *new != old => {
                        return Err(format!(
                            "model.{key} ({old}) and runtime.{key} ({new}) disagree; keep runtime.{key}"
                        ))
                    }
                    _ => runtime.insert(key.to_string(), old),
                };
            }
        }
        let Sections { model, diffusion, train, runtime } =
            serde_json::from_value(value).map_err(|e| e.to_string())?;
        Ok(Self { model, diffusion, train, runtime })
    }
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config {}", path.display()))?;
        Self::from_json(&text).with_context(|| format!("invalid config {}", path.display()))
    }

    /// The config a command runs with: `path` when given; otherwise `config.json` in the
    /// working folder when there is one; otherwise the original's defaults.
    pub fn resolve(path: Option<&Path>) -> Result<Self> {
        match path {
            Some(path) => Self::load(path),
            None if Path::new(DEFAULT_PATH).is_file() => Self::load(DEFAULT_PATH),
            None => Ok(Self::default()),
        }
    }

    /// Parses and validates config text.
    pub fn from_json(text: &str) -> Result<Self> {
        let config: Config = match serde_json::from_str(text) {
            Ok(config) => config,
            // serde_json's message already names the field and the line.
            Err(err) => bail!("{err}"),
        };
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<()> {
        self.model.validate()?;
        self.diffusion.validate()?;
        self.train.validate()?;
        let p = &self.train.preview;
        ensure!(
            p.steps <= self.diffusion.max_t,
            "train.preview.steps ({}) must not exceed diffusion.max_t ({})",
            p.steps,
            self.diffusion.max_t
        );
        ensure!(
            p.sampler != SamplerKind::Ddpm || p.steps == self.diffusion.max_t,
            "train.preview.steps must equal diffusion.max_t ({}) for the ddpm sampler; use ddim for fewer",
            self.diffusion.max_t
        );
        Ok(())
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a Config always serialises")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_originals() {
        let c = Config::default();
        assert_eq!((c.model.img_size, c.model.patch_size, c.model.channel), (256, 4, 3));
        assert_eq!((c.model.dit_num, c.model.head, c.model.label_num, c.model.emb_size), (3, 6, 1, 64));
        assert_eq!(c.model.tokens(), 4096);
        assert_eq!((c.diffusion.max_t, c.diffusion.beta_start, c.diffusion.beta_end), (1000, 1e-4, 0.02));
        assert_eq!((c.train.epoch, c.train.batch_size, c.train.lr), (10000, 6, 1e-6));
        c.validate().unwrap();
    }

    #[test]
    fn shipped_config_json_is_the_default() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/config.json");
        assert_eq!(Config::load(path).unwrap(), Config::default());
    }

    fn err(text: &str) -> String {
        format!("{:#}", Config::from_json(text).unwrap_err())
    }

    #[test]
    fn rejections_name_the_field() {
        assert!(err(r#"{"model": {"img_sise": 32}}"#).contains("img_sise"));
        assert!(err(r#"{"modle": {}}"#).contains("modle"));
        assert!(err(r#"{"model": {"img_size": 30, "patch_size": 4}}"#).contains("model.img_size"));
        assert!(err(r#"{"model": {"head": 0}}"#).contains("model.head"));
        assert!(
            err(r#"{"model": {"label_num": "one"}}"#).contains("label_num")
                || err(r#"{"model": {"label_num": "one"}}"#).contains("invalid type")
        );
        assert!(err(r#"{"diffusion": {"max_t": 0}}"#).contains("diffusion.max_t"));
        assert!(err(r#"{"diffusion": {"beta_start": 0.5, "beta_end": 0.1}}"#).contains("beta_start"));
        assert!(err(r#"{"diffusion": {"beta_end": 1.5}}"#).contains("diffusion.beta_end"));
        assert!(err(r#"{"train": {"batch_size": -1}}"#).contains("train.batch_size"));
        assert!(err(r#"{"train": {"lr": 0}}"#).contains("train.lr"));
        assert!(err(r#"{"runtime": {"attention": "slow"}}"#).contains("slow"));
        assert!(err(r#"{"runtime": {"precision": "fp16"}}"#).contains("fp16"));
        assert!(err(r#"{"model": {"attention": "slow"}}"#).contains("slow"));
        assert!(err(r#"{"runtime": {"attentoin": "naive"}}"#).contains("attentoin"));
        assert!(err("{not json").contains("line 1"));
    }

    #[test]
    fn legacy_model_fields_move_to_runtime() {
        let c = Config::from_json(r#"{"model": {"attention": "naive", "precision": "bf16"}}"#).unwrap();
        assert_eq!(c.runtime, RuntimeConfig { attention: Attention::Naive, precision: Precision::Bf16 });
        assert_eq!(c.model, ModelConfig::default());
        let same = r#"{"model": {"attention": "naive"}, "runtime": {"attention": "naive"}}"#;
        assert_eq!(Config::from_json(same).unwrap().runtime.attention, Attention::Naive);
        let clash = err(r#"{"model": {"attention": "naive"}, "runtime": {"attention": "fused"}}"#);
        assert!(clash.contains("model.attention") && clash.contains("runtime.attention"), "{clash}");
        let round = Config::from_json(&c.to_json()).unwrap();
        assert_eq!(round, c);
    }

    #[test]
    fn partial_configs_fill_in_defaults() {
        let c = Config::from_json(r#"{"model": {"img_size": 32}}"#).unwrap();
        assert_eq!(c.model.img_size, 32);
        assert_eq!(c.model.tokens(), 64);
        assert_eq!(c.train, TrainConfig::default());
    }
}

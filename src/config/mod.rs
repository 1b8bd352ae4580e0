//! The run configuration: `config.json`, one serde struct per section, with the original's
//! names and default values (docs/ORIGINAL.md §1). Validation happens once, at load, and every
//! error names the offending field.

use std::path::Path;

use anyhow::{bail, ensure, Context, Result};
use serde::{Deserialize, Serialize};

mod autoencoder;
mod cache;
mod model;
mod objective;
mod train;

pub use autoencoder::Variant;
pub use cache::CacheImages;
pub use model::{ActivationCheckpointing, Arch, Attention, ModelConfig, Precision, RuntimeConfig};
pub use objective::{
    describe_flow, describe_objective, Loss, LossWeighting, Prediction, Process, TimestepSampling,
};
pub use train::{ClassLayout, EvalConfig, LabelInit, LrSchedule, PreviewConfig, SamplerKind, TrainConfig};

/// The config file commands read when none is named.
pub const DEFAULT_PATH: &str = "config.json";

/// The diffusion process: the DDPM noise schedule (docs/ORIGINAL.md §4), or flow matching
/// (docs/RECIPES.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DiffusionConfig {
    /// `ddpm` (the original's) or `flow` (SiT's linear path, velocity target).
    pub process: Process,
    /// Flow: how training draws t in [0, 1], `uniform` or `logit_normal`.
    pub timestep_sampling: TimestepSampling,
    /// Number of diffusion steps T.
    pub max_t: i64,
    /// First value of the linear beta schedule.
    pub beta_start: f64,
    /// Last value of the linear beta schedule.
    pub beta_end: f64,
    /// What the model's output means: `epsilon` (the original's), `x0` or `v`.
    pub prediction: Prediction,
}

impl Default for DiffusionConfig {
    fn default() -> Self {
        Self {
            process: Process::Ddpm,
            timestep_sampling: TimestepSampling::Uniform,
            max_t: 1000,
            beta_start: 0.0001,
            beta_end: 0.02,
            prediction: Prediction::Epsilon,
        }
    }
}

impl DiffusionConfig {
    pub fn validate(&self) -> Result<()> {
        if self.process == Process::Flow {
            ensure!(
                self.prediction == Prediction::Epsilon,
                "diffusion.prediction ({}) applies to diffusion.process ddpm; a flow model predicts the velocity",
                self.prediction.name()
            );
        } else {
            ensure!(
                self.timestep_sampling == TimestepSampling::Uniform,
                "diffusion.timestep_sampling logit_normal applies to diffusion.process flow"
            );
        }
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
        // The path names the field even where serde's own message does not (an enum's value).
        let Sections { model, diffusion, train, runtime } =
            serde_path_to_error::deserialize(value).map_err(|e| match e.path().to_string() {
                path if path == "." => e.inner().to_string(),
                path => format!("{path}: {}", e.inner()),
            })?;
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
        let flow = self.diffusion.process == Process::Flow;
        let t = &self.train;
        ensure!(!t.cosine_loss || flow, "train.cosine_loss applies to diffusion.process flow");
        ensure!(
            !flow || t.loss_weighting == LossWeighting::None,
            "train.loss_weighting min_snr applies to diffusion.process ddpm"
        );
        let p = &self.train.preview;
        p.sampler.check_process(self.diffusion.process).context("train.preview.sampler")?;
        p.sampler.check_steps(p.steps, self.diffusion.max_t).with_context(|| {
            format!("train.preview.steps = {} with train.preview.sampler = {}", p.steps, p.sampler.name())
        })
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
        let budget = err(r#"{"train": {"cache_images": "12XB"}}"#);
        assert!(budget.contains("train.cache_images") && budget.contains("\"12XB\""), "{budget}");
        assert!(!budget.contains('\n'), "{budget}");
        assert!(err(r#"{"train": {"classes": "flat"}}"#).contains("flat"));
        let prediction = err(r#"{"diffusion": {"prediction": "x1"}}"#);
        assert!(prediction.contains("diffusion.prediction") && prediction.contains("x1"), "{prediction}");
        assert!(err(r#"{"train": {"loss": "l3"}}"#).contains("train.loss"));
        assert!(err(r#"{"train": {"loss_weighting": "snr"}}"#).contains("train.loss_weighting"));
        assert!(err(r#"{"train": {"min_snr_gamma": 0}}"#).contains("train.min_snr_gamma"));
    }

    #[test]
    fn recipe_fields_are_refused_where_they_do_not_apply_naming_the_field() {
        let switch = err(r#"{"model": {"use_rope": true}}"#);
        assert!(switch.contains("model.use_rope") && switch.contains("lightning"), "{switch}");
        assert!(err(r#"{"model": {"mlp_ratio": 2.0}}"#).contains("model.mlp_ratio"));
        let lightning = r#""arch": "lightning", "img_size": 32, "emb_size": 64, "head": 6"#;
        assert!(err(&format!(r#"{{"model": {{{lightning}}}}}"#)).contains("multiple of model.head"));
        let rope = err(r#"{"model": {"arch": "lightning", "emb_size": 24, "head": 4, "use_rope": true}}"#);
        assert!(rope.contains("model.use_rope") && rope.contains("6"), "{rope}");
        let flow = r#""process": "flow""#;
        let euler = r#""preview": {"sampler": "euler"}"#;
        let prediction =
            err(&format!(r#"{{"diffusion": {{{flow}, "prediction": "x0"}}, "train": {{{euler}}}}}"#));
        assert!(prediction.contains("diffusion.prediction"), "{prediction}");
        assert!(err(r#"{"diffusion": {"timestep_sampling": "logit_normal"}}"#).contains("timestep_sampling"));
        assert!(err(r#"{"train": {"cosine_loss": true}}"#).contains("train.cosine_loss"));
        let preview = err(&format!(r#"{{"diffusion": {{{flow}}}}}"#));
        assert!(preview.contains("train.preview.sampler") && preview.contains("euler or heun"), "{preview}");
        let back = err(r#"{"train": {"preview": {"sampler": "heun"}}}"#);
        assert!(back.contains("train.preview.sampler") && back.contains("ddpm model"), "{back}");
        assert!(err(r#"{"train": {"adam_beta2": 1.0}}"#).contains("train.adam_beta2"));
        let ok = format!(
            r#"{{"model": {{"arch": "lightning", "head": 4, "use_rope": true, "learn_sigma": true}},
                "diffusion": {{{flow}, "timestep_sampling": "logit_normal"}},
                "train": {{"cosine_loss": true, "loss": "l2", {euler}}}}}"#
        );
        let c = Config::from_json(&ok).unwrap();
        assert_eq!(Config::from_json(&c.to_json()).unwrap(), c);
    }

    #[test]
    fn legacy_model_fields_move_to_runtime() {
        let c = Config::from_json(r#"{"model": {"attention": "naive", "precision": "bf16"}}"#).unwrap();
        assert_eq!(
            c.runtime,
            RuntimeConfig { attention: Attention::Naive, precision: Precision::Bf16, ..Default::default() }
        );
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

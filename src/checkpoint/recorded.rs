//! What a `.safetensors` weight file written by `train` records about itself, in its header
//! metadata, so that `sample` on the file alone draws what it draws from the run's training
//! state with `--no-ema` (the file holds the raw weights, as the original saves them): the
//! model, diffusion and runtime sections, the class names, and in latent space the
//! autoencoder and normalisation. Each is one JSON value under its own key; readers that do not
//! know the keys (PyTorch's `safetensors.torch.load_file`) ignore them. `.ot` and `.pth` files
//! have no metadata: sampling them needs the run's config.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{anyhow, Result};
use serde::de::DeserializeOwned;

use super::read_metadata;
use super::state::LatentMeta;
use crate::config::{DiffusionConfig, ModelConfig, RuntimeConfig};
use crate::Config;

/// Metadata key of the autoencoder and normalisation of a latent-space model ([`LatentMeta`]).
pub const LATENT_KEY: &str = "dit_latent";
/// Metadata key of the model section.
pub const MODEL_KEY: &str = "dit_model";
/// Metadata key of the diffusion section (schedule and prediction target).
pub const DIFFUSION_KEY: &str = "dit_diffusion";
/// Metadata key of the runtime section (attention and precision the run computed with).
pub const RUNTIME_KEY: &str = "dit_runtime";
/// Metadata key of the class names in label order (a JSON list).
pub const CLASSES_KEY: &str = "dit_classes";

/// The recorded sections of a weight file; each `None` where the file does not record it
/// (another format, a file from before the key was written, or one not written by `train`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Recorded {
    pub model: Option<ModelConfig>,
    pub diffusion: Option<DiffusionConfig>,
    pub runtime: Option<RuntimeConfig>,
    pub classes: Option<Vec<String>>,
    pub latent: Option<LatentMeta>,
}

impl Recorded {
    /// What a run with `config`, `classes` and `latent` records in its weight files.
    pub fn of_run(config: &Config, classes: &[String], latent: Option<&LatentMeta>) -> Self {
        Self {
            model: Some(config.model.clone()),
            diffusion: Some(config.diffusion.clone()),
            runtime: Some(config.runtime),
            classes: Some(classes.to_vec()),
            latent: latent.cloned(),
        }
    }

    /// The header metadata holding every recorded section.
    pub fn to_metadata(&self) -> Result<HashMap<String, String>> {
        let entries = [
            (MODEL_KEY, self.model.as_ref().map(serde_json::to_string)),
            (DIFFUSION_KEY, self.diffusion.as_ref().map(serde_json::to_string)),
            (RUNTIME_KEY, self.runtime.as_ref().map(serde_json::to_string)),
            (CLASSES_KEY, self.classes.as_ref().map(serde_json::to_string)),
            (LATENT_KEY, self.latent.as_ref().map(serde_json::to_string)),
        ];
        let mut metadata = HashMap::new();
        for (key, text) in entries {
            if let Some(text) = text {
                metadata.insert(key.to_string(), text?);
            }
        }
        Ok(metadata)
    }

    /// Reads what `path` records (nothing for `.ot` and `.pth`). A key that is not readable
    /// JSON of its kind, or a section with invalid values, is a one-line error naming the file
    /// and the key.
    pub fn read(path: &Path) -> Result<Self> {
        let metadata = read_metadata(path)?;
        let recorded = Self {
            model: parse(path, &metadata, MODEL_KEY)?,
            diffusion: parse(path, &metadata, DIFFUSION_KEY)?,
            runtime: parse(path, &metadata, RUNTIME_KEY)?,
            classes: parse(path, &metadata, CLASSES_KEY)?,
            latent: parse(path, &metadata, LATENT_KEY)?,
        };
        let invalid = |key: &str, e: anyhow::Error| anyhow!("{}: metadata {key}: {e:#}", path.display());
        if let Some(model) = &recorded.model {
            model.validate().map_err(|e| invalid(MODEL_KEY, e))?;
        }
        if let Some(diffusion) = &recorded.diffusion {
            diffusion.validate().map_err(|e| invalid(DIFFUSION_KEY, e))?;
        }
        Ok(recorded)
    }
}

/// The value under `key`, if any, as a `T`; an error naming the file and the key otherwise.
fn parse<T: DeserializeOwned>(
    path: &Path,
    metadata: &HashMap<String, String>,
    key: &str,
) -> Result<Option<T>> {
    metadata
        .get(key)
        .map(|text| serde_json::from_str(text))
        .transpose()
        .map_err(|e| anyhow!("{}: metadata {key} is not readable ({e})", path.display()))
}

#[cfg(test)]
mod tests {
    use tch::{Kind, Tensor};

    use super::*;
    use crate::checkpoint::write_tensors_with;
    use crate::config::Prediction;

    fn run_config() -> Config {
        Config::from_json(
            r#"{"model": {"img_size": 8, "patch_size": 4, "label_num": 2},
                "diffusion": {"max_t": 40, "beta_end": 0.03, "prediction": "x0"},
                "train": {"preview": {"steps": 10}},
                "runtime": {"attention": "naive"}}"#,
        )
        .unwrap()
    }

    fn write(path: &Path, metadata: HashMap<String, String>) {
        let t = Tensor::ones([2, 3], (Kind::Float, tch::Device::Cpu));
        write_tensors_with(path, &[("w".to_string(), t)], metadata).unwrap();
    }

    #[test]
    fn a_run_s_sections_and_classes_round_trip_through_the_header() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.safetensors");
        let cfg = run_config();
        let classes = vec!["panda".to_string(), "red_panda".to_string()];
        let written = Recorded::of_run(&cfg, &classes, None);
        write(&path, written.to_metadata().unwrap());
        let read = Recorded::read(&path).unwrap();
        assert_eq!(read, written);
        assert_eq!(read.diffusion.unwrap().prediction, Prediction::X0);
        assert_eq!(read.model.unwrap(), cfg.model);
        assert!(read.latent.is_none());
    }

    #[test]
    fn files_without_metadata_record_nothing() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["w.safetensors", "w.ot", "w.pth"] {
            let path = dir.path().join(name);
            write(&path, HashMap::new());
            assert_eq!(Recorded::read(&path).unwrap(), Recorded::default(), "{name}");
        }
    }

    #[test]
    fn malformed_metadata_is_one_line_naming_the_file_and_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.safetensors");
        for (key, value) in [
            (DIFFUSION_KEY, "{not json"),
            (DIFFUSION_KEY, r#"{"prediction": "x1"}"#),
            (DIFFUSION_KEY, r#"{"max_t": 0}"#),
            (MODEL_KEY, r#"{"img_size": 30, "patch_size": 4}"#),
            (CLASSES_KEY, r#"{"a": 1}"#),
            (RUNTIME_KEY, r#"{"attention": "slow"}"#),
            (LATENT_KEY, "[]"),
        ] {
            write(&path, HashMap::from([(key.to_string(), value.to_string())]));
            let err = format!("{:#}", Recorded::read(&path).unwrap_err());
            assert!(err.contains("w.safetensors") && err.contains(key), "{key} = {value}: {err}");
            assert!(!err.contains('\n'), "{err}");
        }
    }
}

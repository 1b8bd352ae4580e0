//! The full training state beside a weight file: `<weights>.state.safetensors` holds the raw
//! weights, the EMA weights and Adam's two moments (float32 tensors named `model.<key>`,
//! `ema.<key>`, `adam_m.<key>`, `adam_v.<key>`), and in its metadata the counters, the seed,
//! the class names and the resolved config. One file, written atomically, so a crash can
//! never leave the weights of one step beside the optimizer of another.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use safetensors::tensor::{Dtype, SafeTensors};
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use super::keys::{check_keys, Shapes};
use crate::config::Config;
use crate::data::LatentStats;

/// Version of the state layout, stored in the file so future changes can read old files.
const STATE_VERSION: u32 = 1;

/// Everything besides tensors that a restart needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainMeta {
    /// Optimisation steps done so far (over all runs).
    pub step: i64,
    /// The epoch the next step belongs to (0-based).
    pub epoch: i64,
    /// Batches of that epoch already done.
    pub batch_in_epoch: i64,
    /// Processes of the data-parallel run that wrote it (1 for files from before there were
    /// any); a batch is `config.train.batch_size` images per process.
    #[serde(default = "one")]
    pub world_size: i64,
    /// The seed every random draw of the run derives from.
    pub seed: u64,
    /// Class names, label order.
    pub classes: Vec<String>,
    /// The configuration the run was started with, flags applied.
    pub config: Config,
    /// Updates Adam has made (its bias corrections depend on them). Below `step` when steps
    /// were skipped (`train.skip_nonfinite`); absent in files from before it was saved, which
    /// are read as `step`.
    #[serde(default)]
    pub adam_step: Option<i64>,
    /// The learning-rate schedule's horizon in steps, fixed when the run began (the cosine
    /// reaches `min_lr` there); absent in older files, where it was recomputed at each start.
    #[serde(default)]
    pub schedule_steps: Option<i64>,
    /// What the run trained on (absent in older files): checked when it resumes.
    #[serde(default)]
    pub data: Option<DataIdentity>,
    /// What the latents of a latent-space run are (absent in pixel space and older files):
    /// checked when it resumes, used to decode when it samples.
    #[serde(default)]
    pub latent: Option<LatentMeta>,
}

impl TrainMeta {
    /// The counters of a run that has not trained yet, on one process.
    pub fn fresh(seed: u64, classes: Vec<String>, config: Config) -> Self {
        Self {
            step: 0,
            epoch: 0,
            batch_in_epoch: 0,
            world_size: 1,
            seed,
            classes,
            config,
            adam_step: None,
            schedule_steps: None,
            data: None,
            latent: None,
        }
    }
}

/// The identity of a run's training data, beside the class names of [`TrainMeta`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataIdentity {
    /// Number of images.
    pub images: usize,
    /// A 64-bit hash (16 hex digits) of the image list: each file's path below the data
    /// folder and its label, in order (the built-in sets: each image's index and label).
    pub fingerprint: String,
}

/// The autoencoder a latent-space run trained with, by name and sha256 of its files, and the
/// normalisation of its latents.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LatentMeta {
    pub autoencoder: String,
    pub encoder_sha256: String,
    pub decoder_sha256: String,
    pub stats: LatentStats,
}

fn one() -> i64 {
    1
}

/// The state file that belongs to a weight file.
pub fn state_path(weights: &Path) -> PathBuf {
    let mut name = weights.as_os_str().to_owned();
    name.push(".state.safetensors");
    PathBuf::from(name)
}

/// Named groups of tensors in a state file.
pub const GROUPS: [&str; 4] = ["model", "ema", "adam_m", "adam_v"];

/// A loaded state file: the metadata and each group as name → tensor (on the CPU).
pub struct TrainState {
    pub meta: TrainMeta,
    pub groups: HashMap<String, BTreeMap<String, Tensor>>,
}

impl TrainState {
    pub fn group(&self, name: &str) -> Option<&BTreeMap<String, Tensor>> {
        self.groups.get(name).filter(|g| !g.is_empty())
    }
}

/// Writes the state atomically. `groups` maps a group name to its named tensors.
pub fn save(path: &Path, meta: &TrainMeta, groups: &[(&str, &[(String, Tensor)])]) -> Result<()> {
    let named: Vec<(String, Tensor)> = groups
        .iter()
        .flat_map(|(group, tensors)| {
            tensors.iter().map(move |(name, t)| (format!("{group}.{name}"), t.shallow_clone()))
        })
        .collect();
    let metadata = HashMap::from([
        ("dit_state_version".to_string(), STATE_VERSION.to_string()),
        ("meta".to_string(), serde_json::to_string(meta)?),
    ]);
    super::format::write_f32_safetensors(path, &named, metadata)
}

/// Reads a state file, checking its layout (not yet its shapes: see [`check_against`]).
pub fn load(path: &Path) -> Result<TrainState> {
    let bytes =
        std::fs::read(path).with_context(|| format!("cannot read training state {}", path.display()))?;
    let context = || format!("{}: not a valid training-state file", path.display());
    let (_, header) = SafeTensors::read_metadata(&bytes).with_context(context)?;
    let metadata = header.metadata().clone().unwrap_or_default();
    let version = metadata.get("dit_state_version").with_context(context)?;
    ensure!(
        version == &STATE_VERSION.to_string(),
        "{}: state version {version} is not supported",
        path.display()
    );
    let meta: TrainMeta =
        serde_json::from_str(metadata.get("meta").with_context(context)?).with_context(context)?;
    meta.config.validate().with_context(context)?;
    let st = SafeTensors::deserialize(&bytes).with_context(context)?;
    let mut groups: HashMap<String, BTreeMap<String, Tensor>> = HashMap::new();
    for (name, view) in st.tensors() {
        ensure!(view.dtype() == Dtype::F32, "{}: tensor {name} is not float32", path.display());
        let Some((group, key)) = name.split_once('.') else {
            bail!("{}: unexpected tensor {name}", path.display())
        };
        ensure!(GROUPS.contains(&group), "{}: unexpected tensor {name}", path.display());
        let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
        let t = Tensor::from_data_size(view.data(), &shape, Kind::Float);
        groups.entry(group.to_string()).or_default().insert(key.to_string(), t);
    }
    ensure!(groups.contains_key("model"), "{}: holds no model weights", path.display());
    Ok(TrainState { meta, groups })
}

/// Checks every group of the state against the model's names and shapes.
pub fn check_against(path: &Path, state: &TrainState, expected: &Shapes) -> Result<()> {
    for (group, tensors) in &state.groups {
        let found: Vec<(String, Tensor)> =
            tensors.iter().map(|(k, t)| (k.clone(), t.shallow_clone())).collect();
        check_keys(path, expected, &found).with_context(|| format!("group {group}"))?;
    }
    Ok(())
}

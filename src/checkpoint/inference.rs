//! Loading a model to sample from: from a weight file of any format or from a training state,
//! with the config and class names the state (or a `.safetensors` weight file) records
//! ([`load_for_inference`]), and the sample command's `--label` resolved against those class
//! names ([`Loaded::resolve_label`]).

use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Result};
use tch::{nn::VarStore, Device};

use super::keys::{check_keys, copy_into, shapes};
use super::state::{self, LatentMeta, TrainState};
use super::{load_weights, read_tensors, Recorded};
use crate::config::Prediction;
use crate::{Config, Dit};

/// A model ready for sampling, and where its weights came from.
pub struct Loaded {
    pub config: Config,
    pub vs: VarStore,
    pub model: Dit,
    /// Class names in label order (empty when the checkpoint does not record them).
    pub classes: Vec<String>,
    /// One line for the user, e.g. "EMA weights of step 4000 from checkpoints/x.ot.state.safetensors".
    pub description: String,
    /// The file that records the target the model trained (its training state, or a
    /// `.safetensors` weight file's metadata) and that target, if any: that is what the
    /// weights mean, so another `--prediction` is refused ([`Loaded::set_prediction`]).
    pub trained_prediction: Option<(PathBuf, Prediction)>,
    /// For a latent-space model: its autoencoder and normalisation (from the training state,
    /// or from a `.safetensors` weight file's metadata).
    pub latent: Option<LatentMeta>,
}

impl Loaded {
    /// `--prediction`: what the model's output means. For a weight file that records no
    /// target (`.ot`, `.pth`, files `train` did not write) it sets the target; a training
    /// state or a `.safetensors` file from `train` records the target it trained, so another
    /// one there is an error naming both (the same one is accepted).
    pub fn set_prediction(&mut self, asked: Prediction) -> Result<()> {
        if let Some((origin, recorded)) = &self.trained_prediction {
            ensure!(
                asked == *recorded,
                "--prediction {}: {} records that this model was trained to predict {}; \
                 leave --prediction out (it is for weight files that record no target)",
                asked.name(),
                origin.display(),
                recorded.name()
            );
        }
        self.config.diffusion.prediction = asked;
        Ok(())
    }

    /// `--label`'s value: a label number, or a class name looked up in the checkpoint's
    /// classes; with its display text ("1 (red_panda)").
    pub fn resolve_label(&self, arg: &str) -> Result<(i64, String)> {
        let label_num = self.config.model.label_num;
        let label = match arg.parse::<i64>() {
            Ok(n) => n,
            Err(_) => match self.classes.iter().position(|c| c == arg) {
                Some(i) => i as i64,
                None if self.classes.is_empty() => bail!(
                    "--label {arg:?}: not a number, and the checkpoint records no class names; give a label in 0..{label_num}"
                ),
                None => {
                    bail!("--label {arg:?}: no such class; the checkpoint's classes are {}", self.classes.join(", "))
                }
            },
        };
        ensure!(
            (0..label_num).contains(&label),
            "--label {label}: out of range, the model has {label_num} label(s) (0..={})",
            label_num - 1
        );
        let text = match self.classes.get(label as usize) {
            Some(name) => format!("{label} ({name})"),
            None => label.to_string(),
        };
        Ok((label, text))
    }
}

/// Loads a model for inference from a weight file (`.ot`, `.safetensors`, `.pth`) or a
/// training-state file. When a training state sits beside the weight file (or is named), its
/// config is used and, with `ema`, its EMA weights; otherwise what a `.safetensors` weight
/// file records, and for the rest `config` (or `./config.json`, or the original's defaults).
pub fn load_for_inference(path: &Path, config: Option<&Path>, ema: bool, device: Device) -> Result<Loaded> {
    let is_state = path.to_string_lossy().ends_with(".state.safetensors");
    let state_file = if is_state {
        Some(path.to_path_buf())
    } else {
        Some(state::state_path(path)).filter(|p| p.is_file())
    };
    if !path.is_file() {
        bail!("{}: no such checkpoint", path.display());
    }
    match state_file {
        Some(state_file) => from_state(path, &state_file, config, ema, device),
        None => from_weights(path, config, device),
    }
}

/// A weight file with no training state. The sections it records ([`Recorded`]: a
/// `.safetensors` file `train` wrote) are used unless `config` names a config file; the rest
/// comes from `config`, `./config.json` or the original's defaults. Its class names and
/// latent space are its own, and a recorded prediction target fixes what the output means.
fn from_weights(path: &Path, config_file: Option<&Path>, device: Device) -> Result<Loaded> {
    let mut config = Config::resolve(config_file)?;
    let recorded = Recorded::read(path)?;
    let mut used = vec![];
    if config_file.is_none() {
        if let Some(model) = &recorded.model {
            config.model = model.clone();
            used.push("model");
        }
        if let Some(diffusion) = &recorded.diffusion {
            config.diffusion = diffusion.clone();
            used.push("diffusion");
        }
        if let Some(runtime) = recorded.runtime {
            config.runtime = runtime;
            used.push("runtime");
        }
    }
    check_latent(path, &config, recorded.latent.as_ref())?;
    let mut vs = VarStore::new(device);
    let model = Dit::new(&vs.root(), &config.model);
    load_weights(&mut vs, path)?;
    let description = match used.is_empty() {
        true => format!("weights from {}", path.display()),
        false => format!("weights from {} (with the {} it records)", path.display(), used.join(", ")),
    };
    let trained_prediction = recorded.diffusion.as_ref().map(|d| (path.to_path_buf(), d.prediction));
    let classes = recorded.classes.unwrap_or_default();
    Ok(Loaded { config, vs, model, classes, description, trained_prediction, latent: recorded.latent })
}

/// `path` (a weight file, or the state file itself) with its training state `state_file`: the
/// state's config unless `config` names one, and its EMA weights with `ema` when it has them.
fn from_state(
    path: &Path,
    state_file: &Path,
    config: Option<&Path>,
    ema: bool,
    device: Device,
) -> Result<Loaded> {
    let st = state::load(state_file)?;
    let config = match config {
        Some(c) => Config::load(c)?,
        None => st.meta.config.clone(),
    };
    let vs = VarStore::new(device);
    let model = Dit::new(&vs.root(), &config.model);
    state::check_against(state_file, &st, &shapes(&vs))?;
    let description = copy_chosen_weights(&vs, path, state_file, &st, ema)?;
    let trained_prediction = Some((state_file.to_path_buf(), st.meta.config.diffusion.prediction));
    let latent = st.meta.latent.clone();
    check_latent(state_file, &config, latent.as_ref())?;
    Ok(Loaded {
        config,
        vs,
        model,
        classes: st.meta.classes.clone(),
        description,
        trained_prediction,
        latent,
    })
}

/// A latent-space model samples only with the autoencoder and normalisation it trained with:
/// a config naming an autoencoder needs them recorded in `origin`, and recorded ones need the
/// config to name their autoencoder.
fn check_latent(origin: &Path, config: &Config, latent: Option<&LatentMeta>) -> Result<()> {
    match (config.model.autoencoder, latent) {
        (None, None) => Ok(()),
        (Some(ae), Some(l)) if ae.name() == l.autoencoder => Ok(()),
        (Some(ae), None) => bail!(
            "{}: model.autoencoder is {ae}, but the file records no latent normalisation; sample from the \
             training state (.state.safetensors) or a .safetensors weight file that train wrote",
            origin.display()
        ),
        (asked, Some(l)) => bail!(
            "{}: trained in the latent space of {}, but the config's model.autoencoder is {}; use the run's config",
            origin.display(),
            l.autoencoder,
            asked.map_or("none", |a| a.name())
        ),
    }
}

/// Copies the weights to sample with into `vs`: the state's EMA weights with `ema` (when it
/// has them), else its raw weights when `path` is the state file, else the weight file's.
/// Returns the description of what was loaded.
fn copy_chosen_weights(
    vs: &VarStore,
    path: &Path,
    state_file: &Path,
    st: &TrainState,
    ema: bool,
) -> Result<String> {
    let step = st.meta.step;
    let is_state = path == state_file;
    Ok(match (ema, st.group("ema")) {
        (true, Some(weights)) => {
            copy_into(vs, weights);
            format!("EMA weights of step {step} from {}", state_file.display())
        }
        _ if is_state => {
            copy_into(vs, st.group("model").expect("checked by state::load"));
            format!("raw weights of step {step} from {}", state_file.display())
        }
        _ => {
            let found = read_tensors(path)?;
            check_keys(path, &shapes(vs), &found)?;
            copy_into(vs, found.iter().map(|(n, t)| (n, t)));
            format!("weights from {} (config from {})", path.display(), state_file.display())
        }
    })
}

//! How a run starts: fresh, from a training state (exactly where it stopped), or from a weight
//! file alone (the original's "incremental" start: weights only, a fresh optimizer).

use std::path::{Path, PathBuf};

use anyhow::{ensure, Context, Result};
use tch::Device;

use super::data_identity::{self, DataChange};
use super::trainer::Trainer;
use crate::checkpoint;
use crate::checkpoint::state::{self, DataIdentity, LatentMeta, TrainMeta, TrainState};
use crate::config::{Config, LrSchedule};
use crate::rng::splitmix64;

/// Fails before any training when `dir` cannot take new files.
pub(super) fn check_writable(dir: &Path, what: &str) -> Result<()> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create the {what} folder {}", dir.display()))?;
    let probe = dir.join(format!(".write-test-{}", std::process::id()));
    std::fs::write(&probe, b"")
        .with_context(|| format!("the {what} folder {} is not writable", dir.display()))?;
    std::fs::remove_file(&probe).ok();
    Ok(())
}

/// Reads the training state beside `weights`, if any, and fits `cfg` to it: the architecture
/// and diffusion sections must be the state's; the "no label" row, once a run has it, stays;
/// the seed is the state's (or the config's, or a fresh one for a fresh run).
pub(super) fn read_state(weights: &Path, cfg: &mut Config) -> Result<Option<TrainState>> {
    let path = state::state_path(weights);
    let resumed = if path.is_file() { Some(state::load(&path)?) } else { None };
    cfg.model.null_label |=
        cfg.train.cfg_dropout > 0.0 || resumed.as_ref().is_some_and(|st| st.meta.config.model.null_label);
    if let Some(st) = &resumed {
        let old = &st.meta.config;
        ensure!(
            old.model.autoencoder == cfg.model.autoencoder,
            "{} was trained {}, and model.autoencoder now asks for {}; resume it as it was trained \
             (or train into another checkpoint path)",
            path.display(),
            space(&old.model),
            space(&cfg.model)
        );
        for (section, was, now) in [
            ("model", serde_json::to_value(&old.model)?, serde_json::to_value(&cfg.model)?),
            ("diffusion", serde_json::to_value(&old.diffusion)?, serde_json::to_value(&cfg.diffusion)?),
        ] {
            if let Some((field, was, now)) = first_difference(&was, &now) {
                anyhow::bail!(
                    "{} was trained with {section}.{field} = {was}, and the config now says {now}; resume it as it \
                     was trained (or train into another checkpoint path)",
                    path.display()
                );
            }
        }
    }
    cfg.train.seed = Some(choose_seed(resumed.as_ref(), cfg.train.seed)?);
    Ok(resumed)
}

/// The first field (in the section's order) whose value differs between two sections, with
/// both values as JSON.
fn first_difference(was: &serde_json::Value, now: &serde_json::Value) -> Option<(String, String, String)> {
    let (was, now) = (was.as_object()?, now.as_object()?);
    let null = serde_json::Value::Null;
    was.keys().chain(now.keys()).find_map(|k| {
        let (a, b) = (was.get(k).unwrap_or(&null), now.get(k).unwrap_or(&null));
        (a != b).then(|| (k.clone(), a.to_string(), b.to_string()))
    })
}

/// "in pixel space" or "in the latent space of taef2".
fn space(model: &crate::config::ModelConfig) -> String {
    match model.autoencoder {
        None => "in pixel space (model.autoencoder none)".to_string(),
        Some(ae) => format!("in the latent space of {ae} (model.autoencoder {ae})"),
    }
}

fn choose_seed(resumed: Option<&TrainState>, asked: Option<u64>) -> Result<u64> {
    Ok(match (resumed, asked) {
        (Some(st), Some(s)) if s != st.meta.seed => {
            eprintln!(
                "note: resuming with the checkpoint's seed {} (not {s}) so the run stays exact",
                st.meta.seed
            );
            st.meta.seed
        }
        (Some(st), _) => st.meta.seed,
        (None, Some(s)) => s,
        (None, None) => {
            splitmix64(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_nanos() as u64)
                >> 1
        }
    })
}

/// How the data compares with the resumed run's (`allow_change`: `--allow-data-change`, other
/// classes than the saved run's are a deliberate change); a refusal names the state file.
pub(super) fn check_data(
    cfg: &Config,
    resumed: Option<&TrainState>,
    classes: &[String],
    identity: &DataIdentity,
    allow_change: bool,
) -> Result<DataChange> {
    let Some(st) = resumed else { return Ok(DataChange::Same) };
    let state_path = state::state_path(Path::new(&cfg.train.model_save_path));
    data_identity::compare(&state_path, &st.meta, classes, identity, allow_change)
}

/// A weights-only start (a weight file with no training state beside it): the file must fit
/// the model, and one that records the space it was trained in (a `.safetensors` that `train`
/// wrote) must have been trained in this run's. Returns the autoencoder and normalisation it
/// records, if any.
pub(super) fn check_weights_only(weights: &Path, cfg: &Config) -> Result<Option<LatentMeta>> {
    if !weights.is_file() {
        return Ok(None);
    }
    let found = checkpoint::read_tensors(weights)?;
    checkpoint::check_keys(weights, &checkpoint::expected_shapes(&cfg.model), &found)?;
    // The model section records pixel space too (autoencoder null); a file without either
    // (.ot, .pth, or written elsewhere) says nothing, and its shapes were checked above.
    let recorded = checkpoint::Recorded::read(weights)?;
    let trained = match (&recorded.latent, &recorded.model) {
        (Some(l), _) => Some(l.autoencoder.clone()),
        (None, Some(model)) => model.autoencoder.map(|a| a.name().to_string()),
        (None, None) => return Ok(None),
    };
    let asked = cfg.model.autoencoder.map(|a| a.name().to_string());
    ensure!(
        trained == asked,
        "{}: its weights were trained {}, and model.autoencoder asks for {}; start from weights of this space \
         (or train into another checkpoint path)",
        weights.display(),
        trained.as_deref().map_or("in pixel space".to_string(), |a| format!("in the latent space of {a}")),
        asked.as_deref().map_or("pixel space".to_string(), |a| format!("the latent space of {a}"))
    );
    Ok(recorded.latent)
}

/// What a start knows of the data it is about to train on.
pub(super) struct DataAtStart {
    /// Class names, label order.
    pub classes: Vec<String>,
    pub identity: DataIdentity,
    /// Optimisation steps in one epoch of the current data, batch size and world size.
    pub steps_per_epoch: i64,
    /// How the data compares with a resumed run's ([`check_data`]).
    pub change: DataChange,
    /// In latent space: the autoencoder and normalisation of the latents.
    pub latent: Option<LatentMeta>,
}

/// The trainer for `cfg` (already fitted by [`read_state`]), fresh or restored, for a run of
/// `world_size` processes; `verbose` for the one that reports. A restored run keeps its
/// schedule's horizon ([`schedule_steps`]) and must train on the data it trained on
/// ([`data_identity::compare`]).
pub(super) fn start(
    cfg: Config,
    data: DataAtStart,
    resumed: Option<TrainState>,
    device: Device,
    world_size: i64,
    verbose: bool,
) -> Result<Trainer> {
    let weights_path = PathBuf::from(&cfg.train.model_save_path);
    let state_path = state::state_path(&weights_path);
    let change = data.change;
    let horizon = schedule_steps(&cfg, resumed.as_ref().map(|st| &st.meta), data.steps_per_epoch, verbose);
    let seed = cfg.train.seed.expect("read_state chose the seed");
    let meta = TrainMeta {
        world_size,
        schedule_steps: Some(horizon),
        data: Some(data.identity),
        latent: data.latent,
        ..TrainMeta::fresh(seed, data.classes, cfg)
    };
    let mut tr = Trainer::new(meta, device, weights_path.clone());
    if let Some(st) = &resumed {
        state::check_against(&state_path, st, &tr.shapes())?;
        tr.restore(st);
        let global_batch = tr.config().train.step_images() * world_size;
        tr.meta.batch_in_epoch = match &change {
            DataChange::Same | DataChange::Renamed(_) => position_in_epoch(st, global_batch, verbose),
            DataChange::Changed(_) => 0,
        };
        if verbose {
            println!(
                "resuming from {} at step {} (epoch {}, batch {})",
                state_path.display(),
                tr.meta.step,
                tr.meta.epoch + 1,
                tr.meta.batch_in_epoch
            );
            match &change {
                DataChange::Same => {}
                DataChange::Renamed(what) => {
                    println!(
                        "note: {what}; the same images and labels, so the epoch goes on where it stopped"
                    )
                }
                DataChange::Changed(what) => println!(
                    "note: the data changed since the checkpoint: {what}; epoch {} restarts at its beginning",
                    tr.meta.epoch + 1
                ),
            }
        }
    } else if weights_path.is_file() {
        tr.load_weights(&weights_path)?;
        if verbose {
            println!(
                "starting from the weights in {} with a fresh optimizer (no training state {} beside them)",
                weights_path.display(),
                state_path.display()
            );
        }
    }
    Ok(tr)
}

/// The learning-rate schedule's horizon: `train.schedule_steps` when set, else the saved
/// run's, else (a fresh run, or a file from before it was saved) `train.epoch` × steps per
/// epoch. `--max-steps` only stops a run, so a run stopped and resumed any number of times
/// follows the schedule of one uninterrupted run; changing `train.epoch` or the batch size on
/// resume leaves the horizon where it was (said when `verbose`).
fn schedule_steps(cfg: &Config, saved: Option<&TrainMeta>, steps_per_epoch: i64, verbose: bool) -> i64 {
    let derived = cfg.train.epoch * steps_per_epoch;
    let scheduled = cfg.train.lr_schedule != LrSchedule::Constant;
    let saved_run = saved.is_some();
    let saved = saved.and_then(|m| m.schedule_steps);
    match (cfg.train.schedule_steps, saved) {
        (Some(asked), Some(old)) if asked != old && scheduled && verbose => {
            println!("note: the learning-rate schedule's horizon moves from {old} to {asked} steps (train.schedule_steps)");
            asked
        }
        (Some(asked), _) => asked,
        (None, Some(old)) => {
            if derived != old && scheduled && verbose {
                println!(
                    "note: the learning-rate schedule keeps its horizon of {old} steps, fixed when the run began \
                     (train.epoch × steps per epoch is now {derived}); set train.schedule_steps to move it"
                );
            }
            old
        }
        (None, None) => {
            if saved_run && scheduled && verbose {
                println!(
                    "note: the training state has no saved schedule horizon (written before it was saved); \
                     the schedule now runs over train.epoch × steps per epoch = {derived} steps"
                );
            }
            derived
        }
    }
}

/// The batches of the current epoch already done, in batches of `global_batch` images: the
/// saved count when the batch is the saved run's (batch size × accumulated micro-batches ×
/// processes), else converted through the images done. When those are not a whole number of
/// new batches, the epoch goes on from the last batch boundary before them, so a few images
/// are seen twice this epoch (said when `verbose`).
fn position_in_epoch(st: &TrainState, global_batch: i64, verbose: bool) -> i64 {
    let m = &st.meta;
    let saved_batch = m.config.train.step_images() * m.world_size;
    if saved_batch == global_batch {
        return m.batch_in_epoch;
    }
    let images = m.batch_in_epoch * saved_batch;
    if verbose && images % global_batch != 0 {
        eprintln!(
            "note: {images} images of epoch {} were done in batches of {saved_batch}; batches of {global_batch} \
             go on from image {}, so {} images are seen twice this epoch",
            m.epoch + 1,
            images / global_batch * global_batch,
            images % global_batch
        );
    }
    images / global_batch
}

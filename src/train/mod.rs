//! Training as the original's `train.py` does it (docs/ORIGINAL.md §4–5), plus global-norm
//! gradient clipping, an EMA of the weights, a learning-rate schedule, cheap previews, and
//! checkpoints that resume exactly. The parts, in the order a run meets them:
//! [`resume`] (how it starts), [`trainer`] (the step), [`epoch`] (the loop, logs and
//! checkpoints), [`preview`] (samples after epochs); [`shard`] when torchrun starts several
//! processes (data parallelism).

mod data_identity;
mod epoch;
mod latents;
mod objective;
mod preview;
mod probe;
mod resume;
mod shard;
pub mod trainer;

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{ensure, Context, Result};
use tch::Device;

pub use trainer::{Draws, StepOutput, Trainer};

use crate::autoencoder;
use crate::checkpoint::{self, state};
use crate::config::{describe_flow, describe_objective, Config, Precision, Process};
use crate::data::{self, Dataset, Loader, Shard};
use crate::distributed::{self, ProcessGroup, World};

/// What the command line adds to the config.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub device: Device,
    /// Stop (checkpoint included) once the global step count reaches this.
    pub max_steps: Option<i64>,
    /// Where to write the preview grid PNG (default: beside the checkpoint).
    pub preview_png: Option<PathBuf>,
    /// Resume even when the data's classes are not the saved run's (fine-tuning on other or
    /// grown data); otherwise that is an error.
    pub allow_data_change: bool,
    /// This process's place when torchrun started several ([`World::from_env`]): each trains
    /// on its share of every batch of `train.batch_size` × world size images.
    pub world: Option<World>,
    /// `--autoencoder-dir`: where the autoencoder's weight files are looked up first.
    pub autoencoder_dir: Option<PathBuf>,
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Finished,
    MaxSteps,
    Interrupted,
}

/// Trains as configured; see the module documentation.
pub fn run(mut cfg: Config, opts: &RunOptions) -> Result<Outcome> {
    cfg.validate()?;
    let (device, pg) = join(opts)?;
    let main = pg.as_ref().is_none_or(|pg| pg.rank() == 0);
    let weights_path = PathBuf::from(&cfg.train.model_save_path);
    checkpoint::Format::from_path(&weights_path).context("train.model_save_path")?;
    if main {
        resume::check_writable(&crate::fs::parent(&weights_path), "checkpoint")?;
    }
    let resumed = resume::read_state(&weights_path, &mut cfg)?;
    if let Some(pg) = &pg {
        shard::agree_config(pg, &mut cfg)?;
    }

    let dataset = Arc::new(Dataset::open_as(&cfg.train.data_path, cfg.model.img_size, cfg.train.classes)?);
    let classes = dataset.class_names().to_vec();
    ensure!(
        classes.len() as i64 <= cfg.model.label_num,
        "the data has {} classes ({}) but model.label_num is {}",
        classes.len(),
        classes.join(", "),
        cfg.model.label_num
    );
    let t = &cfg.train;
    let world_size = pg.as_ref().map_or(1, ProcessGroup::world_size);
    check_step_size(t, world_size, dataset.len())?;
    let local_ranks = opts.world.as_ref().map_or(1, |w| w.local_world_size);
    let budget = data::cache_budget(t.cache_images, local_ranks);
    let identity = data_identity::identity(&dataset, &cfg.train.data_path);
    // Every check that can refuse the start comes before the latents are encoded.
    let change = resume::check_data(&cfg, resumed.as_ref(), &classes, &identity, opts.allow_data_change)?;
    let trained_latent = match &resumed {
        Some(st) => st.meta.latent.clone(),
        None => resume::check_weights_only(&weights_path, &cfg)?,
    };
    let probe = match cfg.train.eval.every_epochs {
        0 => None,
        _ if !main => None,
        _ => Some(probe::Probe::new(&dataset, cfg.train.eval.num)?),
    };
    let ae = latents::find(&cfg, opts.autoencoder_dir.as_deref(), trained_latent.as_ref(), &weights_path)?;
    let (mut loader, latent) = match ae {
        None => (
            Loader::new(dataset.clone(), t.step_images() as usize, t.num_workers as usize, budget.bytes)?,
            None,
        ),
        Some(ae) => {
            let decoder = autoencoder::load_decoder(&ae.located, ae.variant, device)?;
            let store = latents::store(&cfg, &ae, &dataset, &identity, device, pg.as_ref(), main)?;
            let latent = latents::decoder(&ae, decoder, &store, trained_latent.as_ref())?;
            (Loader::latent(dataset.clone(), store, t.step_images() as usize)?, Some(latent))
        }
    };
    loader = loader.with_hflip(t.hflip);
    if let Some(pg) = &pg {
        loader = loader.sharded(Shard { rank: pg.rank(), world: world_size })?;
    }
    let data = resume::DataAtStart {
        classes,
        identity,
        change,
        steps_per_epoch: loader.batches_per_epoch() as i64,
        latent: latent.as_ref().map(|(_, meta)| meta.clone()),
    };
    let mut tr = resume::start(cfg, data, resumed, device, world_size as i64, main)?;
    if let Some((decoder, _)) = latent {
        tr.set_latent(decoder);
    }
    if let Some(pg) = &pg {
        shard::replicate(&tr, pg)?;
    }
    if main {
        describe(&tr, &dataset, world_size);
        match tr.latent.is_some() {
            true => println!("image cache: {}", loader.cache_summary()),
            false => println!("image cache: {} (budget {})", loader.cache_summary(), budget.origin),
        }
    }
    if opts.max_steps.is_some_and(|m| tr.meta.step >= m) {
        if main {
            println!(
                "already at step {} (--max-steps {}); nothing to do",
                tr.meta.step,
                opts.max_steps.unwrap()
            );
        }
        return Ok(Outcome::MaxSteps);
    }
    epoch::train_epochs(&mut tr, opts, &loader, pg.as_ref(), probe.as_ref())
}

/// With gradient accumulation, one optimizer step must fit in the data: a step of
/// `grad_accum_steps × batch_size × world_size` images larger than the data set would repeat
/// nothing and only mean that the settings are wrong.
fn check_step_size(t: &crate::config::TrainConfig, world_size: usize, images: usize) -> Result<()> {
    let step = t.step_images() as usize * world_size;
    let processes = if world_size > 1 { format!(" × {world_size} processes") } else { String::new() };
    ensure!(
        t.grad_accum_steps == 1 || step <= images,
        "train.grad_accum_steps {} × train.batch_size {}{processes} = {step} images per optimizer step, more than \
         the {images} images of the data; lower train.grad_accum_steps",
        t.grad_accum_steps,
        t.batch_size
    );
    Ok(())
}

/// The training device, and the process group when torchrun started more than one process:
/// Gloo on the CPU, NCCL on `cuda:LOCAL_RANK`.
fn join(opts: &RunOptions) -> Result<(Device, Option<ProcessGroup>)> {
    let Some(world) = opts.world.as_ref().filter(|w| w.world_size > 1) else {
        return Ok((opts.device, None));
    };
    let device = match opts.device {
        Device::Cuda(_) => Device::Cuda(world.local_rank),
        other => other,
    };
    let backend = distributed::Backend::auto(device);
    let pg = ProcessGroup::new(world, backend, device, distributed::Options::default())?;
    Ok((device, Some(pg)))
}

/// The model as PyTorch prints it, then the run's data, device, seed and files.
fn describe(tr: &Trainer, dataset: &Dataset, world_size: usize) {
    println!("{}", tr.model);
    println!(
        "{} parameters; data: {}; device: {:?}; seed {}",
        tr.params.iter().map(|p| p.numel()).sum::<usize>(),
        dataset.describe(),
        tr.device,
        tr.meta.seed
    );
    let precision = if tr.config().runtime.precision == Precision::Auto { " (precision auto)" } else { "" };
    println!("compute: {}{precision}", tr.model.compute());
    let t = &tr.config().train;
    let d = &tr.config().diffusion;
    let objective = match d.process {
        Process::Ddpm => {
            describe_objective(tr.schedule.prediction, t.loss, t.loss_weighting, t.min_snr_gamma)
        }
        Process::Flow => describe_flow(d.timestep_sampling, t.loss, t.cosine_loss),
    };
    println!("objective: {objective}");
    let (b, k) = (t.batch_size, t.grad_accum_steps);
    let per_process = if k > 1 { format!("{k} micro-batches of {b}") } else { format!("batch {b}") };
    let step = t.step_images() * world_size as i64;
    if world_size > 1 {
        println!("data parallel: {world_size} processes × {per_process} = {step} images per step");
    } else if k > 1 {
        println!("gradient accumulation: {per_process} = {step} images per step");
    }
    if dataset.class_names().len() > 1 {
        println!("classes (label order): {}", dataset.class_names().join(", "));
    }
    println!(
        "checkpoints: {} (+ {}); TensorBoard logs: {}",
        tr.weights_path.display(),
        state::state_path(&tr.weights_path).display(),
        tr.config().train.logdir
    );
}

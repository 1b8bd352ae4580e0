//! Training as the original's `train.py` does it (docs/ORIGINAL.md §4–5), plus global-norm
//! gradient clipping, an EMA of the weights, a learning-rate schedule, cheap previews, and
//! checkpoints that resume exactly. The parts, in the order a run meets them:
//! [`resume`] (how it starts), [`trainer`] (the step), [`epoch`] (the loop, logs and
//! checkpoints), [`preview`] (samples after epochs).

mod epoch;
mod preview;
mod resume;
pub mod trainer;

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{ensure, Context, Result};
use tch::Device;

pub use trainer::{Draws, StepOutput, Trainer};

use crate::checkpoint::{self, state};
use crate::config::Config;
use crate::data::{Dataset, Loader};

/// What the command line adds to the config.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub device: Device,
    /// Stop (checkpoint included) once the global step count reaches this.
    pub max_steps: Option<i64>,
    /// Where to write the preview grid PNG (default: beside the checkpoint).
    pub preview_png: Option<PathBuf>,
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
    let weights_path = PathBuf::from(&cfg.train.model_save_path);
    checkpoint::Format::from_path(&weights_path).context("train.model_save_path")?;
    resume::check_writable(&resume::parent(&weights_path), "checkpoint")?;
    let resumed = resume::read_state(&weights_path, &mut cfg)?;

    let dataset = Arc::new(Dataset::open(&cfg.train.data_path, cfg.model.img_size)?);
    let classes = dataset.class_names().to_vec();
    ensure!(
        classes.len() as i64 <= cfg.model.label_num,
        "the data has {} classes ({}) but model.label_num is {}",
        classes.len(),
        classes.join(", "),
        cfg.model.label_num
    );
    let t = &cfg.train;
    let loader = Loader::new(dataset.clone(), t.batch_size as usize, t.num_workers as usize, t.cache_images)?;
    let mut tr = resume::start(cfg, classes, resumed, opts.device)?;
    describe(&tr, &dataset);
    if opts.max_steps.is_some_and(|m| tr.meta.step >= m) {
        println!("already at step {} (--max-steps {}); nothing to do", tr.meta.step, opts.max_steps.unwrap());
        return Ok(Outcome::MaxSteps);
    }
    epoch::train_epochs(&mut tr, opts, &loader)
}

/// The model as PyTorch prints it, then the run's data, device, seed and files.
fn describe(tr: &Trainer, dataset: &Dataset) {
    println!("{}", tr.model);
    println!(
        "{} parameters; data: {}; device: {:?}; seed {}",
        tr.params.iter().map(|p| p.numel()).sum::<usize>(),
        dataset.describe(),
        tr.device,
        tr.meta.seed
    );
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

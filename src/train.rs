//! The training loop of the original's `train.py` (REFERENCE.md §4–5): x0 = image·2 − 1,
//! t ~ U{0…T−1}, x_t by DDPM eq. 4, L1 between the noise and the model's prediction, Adam.
//! Added: global-norm gradient clipping, an EMA of the weights, a learning-rate schedule,
//! cheap DDIM previews, and checkpoints that resume exactly (weights, EMA, Adam's moments,
//! counters and the seed, in one atomically written state file beside the weights).
//!
//! Every random draw of step s comes from `manual_seed(step_seed(seed, s))` and the data order
//! of epoch e from (seed, e), so a run stopped after k steps and restarted gives bit for bit
//! the weights of an uninterrupted run.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use tch::{nn::VarStore, Device, Kind, Tensor};

use crate::checkpoint::{self, state, state::TrainMeta};
use crate::config::{Config, LabelInit, SamplerKind};
use crate::data::{Dataset, Loader};
use crate::diffusion::Schedule;
use crate::optim::{self, Adam, Ema};
use crate::sampling::{self, Normalize, SampleOptions, Sampler};
use crate::tensorboard::Logger;
use crate::Dit;

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

/// Tiles per row of the TensorBoard preview grid (torchvision's make_grid default).
const PREVIEW_GRID_ROW: i64 = 8;

/// SplitMix64 (Steele et al. 2014): a fast, well-mixed 64-bit hash.
pub fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The libtorch seed of global step `step`.
fn step_seed(seed: u64, step: i64) -> i64 {
    (splitmix64(seed ^ splitmix64(step as u64)) >> 1) as i64
}

/// Training state held in memory.
struct Trainer {
    cfg: Config,
    device: Device,
    /// Owns the variables that `model` and `params` share.
    _vs: VarStore,
    model: Dit,
    names: Vec<String>,
    params: Vec<Tensor>,
    adam: Adam,
    ema: Option<Ema>,
    schedule: Schedule,
    meta: TrainMeta,
    weights_path: PathBuf,
}

impl Trainer {
    fn named(&self, tensors: &[Tensor]) -> Vec<(String, Tensor)> {
        self.names.iter().cloned().zip(tensors.iter().map(Tensor::shallow_clone)).collect()
    }

    /// Writes the state file, then the weights in the chosen format; each atomically.
    fn save(&self) -> Result<()> {
        let model = self.named(&self.params);
        let ema = self.ema.as_ref().map(|e| self.named(&e.shadow)).unwrap_or_default();
        let m = self.named(&self.adam.exp_avg);
        let v = self.named(&self.adam.exp_avg_sq);
        let groups: [(&str, &[(String, Tensor)]); 4] =
            [("model", &model), ("ema", &ema), ("adam_m", &m), ("adam_v", &v)];
        state::save(&state::state_path(&self.weights_path), &self.meta, &groups)?;
        checkpoint::write_tensors(&self.weights_path, &model)
    }

    /// One optimisation step; returns (loss, prediction, noise, gradient norm) on the device.
    fn step(&mut self, images: &Tensor, labels: &Tensor) -> (Tensor, Tensor, Tensor, Tensor) {
        tch::manual_seed(step_seed(self.meta.seed, self.meta.step));
        let b = images.size()[0];
        let x0 = images.to_device(self.device).to_kind(Kind::Float) / 255.0 * 2.0 - 1.0; // (B, C, I, I)
        let labels = labels.to_device(self.device);
        let t = Tensor::randint(self.schedule.max_t, [b], (Kind::Int64, Device::Cpu)).to_device(self.device);
        let (xt, noise) = self.schedule.add_noise(&x0, &t);
        // Classifier-free guidance training: some labels become "no label" (drawn after the
        // original's draws, and only when enabled, so the original's random order is kept).
        let p = self.cfg.train.cfg_dropout;
        let labels = if p > 0.0 {
            let drop = Tensor::rand([b], (Kind::Float, Device::Cpu)).lt(p).to_device(self.device);
            labels.masked_fill(&drop, self.cfg.model.label_num)
        } else {
            labels
        };
        let pred = self.model.forward(&xt, &labels, &t);
        let loss = pred.l1_loss(&noise, tch::Reduction::Mean);
        optim::zero_grad(&self.params);
        loss.backward();
        let grad_norm = optim::clip_grad_norm(&self.params, self.cfg.train.grad_clip);
        (loss, pred.detach(), noise, grad_norm)
    }

    fn apply(&mut self, lr: f64) {
        self.adam.step(&self.params, lr);
        if let Some(ema) = &mut self.ema {
            ema.update(&self.params);
        }
    }
}

/// Fails before any training when `dir` cannot take new files.
fn check_writable(dir: &Path, what: &str) -> Result<()> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create the {what} folder {}", dir.display()))?;
    let probe = dir.join(format!(".write-test-{}", std::process::id()));
    std::fs::write(&probe, b"")
        .with_context(|| format!("the {what} folder {} is not writable", dir.display()))?;
    std::fs::remove_file(&probe).ok();
    Ok(())
}

fn parent(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Trains as configured; see the module documentation.
pub fn run(mut cfg: Config, opts: &RunOptions) -> Result<Outcome> {
    cfg.validate()?;
    let weights_path = PathBuf::from(&cfg.train.model_save_path);
    checkpoint::Format::from_path(&weights_path).context("train.model_save_path")?;
    check_writable(&parent(&weights_path), "checkpoint")?;
    let state_path = state::state_path(&weights_path);

    // Resume: the state file is authoritative; its architecture must be the config's.
    let resumed = if state_path.is_file() { Some(state::load(&state_path)?) } else { None };
    // Label dropout needs the extra "no label" row; once a run has it, it keeps it.
    cfg.model.null_label |=
        cfg.train.cfg_dropout > 0.0 || resumed.as_ref().is_some_and(|st| st.meta.config.model.null_label);
    if let Some(st) = &resumed {
        let old = &st.meta.config;
        ensure!(
            // How attention is computed is not part of the weights.
            crate::config::ModelConfig {
                attention: cfg.model.attention,
                precision: cfg.model.precision,
                ..old.model.clone()
            } == cfg.model,
            "{} was trained with a different model section ({}); use its config or another checkpoint path",
            state_path.display(),
            serde_json::to_string(&old.model)?
        );
        ensure!(
            old.diffusion == cfg.diffusion,
            "{} was trained with a different diffusion section ({})",
            state_path.display(),
            serde_json::to_string(&old.diffusion)?
        );
    }
    let seed = match (&resumed, cfg.train.seed) {
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
    };
    cfg.train.seed = Some(seed);

    let dataset = Arc::new(Dataset::open(&cfg.train.data_path, cfg.model.img_size)?);
    let classes = dataset.class_names().to_vec();
    ensure!(
        classes.len() as i64 <= cfg.model.label_num,
        "the data has {} classes ({}) but model.label_num is {}",
        classes.len(),
        classes.join(", "),
        cfg.model.label_num
    );
    let loader = Loader::new(
        dataset.clone(),
        cfg.train.batch_size as usize,
        cfg.train.num_workers as usize,
        cfg.train.cache_images,
    )?;
    let batches_per_epoch = loader.batches_per_epoch() as i64;

    tch::manual_seed(step_seed(seed, -1));
    let device = opts.device;
    let mut vs = VarStore::new(device);
    let model = Dit::new(&vs.root(), &cfg.model);
    if cfg.train.label_init == LabelInit::Shared {
        model.share_label_rows(); // a resumed or weights-only start overwrites it below
    }
    let (names, params): (Vec<String>, Vec<Tensor>) = checkpoint::named_variables(&vs).into_iter().unzip();
    let mut adam = Adam::new(&params);
    let mut meta = TrainMeta {
        step: 0,
        epoch: 0,
        batch_in_epoch: 0,
        seed,
        classes: classes.clone(),
        config: cfg.clone(),
    };
    let expected = checkpoint::expected_shapes(&cfg.model);
    let mut ema_init: Option<Vec<Tensor>> = None;
    if let Some(st) = &resumed {
        state::check_against(&state_path, st, &expected)?;
        checkpoint::copy_into(&vs, st.group("model").expect("state::load checks it"));
        if let (Some(m), Some(v)) = (st.group("adam_m"), st.group("adam_v")) {
            for (i, name) in names.iter().enumerate() {
                adam.exp_avg[i] = m[name].to_device(device);
                adam.exp_avg_sq[i] = v[name].to_device(device);
            }
            adam.step = st.meta.step;
        }
        ema_init = st.group("ema").map(|g| names.iter().map(|n| g[n].to_device(device)).collect());
        meta.step = st.meta.step;
        meta.epoch = st.meta.epoch;
        meta.batch_in_epoch = st.meta.batch_in_epoch;
        println!(
            "resuming from {} at step {} (epoch {}, batch {})",
            state_path.display(),
            meta.step,
            meta.epoch + 1,
            meta.batch_in_epoch
        );
    } else if weights_path.is_file() {
        checkpoint::load_weights(&mut vs, &weights_path)?;
        println!(
            "starting from the weights in {} with a fresh optimizer (no training state {} beside them)",
            weights_path.display(),
            state_path.display()
        );
    }
    let ema = match ema_init {
        Some(shadow) if cfg.train.ema_decay > 0.0 => Some(Ema { decay: cfg.train.ema_decay, shadow }),
        _ => (cfg.train.ema_decay > 0.0).then(|| Ema::new(&params, cfg.train.ema_decay)),
    };
    let schedule = Schedule::new(&cfg.diffusion, device);
    let tr = Trainer { cfg, device, _vs: vs, model, names, params, adam, ema, schedule, meta, weights_path };
    run_loop(tr, opts, &dataset, &loader, batches_per_epoch)
}

fn run_loop(
    mut tr: Trainer,
    opts: &RunOptions,
    dataset: &Dataset,
    loader: &Loader,
    batches_per_epoch: i64,
) -> Result<Outcome> {
    let cfg = tr.cfg.clone();
    let device = tr.device;
    let mut tb = Logger::create(Path::new(&cfg.train.logdir))?;
    tb.graph(&crate::tensorboard::dit_graph(&cfg.model))?;

    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        // A second signal while saving ends the process at once.
        signal_hook::flag::register_conditional_shutdown(signal, 130, stop.clone())?;
        signal_hook::flag::register(signal, stop.clone())?;
    }

    println!("{}", tr.model);
    println!(
        "{} parameters; data: {}; device: {device:?}; seed {}",
        tr.params.iter().map(|p| p.numel()).sum::<usize>(),
        dataset.describe(),
        tr.meta.seed
    );
    if dataset.class_names().len() > 1 {
        println!("classes (label order): {}", dataset.class_names().join(", "));
    }
    println!(
        "checkpoints: {} (+ {}); TensorBoard logs: {}",
        tr.weights_path.display(),
        state::state_path(&tr.weights_path).display(),
        cfg.train.logdir
    );

    let total_steps = opts.max_steps.unwrap_or(cfg.train.epoch * batches_per_epoch);
    let interactive = std::io::stderr().is_terminal();
    if opts.max_steps.is_some_and(|m| tr.meta.step >= m) {
        println!("already at step {} (--max-steps {}); nothing to do", tr.meta.step, opts.max_steps.unwrap());
        return Ok(Outcome::MaxSteps);
    }

    while tr.meta.epoch < cfg.train.epoch {
        let epoch = tr.meta.epoch;
        let skip = tr.meta.batch_in_epoch;
        let bar =
            if interactive { ProgressBar::new(batches_per_epoch as u64) } else { ProgressBar::hidden() };
        bar.set_style(
            ProgressStyle::with_template(
                "Epoch {prefix} [{wide_bar}] {pos}/{len} {msg} [{elapsed_precise}<{eta_precise}]",
            )
            .expect("a valid template")
            .progress_chars("=> "),
        );
        bar.set_prefix(format!("{}/{}", epoch + 1, cfg.train.epoch));
        bar.set_position(skip as u64);
        let (mut loss_sum, mut batches, mut images_seen) = (0.0, 0i64, 0i64);
        let (mut wait, epoch_start) = (Duration::ZERO, Instant::now());
        let mut last_line = Instant::now();
        let mut outcome = None;
        let mut skipped = 0;
        for batch in loader.epoch(tr.meta.seed, epoch as u64, skip as usize) {
            let batch = batch?;
            wait += batch.wait;
            let lr = optim::learning_rate(&cfg.train, tr.meta.step, total_steps);
            let (loss, pred, noise, grad_norm) = tr.step(&batch.images, &batch.labels);
            let loss_value = loss.double_value(&[]);
            let grad_norm_value = grad_norm.double_value(&[]);
            if !loss_value.is_finite() || !grad_norm_value.is_finite() {
                ensure!(
                    cfg.train.skip_nonfinite,
                    "the loss became {loss_value} (gradient norm {grad_norm_value}) at step {}; stopped without saving, so {} still holds the last good checkpoint (lower train.lr, or set train.skip_nonfinite)",
                    tr.meta.step,
                    tr.weights_path.display()
                );
                eprintln!(
                    "warning: skipping step {}: loss {loss_value}, gradient norm {grad_norm_value}",
                    tr.meta.step
                );
                skipped += 1;
                tr.meta.step += 1;
                tr.meta.batch_in_epoch = batch.position as i64 + 1;
                bar.inc(1);
                continue;
            }
            tr.apply(lr);
            let step = tr.meta.step;
            tb.scalar("Loss/batch", step, loss_value)?;
            tb.scalar("train/lr", step, lr)?;
            tb.scalar("train/grad_norm", step, grad_norm_value)?;
            if step % cfg.train.histogram_every == 0 {
                tb.histogram("noise_prediction", step, &pred)?;
                tb.histogram("target_noise", step, &noise)?;
            }
            tr.meta.step += 1;
            // A batch whose every image failed to load is never yielded: count positions.
            tr.meta.batch_in_epoch = batch.position as i64 + 1;
            loss_sum += loss_value;
            batches += 1;
            images_seen += batch.images.size()[0];
            let rate = images_seen as f64 / epoch_start.elapsed().as_secs_f64();
            bar.set_message(format!("loss {loss_value:.4} {rate:.1} img/s"));
            bar.inc(1);
            if !interactive && last_line.elapsed() > Duration::from_secs(10) {
                println!(
                    "epoch {}/{} batch {}/{batches_per_epoch} step {} loss {loss_value:.4} {rate:.1} img/s",
                    epoch + 1,
                    cfg.train.epoch,
                    tr.meta.batch_in_epoch,
                    tr.meta.step
                );
                last_line = Instant::now();
            }
            if stop.load(Ordering::SeqCst) {
                outcome = Some(Outcome::Interrupted);
                break;
            }
            if opts.max_steps.is_some_and(|m| tr.meta.step >= m) {
                outcome = Some(Outcome::MaxSteps);
                break;
            }
        }
        bar.finish_and_clear();
        let elapsed = epoch_start.elapsed().as_secs_f64();
        if skipped > 0 {
            eprintln!("warning: {skipped} step(s) of epoch {} skipped for a non-finite loss", epoch + 1);
        }
        if batches > 0 {
            tb.scalar("train/images_per_sec", tr.meta.step, images_seen as f64 / elapsed)?;
            tb.scalar("train/data_wait_share", tr.meta.step, wait.as_secs_f64() / elapsed)?;
        }
        // An epoch ends when its batches run out, or when a stop falls on its last batch.
        if outcome.is_none() || tr.meta.batch_in_epoch >= batches_per_epoch {
            if batches > 0 {
                let mean = loss_sum / batches as f64;
                tb.scalar("Loss/epoch", epoch, mean)?;
                println!(
                    "epoch {}/{}: mean loss {mean:.5} over {batches} batches, {:.1} img/s, data wait {:.1}%",
                    epoch + 1,
                    cfg.train.epoch,
                    images_seen as f64 / elapsed,
                    100.0 * wait.as_secs_f64() / elapsed
                );
            }
            tr.meta.epoch += 1;
            tr.meta.batch_in_epoch = 0;
            let every = cfg.train.preview.every_epochs;
            if every > 0 && (epoch + 1) % every == 0 {
                let started = Instant::now();
                let path = preview(&tr, &mut tb, epoch, opts)?;
                println!("preview: {} ({:.1} s)", path.display(), started.elapsed().as_secs_f64());
            }
        }
        tr.save()?;
        tb.flush()?;
        if let Some(outcome) = outcome {
            let why = if outcome == Outcome::Interrupted { "interrupted" } else { "reached --max-steps" };
            println!("{why} at step {}: saved {}", tr.meta.step, tr.weights_path.display());
            return Ok(outcome);
        }
    }
    println!("finished {} epochs; weights in {}", cfg.train.epoch, tr.weights_path.display());
    Ok(Outcome::Finished)
}

/// Samples the preview with the EMA weights (swapped in, then back out), logs the original's
/// 16-state grid of the first image as `Generated Images` and writes a grid of all previews.
fn preview(tr: &Trainer, tb: &mut Logger, epoch: i64, opts: &RunOptions) -> Result<PathBuf> {
    let cfg = &tr.cfg;
    let p = &cfg.train.preview;
    let sampler = match p.sampler {
        SamplerKind::Ddpm => Sampler::Ddpm,
        SamplerKind::Ddim => Sampler::Ddim { eta: 0.0 },
    };
    let options =
        SampleOptions { sampler, steps: p.steps, keep: sampling::progress_indices(p.steps), guidance: None };
    // The same noise every time, so previews show training progress, not new draws.
    tch::manual_seed(step_seed(tr.meta.seed, -2));
    let (m, n) = (&cfg.model, p.num);
    let noise = Tensor::randn([n, m.channel, m.img_size, m.img_size], (Kind::Float, Device::Cpu))
        .to_device(tr.device);
    let classes = (tr.meta.classes.len() as i64).max(1);
    let labels = Tensor::arange(n, (Kind::Int64, tr.device)).remainder(classes);

    let backup: Option<Vec<Tensor>> = tr.ema.as_ref().map(|ema| {
        tch::no_grad(|| {
            tr.params
                .iter()
                .zip(&ema.shadow)
                .map(|(p, e)| {
                    let saved = p.detach().copy();
                    p.shallow_clone().copy_(e);
                    saved
                })
                .collect()
        })
    });
    let result = sampling::sample(&tr.model, &tr.schedule, &options, noise, &labels, &mut |_, _| {});
    if let Some(backup) = backup {
        tch::no_grad(|| tr.params.iter().zip(&backup).for_each(|(p, b)| p.shallow_clone().copy_(b)));
    }
    let (images, states) = result?;

    let first: Vec<Tensor> = states.iter().map(|s| s.get(0)).collect();
    let grid = sampling::to_image_grid(&Tensor::stack(&first, 0), PREVIEW_GRID_ROW, Normalize::MinMax);
    tb.image("Generated Images", epoch, &grid)?;
    let path = opts.preview_png.clone().unwrap_or_else(|| {
        let mut name = tr.weights_path.as_os_str().to_owned();
        name.push(".preview.png");
        PathBuf::from(name)
    });
    let nrow = (n as f64).sqrt().ceil() as i64;
    sampling::save_png(&sampling::to_image_grid(&images, nrow, Normalize::Fixed), &path)?;
    Ok(path)
}

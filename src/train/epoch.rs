//! The loop over epochs and batches: one step per batch, the logs of each step and epoch,
//! previews, and a checkpoint at the end of epochs (every one, or as `train.save_every` and
//! `train.save_every_minutes` say) and whenever the run stops.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Result};

use super::probe::Probe;
use super::trainer::{StepOutput, Trainer};
use super::{preview, Outcome, RunOptions};
use crate::data::{Batch, Loader};
use crate::distributed::ProcessGroup;
use crate::optim;
use crate::progress::Progress;
use crate::tensorboard::Logger;

/// What the batches of one epoch added up to.
#[derive(Default)]
struct EpochTotals {
    loss_sum: f64,
    batches: i64,
    images: i64,
    skipped: i64,
    wait: Duration,
}

/// SIGINT and SIGTERM set the returned flag; a second one while saving ends the process.
fn stop_flag() -> Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register_conditional_shutdown(signal, 130, stop.clone())?;
        signal_hook::flag::register(signal, stop.clone())?;
    }
    Ok(stop)
}

/// How long the other ranks of a data-parallel run wait at the end of an epoch while rank 0
/// writes the checkpoint and draws the preview (which can take long on a CPU). A rank that
/// dies meanwhile still fails the wait at once.
const RANK0_WORK_TIMEOUT: Duration = Duration::from_secs(6 * 3600);

/// Trains until the last epoch, `--max-steps`, or a signal, saving at the end of the epochs
/// [`crate::config::TrainConfig::save_due`] names and always when the run ends. In a
/// data-parallel run (`pg`), rank 0 alone writes logs, previews and checkpoints, and all ranks
/// stop at the same step.
pub(super) fn train_epochs(
    tr: &mut Trainer,
    opts: &RunOptions,
    loader: &Loader,
    pg: Option<&ProcessGroup>,
    probe: Option<&Probe>,
) -> Result<Outcome> {
    let cfg = tr.config().clone();
    let main = pg.is_none_or(|pg| pg.rank() == 0);
    let mut tb = if main {
        let mut tb = Logger::create(Path::new(&cfg.train.logdir))?;
        tb.graph(&crate::model::dit_graph(&cfg.model))?;
        Some(tb)
    } else {
        None
    };
    let stop = stop_flag()?;
    let per_epoch = loader.batches_per_epoch() as i64;
    let total_steps = tr.meta.schedule_steps.expect("resume::start fixes the horizon");
    let mut last_save = Instant::now();
    while tr.meta.epoch < cfg.train.epoch {
        let epoch = tr.meta.epoch;
        let started = Instant::now();
        let (totals, outcome) = run_epoch(tr, tb.as_mut(), loader, total_steps, &stop, opts.max_steps, pg)?;
        let elapsed = started.elapsed().as_secs_f64();
        if totals.skipped > 0 {
            eprintln!(
                "warning: {} step(s) of epoch {} skipped for a non-finite loss",
                totals.skipped,
                epoch + 1
            );
        }
        if let (Some(tb), true) = (tb.as_mut(), totals.batches > 0) {
            tb.scalar("train/images_per_sec", tr.meta.step, totals.images as f64 / elapsed)?;
            tb.scalar("train/data_wait_share", tr.meta.step, totals.wait.as_secs_f64() / elapsed)?;
        }
        // An epoch ends when its batches run out, or when a stop falls on its last batch.
        if outcome.is_none() || tr.meta.batch_in_epoch >= per_epoch {
            end_epoch(tr, tb.as_mut(), &totals, elapsed, opts, probe)?;
        }
        if let Some(tb) = tb.as_mut() {
            // A stop and the last epoch always save; other epochs when the config says so.
            let last = tr.meta.epoch >= cfg.train.epoch;
            if outcome.is_some() || last || cfg.train.save_due(tr.meta.epoch, last_save.elapsed()) {
                tr.save()?;
                last_save = Instant::now();
            }
            tb.flush()?;
        }
        if let Some(pg) = pg {
            pg.barrier_within(RANK0_WORK_TIMEOUT)?;
        }
        if let Some(outcome) = outcome {
            let why = if outcome == Outcome::Interrupted { "interrupted" } else { "reached --max-steps" };
            if main {
                println!("{why} at step {}: saved {}", tr.meta.step, tr.weights_path.display());
            }
            return Ok(outcome);
        }
    }
    if main {
        println!("finished {} epochs; weights in {}", cfg.train.epoch, tr.weights_path.display());
    }
    Ok(Outcome::Finished)
}

/// The batches of the current epoch from where it stands; `Some` when the run stops inside it.
/// With `tb` (rank 0, or a single process) it logs and shows progress; with `pg` the step is
/// data-parallel and the stop decision is the ranks' common one.
fn run_epoch(
    tr: &mut Trainer,
    mut tb: Option<&mut Logger>,
    loader: &Loader,
    total_steps: i64,
    stop: &AtomicBool,
    max_steps: Option<i64>,
    pg: Option<&ProcessGroup>,
) -> Result<(EpochTotals, Option<Outcome>)> {
    let (epoch, epochs, per_epoch) = (tr.meta.epoch, tr.config().train.epoch, loader.batches_per_epoch());
    let mut bar = tb.is_some().then(|| {
        Progress::new(
            &format!("Epoch {}/{epochs}", epoch + 1),
            per_epoch as u64,
            tr.meta.batch_in_epoch as u64,
        )
    });
    let mut totals = EpochTotals::default();
    let started = Instant::now();
    for batch in loader.epoch(tr.meta.seed, epoch as u64, tr.meta.batch_in_epoch as usize) {
        let batch = batch?;
        totals.wait += batch.wait;
        let lr = optim::learning_rate(&tr.config().train, tr.meta.step, total_steps);
        let (out, stop_now) = match pg {
            Some(pg) => {
                let step = guarded_step(tr, |tr| tr.step_shard(&batch, pg, stop.load(Ordering::SeqCst)))?;
                (step.out, step.stop)
            }
            None => (guarded_step(tr, |tr| Ok(tr.step(&batch.images, &batch.labels)))?, false),
        };
        let loss = out.loss.double_value(&[]);
        if let Some(loss) = apply_or_skip(tr, &out, loss, lr)? {
            if let Some(tb) = tb.as_deref_mut() {
                log_step(tb, tr, &out, loss, lr)?;
            }
            totals.loss_sum += loss;
            totals.batches += 1;
            totals.images += if pg.is_some() { batch.global_len as i64 } else { batch.images.size()[0] };
        } else {
            totals.skipped += 1;
        }
        finish_step(tr, &batch);
        let rate = totals.images as f64 / started.elapsed().as_secs_f64();
        if let Some(bar) = bar.as_mut() {
            bar.set(tr.meta.batch_in_epoch as u64, || {
                let (b, s) = (tr.meta.batch_in_epoch, tr.meta.step);
                format!(
                    "epoch {}/{epochs} batch {b}/{per_epoch} step {s} loss {loss:.4} {rate:.1} img/s",
                    epoch + 1
                )
            });
        }
        let outcome = if stop_now || (pg.is_none() && stop.load(Ordering::SeqCst)) {
            Some(Outcome::Interrupted)
        } else if max_steps.is_some_and(|m| tr.meta.step >= m) {
            Some(Outcome::MaxSteps)
        } else {
            None
        };
        if outcome.is_some() {
            bar.iter().for_each(Progress::finish);
            return Ok((totals, outcome));
        }
    }
    bar.iter().for_each(Progress::finish);
    Ok((totals, None))
}

/// The step, with a device that runs out of memory turned into an error that names the batch
/// size (libtorch reports it as a panic inside tch). Nothing is saved, so the last checkpoint
/// stays as it was.
fn guarded_step<T>(tr: &mut Trainer, step: impl FnOnce(&mut Trainer) -> Result<T>) -> Result<T> {
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| step(&mut *tr)));
    result.map_err(|payload| {
        let text = payload.downcast_ref::<String>().map_or("", String::as_str);
        let first = text.lines().next().unwrap_or_default();
        if first.contains("out of memory") || first.contains("can't allocate memory") {
            let asked = first.split_once("Tried to allocate ").map_or("", |(_, r)| r.split(". ").next().unwrap_or(""));
            let kept = if tr.weights_path.exists() {
                format!("{} is as it was", tr.weights_path.display())
            } else {
                "nothing was saved".to_string()
            };
            anyhow::anyhow!(
                "the {:?} device ran out of memory for train.batch_size {}{} at step {}; lower train.batch_size \
                 (raise train.grad_accum_steps to keep the step's size), set runtime.activation_checkpointing \
                 to blocks, or use --precision bf16 ({kept})",
                tr.device(),
                tr.config().train.batch_size,
                if asked.is_empty() { String::new() } else { format!(" (asked for {asked} more)") },
                tr.meta.step,
            )
        } else {
            std::panic::resume_unwind(payload)
        }
    })?
}

/// Applies the step when its loss and gradient norm are finite and returns the loss; otherwise
/// stops the run (nothing saved) or, with `train.skip_nonfinite`, skips it with a warning.
fn apply_or_skip(tr: &mut Trainer, out: &StepOutput, loss: f64, lr: f64) -> Result<Option<f64>> {
    let grad_norm = out.grad_norm.double_value(&[]);
    if loss.is_finite() && grad_norm.is_finite() {
        tr.apply(lr);
        return Ok(Some(loss));
    }
    ensure!(
        tr.config().train.skip_nonfinite,
        "the loss became {loss} (gradient norm {grad_norm}) at step {}; stopped without saving, so {} still holds the last good checkpoint (lower train.lr, or set train.skip_nonfinite)",
        tr.meta.step,
        tr.weights_path.display()
    );
    eprintln!("warning: skipping step {}: loss {loss}, gradient norm {grad_norm}", tr.meta.step);
    Ok(None)
}

/// The original's per-step tags (`Loss/batch`, the histograms every `histogram_every` steps)
/// and the added `train/lr` and `train/grad_norm`.
fn log_step(tb: &mut Logger, tr: &Trainer, out: &StepOutput, loss: f64, lr: f64) -> Result<()> {
    let step = tr.meta.step;
    tb.scalar("Loss/batch", step, loss)?;
    tb.scalar("train/lr", step, lr)?;
    tb.scalar("train/grad_norm", step, out.grad_norm.double_value(&[]))?;
    if step % tr.config().train.histogram_every == 0 {
        tb.histogram("noise_prediction", step, &out.prediction)?;
        tb.histogram("target_noise", step, &out.target)?;
    }
    Ok(())
}

/// Advances the counters past `batch`. A batch whose every image failed to load is never
/// yielded, so the position in the epoch comes from the batch, not from a count.
fn finish_step(tr: &mut Trainer, batch: &Batch) {
    tr.meta.step += 1;
    tr.meta.batch_in_epoch = batch.position as i64 + 1;
}

/// `Loss/epoch`, the epoch line, the counters moved to the next epoch, and the preview.
/// Without `tb` (a rank other than 0) only the counters move.
fn end_epoch(
    tr: &mut Trainer,
    tb: Option<&mut Logger>,
    totals: &EpochTotals,
    elapsed: f64,
    opts: &RunOptions,
    probe: Option<&Probe>,
) -> Result<()> {
    let (epoch, epochs) = (tr.meta.epoch, tr.config().train.epoch);
    tr.meta.epoch += 1;
    tr.meta.batch_in_epoch = 0;
    let Some(tb) = tb else { return Ok(()) };
    if totals.batches > 0 {
        let mean = totals.loss_sum / totals.batches as f64;
        tb.scalar("Loss/epoch", epoch, mean)?;
        println!(
            "epoch {}/{epochs}: mean loss {mean:.5} over {} batches, {:.1} img/s, data wait {:.1}%",
            epoch + 1,
            totals.batches,
            totals.images as f64 / elapsed,
            100.0 * totals.wait.as_secs_f64() / elapsed
        );
    }
    let every = tr.config().train.preview.every_epochs;
    if every > 0 && (epoch + 1) % every == 0 {
        let started = Instant::now();
        let path = preview::preview(tr, tb, epoch, opts.preview_png.clone())?;
        println!("preview: {} ({:.1} s)", path.display(), started.elapsed().as_secs_f64());
    }
    let every = tr.config().train.eval.every_epochs;
    if let (Some(probe), true) = (probe, every > 0 && (epoch + 1) % every == 0) {
        let started = Instant::now();
        let r = probe.measure(tr, tb, epoch)?;
        let inception = match (r.fid, r.kid) {
            (Some(fid), Some(kid)) => format!(", FID {fid:.2}, KID {:.5}", kid.mean),
            _ => String::new(),
        };
        println!(
            "sample quality: SWD {:.2} (×10³, per level {:?}){inception} ({:.1} s)",
            r.swd.mean,
            r.swd.per_level,
            started.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

//! Data-parallel training (several processes launched by torchrun, see
//! [`crate::distributed`]): each rank trains a replica on its slice of every global batch
//! ([`crate::data::Shard`]), and the gradients are averaged before clipping and Adam, so the
//! replicas stay identical.
//!
//! The step is the single-process step of the whole global batch, split: every rank draws the
//! global batch's t, ε and label dropout after the step's seeding, in the documented order, and
//! keeps the rows of its own images; it back-propagates the sum of its images' mean absolute
//! errors (in micro-batches of `train.batch_size` when `train.grad_accum_steps` > 1, the
//! gradients added up), and one all-reduce per optimizer step averages the gradients together with (that sum, its image count,
//! its stop request). Dividing the averaged gradients by the averaged count gives the gradient
//! of the mean over the global batch, as one process computes it. So 1 process × batch 2b and
//! 2 processes × b train the same model (up to float rounding), and a short last batch, even a
//! rank with no image in it, weighs every image alike.

use anyhow::{ensure, Result};
use tch::{Device, Kind, Tensor};

use super::trainer::{Draws, StepOutput, Trainer};
use crate::config::Config;
use crate::data::Batch;
use crate::distributed::ProcessGroup;
use crate::optim;

/// Makes the ranks agree on the run before anything is trained: rank 0's seed (each rank may
/// have drawn its own when none was set), then the whole resolved config, which must match.
pub(super) fn agree_config(pg: &ProcessGroup, cfg: &mut Config) -> Result<()> {
    let seed = cfg.train.seed.expect("read_state chose the seed");
    cfg.train.seed = Some(pg.allgather_u64(&[seed])?[0][0]);
    pg.check_same("the resolved config (config file and flags)", &serde_json::to_vec(cfg)?)
}

/// Checks that every rank starts from the same point (counters, seed, classes, config: the
/// same state file), then gives all of them rank 0's weights, EMA and Adam moments.
pub(super) fn replicate(tr: &Trainer, pg: &ProcessGroup) -> Result<()> {
    let m = &tr.meta;
    let counters = (m.step, m.epoch, m.batch_in_epoch, tr.adam_step(), m.seed, m.schedule_steps);
    let start = serde_json::to_vec(&(counters, &m.classes, &m.config, &m.data))?;
    pg.check_same(
        "the starting point (counters, seed, schedule, classes, config, data; the same state file?)",
        &start,
    )?;
    pg.broadcast(&tr.replicated(), 0)
}

/// One data-parallel step's results.
pub(super) struct ShardStep {
    /// The loss is the global batch's mean; prediction and target are this rank's rows.
    pub out: StepOutput,
    /// Some rank asked to stop (a signal): every rank stops after this step.
    pub stop: bool,
}

impl Trainer {
    /// Forward and backward of this rank's slice of the global batch, the gradients averaged
    /// over the ranks, then clipping (see the module documentation). `stop` is this rank's stop
    /// request; the answer is whether any rank made one.
    pub(super) fn step_shard(&mut self, batch: &Batch, pg: &ProcessGroup, stop: bool) -> Result<ShardStep> {
        let device = self.device;
        let all = self.draws(batch.global_len as i64);
        let rows: Vec<i64> = batch.slots.iter().map(|&s| s as i64).collect();
        let rows = Tensor::from_slice(&rows).to_device(device);
        let draws = Draws {
            t: all.t.index_select(0, &rows),
            noise: all.noise.index_select(0, &rows),
            drop: all.drop.as_ref().map(|d| d.index_select(0, &rows)),
        };
        optim::zero_grad(&self.params);
        let (loss_sum, prediction, target) = if batch.is_empty() {
            let none = || Tensor::zeros([0], (Kind::Float, device));
            (Tensor::zeros([], (Kind::Float, device)), none(), none())
        } else {
            // Weight n_k: the gradients of Σ over this rank's images of each image's mean
            // loss, in micro-batches when train.grad_accum_steps > 1.
            self.accumulate(&batch.images, &batch.labels, &draws, |k| k as f64)
        };
        ensure_grads(&self.params);
        let mine = [
            loss_sum.view([1]),
            Tensor::from_slice(&[batch.len() as f32, f32::from(u8::from(stop))]).to_device(device),
        ];
        let stats = Tensor::cat(&mine, 0);
        let mut reduced: Vec<Tensor> = self.params.iter().map(Tensor::grad).collect();
        reduced.push(stats.shallow_clone());
        pg.allreduce_mean(&reduced)?;
        // (Σ loss sums, Σ image counts, Σ stop requests) / world size.
        let s = Vec::<f32>::try_from(stats.to_device(Device::Cpu))?;
        ensure!(s[1] > 0.0, "no image of batch {} of the epoch could be loaded on any rank", batch.position);
        tch::no_grad(|| {
            for g in &reduced[..self.params.len()] {
                let _ = g.shallow_clone().g_div_scalar_(f64::from(s[1]));
            }
        });
        let grad_norm = optim::clip_grad_norm(&self.params, self.config().train.grad_clip);
        let loss = Tensor::from(s[0] / s[1]);
        let out = StepOutput { loss, prediction, target, grad_norm };
        Ok(ShardStep { out, stop: s[2] > 0.0 })
    }
}

/// Gives every parameter without a gradient (all of them on a rank whose slice of the batch
/// is empty) a zero one, so that every rank reduces the same list.
fn ensure_grads(params: &[Tensor]) {
    let missing: Vec<Tensor> =
        params.iter().filter(|p| !p.grad().defined()).map(|p| p.sum(Kind::Float)).collect();
    if !missing.is_empty() {
        (Tensor::stack(&missing, 0).sum(Kind::Float) * 0.0).backward();
    }
}

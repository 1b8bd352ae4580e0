//! What one training step changes, and the step itself (docs/ORIGINAL.md §4): x0 = image·2 − 1,
//! t ~ U{0…T−1}, x_t by DDPM eq. 4, L1 between the noise and the model's prediction (or the
//! objective the config chooses, docs/OBJECTIVES.md), then global-norm clipping, Adam and the
//! EMA. A step of more images than `train.batch_size` runs in micro-batches whose gradients
//! add up (`train.grad_accum_steps`), each forward pass checkpointed when the runtime says so
//! (`crate::model::checkpointing`).
//!
//! Every random draw of step s comes from `manual_seed(step_seed(seed, s))`, in the order t
//! (CPU), ε (the training device, the shape of x0), label dropout (CPU, only when enabled), so a
//! run stopped after k steps and restarted draws what an uninterrupted run draws.

use std::path::PathBuf;

use anyhow::Result;
use tch::{nn::VarStore, Device, Kind, Tensor};

use super::objective::objective_loss;
use crate::autoencoder::LatentDecoder;
use crate::checkpoint::{self, state, state::TrainMeta};
use crate::config::{Config, LabelInit, LossWeighting, Process};
use crate::data;
use crate::diffusion::{flow, Schedule};
use crate::model::TrainingForward;
use crate::optim::{self, Adam, Ema};
use crate::rng::step_seed;
use crate::Dit;

/// The random draws of one step.
#[derive(Debug)]
pub struct Draws {
    /// Diffusion steps (B) int64; under flow, times in [0, 1] (B) float32.
    pub t: Tensor,
    /// ε (B, C, I, I) float32 (flow's x0).
    pub noise: Tensor,
    /// Labels replaced by the "no label" row (B) bool, when `train.cfg_dropout` > 0.
    pub drop: Option<Tensor>,
}

impl Draws {
    pub fn to_device(&self, device: Device) -> Self {
        Self {
            t: self.t.to_device(device),
            noise: self.noise.to_device(device),
            drop: self.drop.as_ref().map(|d| d.to_device(device)),
        }
    }
}

/// What a step leaves for logging, on the training device (nothing is read back to the host).
#[derive(Debug)]
pub struct StepOutput {
    pub loss: Tensor,
    pub prediction: Tensor,
    /// What the prediction is compared with: ε unless `diffusion.prediction` says otherwise.
    pub target: Tensor,
    /// Global L2 norm of the gradients before clipping.
    pub grad_norm: Tensor,
}

/// The model, its optimizer and EMA, the schedule and the counters of one run.
pub struct Trainer {
    pub(super) device: Device,
    /// Owns the variables that `model` and `params` share.
    vs: VarStore,
    pub(super) model: Dit,
    names: Vec<String>,
    pub(super) params: Vec<Tensor>,
    adam: Adam,
    pub(super) ema: Option<Ema>,
    pub(super) schedule: Schedule,
    /// Counters, seed, classes and the config; saved with every checkpoint.
    pub meta: TrainMeta,
    pub(super) weights_path: PathBuf,
    /// In latent space: the normalisation the batches' latents go through, and the decoder
    /// that turns samples into images (previews, quality).
    pub(super) latent: Option<LatentDecoder>,
}

impl Trainer {
    /// A fresh model initialised from `step_seed(meta.seed, -1)` (then the label rows shared
    /// when `train.label_init` says so), zero Adam moments, and an EMA equal to the weights.
    /// The initial weights are drawn by the CPU's generator on every device, so a seed starts
    /// a CUDA run from the weights it starts a CPU run from.
    pub fn new(meta: TrainMeta, device: Device, weights_path: PathBuf) -> Self {
        let cfg = &meta.config;
        tch::manual_seed(step_seed(meta.seed, -1));
        let cpu = VarStore::new(Device::Cpu);
        let cpu_model = Dit::new(&cpu.root(), &cfg.model);
        if cfg.train.label_init == LabelInit::Shared {
            cpu_model.share_label_rows();
        }
        let (vs, mut model) = if device == Device::Cpu {
            (cpu, cpu_model)
        } else {
            let vs = VarStore::new(device);
            let model = Dit::new(&vs.root(), &cfg.model);
            checkpoint::copy_into(&vs, checkpoint::named_variables(&cpu).iter().map(|(n, t)| (n, t)));
            (vs, model)
        };
        model.set_runtime(&cfg.runtime);
        let (names, params): (Vec<String>, Vec<Tensor>) =
            checkpoint::named_variables(&vs).into_iter().unzip();
        let mut adam = Adam::new(&params);
        adam.beta2 = cfg.train.adam_beta2;
        let ema = (cfg.train.ema_decay > 0.0).then(|| Ema::new(&params, cfg.train.ema_decay));
        let schedule = Schedule::new(&cfg.diffusion, device).for_space(cfg.model.autoencoder);
        Self { device, vs, model, names, params, adam, ema, schedule, meta, weights_path, latent: None }
    }

    pub fn config(&self) -> &Config {
        &self.meta.config
    }

    pub fn device(&self) -> Device {
        self.device
    }

    pub fn model(&self) -> &Dit {
        &self.model
    }

    /// The draws of the next step for a batch of `b`, in the documented order.
    pub fn draws(&self, b: i64) -> Draws {
        tch::manual_seed(step_seed(self.meta.seed, self.meta.step));
        let m = &self.config().model;
        let t = match self.schedule.process {
            Process::Ddpm => Tensor::randint(self.schedule.max_t, [b], (Kind::Int64, Device::Cpu)),
            Process::Flow => flow::draw_times(self.config().diffusion.timestep_sampling, b),
        }
        .to_device(self.device);
        let noise = Tensor::randn(m.input_shape(b), (Kind::Float, self.device));
        let p = self.config().train.cfg_dropout;
        let drop =
            (p > 0.0).then(|| Tensor::rand([b], (Kind::Float, Device::Cpu)).lt(p).to_device(self.device));
        Draws { t, noise, drop }
    }

    /// Trains in latent space: batches are latents, normalised by `decoder`'s statistics, and
    /// samples are decoded by it.
    pub fn set_latent(&mut self, decoder: LatentDecoder) {
        self.latent = Some(decoder);
    }

    /// Forward, backward and clipping of one optimizer step on `images` (N, C, I, I) u8 (in
    /// latent space the latents, any float kind) and
    /// `labels` (N), in micro-batches of `train.batch_size` images (one forward pass when N is
    /// at most that; the gradients of all of them add up); the weights change only in
    /// [`Trainer::apply`].
    pub fn step(&mut self, images: &Tensor, labels: &Tensor) -> StepOutput {
        let draws = self.draws(images.size()[0]);
        self.step_with(images, labels, &draws)
    }

    /// [`Trainer::step`] with given draws (on the training device).
    pub fn step_with(&mut self, images: &Tensor, labels: &Tensor, draws: &Draws) -> StepOutput {
        optim::zero_grad(&self.params);
        let n = images.size()[0];
        let (loss, prediction, target) = self.accumulate(images, labels, draws, |k| k as f64 / n as f64);
        let grad_norm = optim::clip_grad_norm(&self.params, self.config().train.grad_clip);
        StepOutput { loss, prediction, target, grad_norm }
    }

    /// Forward and backward of the images of one optimizer step (`images` (N, C, I, I) u8,
    /// `labels` (N), their rows of the step's `draws`) in micro-batches of `train.batch_size`
    /// images (the last may be shorter): the mean loss of micro-batch k, of n_k images, is
    /// back-propagated with the weight `weight(n_k)`, and the gradients add up (gradient
    /// accumulation). Returns Σ_k weight(n_k) · loss_k (detached), the predictions and their
    /// targets.
    ///
    /// With `weight(n) = n / N` the gradients are those of the mean over the N images, as one
    /// batch of N computes them; with one micro-batch that weight is exactly 1.
    pub(super) fn accumulate(
        &self,
        images: &Tensor,
        labels: &Tensor,
        draws: &Draws,
        weight: impl Fn(i64) -> f64,
    ) -> (Tensor, Tensor, Tensor) {
        let n = images.size()[0];
        let micro = self.config().train.batch_size;
        let mut total = Tensor::zeros([], (Kind::Float, self.device));
        let (mut predictions, mut targets) = (Vec::new(), Vec::new());
        for start in (0..n).step_by(micro as usize) {
            let len = micro.min(n - start);
            let rows = |t: &Tensor| t.narrow(0, start, len);
            let slice =
                Draws { t: rows(&draws.t), noise: rows(&draws.noise), drop: draws.drop.as_ref().map(rows) };
            let (loss, forward, target) = self.slice_loss(&rows(images), &rows(labels), &slice);
            let w = weight(len);
            total += loss.detach() * w;
            predictions.push(forward.output.detach());
            targets.push(target);
            let root = if w == 1.0 { loss } else { loss * w };
            forward.backward(&self.model, &root);
        }
        let join =
            |mut parts: Vec<Tensor>| if parts.len() == 1 { parts.remove(0) } else { Tensor::cat(&parts, 0) };
        (total, join(predictions), join(targets))
    }

    /// The loss of a slice of a step's batch, to back-propagate through the returned forward
    /// pass: `images` (B, C, I, I) u8 and `labels` (B) are the slice's, `draws` their rows of
    /// the step's draws. x0 = image·2 − 1, x_t by DDPM eq. 4, the dropped labels replaced by
    /// the "no label" row, and the mean absolute error between ε and the prediction over the
    /// slice's values (by default; else the target, distance and weighting the config names).
    /// Under flow, x_t on the linear path and the distance to the velocity, plus the cosine
    /// loss when `train.cosine_loss` asks.
    /// Every path that trains (one process, data-parallel ranks, each micro-batch) calls this.
    /// Returns the loss, the forward pass and the target (detached).
    pub(super) fn slice_loss(
        &self,
        images: &Tensor,
        labels: &Tensor,
        draws: &Draws,
    ) -> (Tensor, TrainingForward, Tensor) {
        let x0 = match &self.latent {
            None => data::to_model_range(&images.to_device(self.device)), // (B, C, I, I)
            Some(d) => d.stats().normalise(&images.to_device(self.device)), // (B, C, h, w)
        };
        let labels = labels.to_device(self.device);
        let labels = match &draws.drop {
            Some(drop) => labels.masked_fill(drop, self.config().model.label_num),
            None => labels,
        };
        let train = &self.config().train;
        if self.schedule.process == Process::Flow {
            // The data is the path's x1 and ε its x0 (crate::diffusion::flow).
            let xt = flow::interpolate(&x0, &draws.noise, &draws.t);
            let forward = self.model.forward_for_training(&xt, &labels, &draws.t);
            let target = flow::velocity(&x0, &draws.noise);
            let distance = objective_loss(&forward.output, &target, train.loss, None);
            let loss = match train.cosine_loss {
                true => distance + flow::cosine_loss(&forward.output, &target),
                false => distance,
            };
            return (loss, forward, target);
        }
        let c = self.schedule.coefficients(&draws.t);
        let xt = c.noised(&x0, &draws.noise);
        let forward = self.model.forward_for_training(&xt, &labels, &draws.t);
        let prediction = self.schedule.prediction;
        let target = prediction.target(&x0, &draws.noise, &c);
        let weights = match train.loss_weighting {
            LossWeighting::None => None,
            w => prediction.loss_weights(w, train.loss, train.min_snr_gamma, &self.schedule.snr(&draws.t)),
        };
        let loss = objective_loss(&forward.output, &target, train.loss, weights.as_ref());
        (loss, forward, target)
    }

    /// Adam at learning rate `lr`, then the EMA.
    pub fn apply(&mut self, lr: f64) {
        self.adam.step(&self.params, lr);
        if let Some(ema) = &mut self.ema {
            ema.update(&self.params);
        }
    }

    fn named(&self, tensors: &[Tensor]) -> Vec<(String, Tensor)> {
        self.names.iter().cloned().zip(tensors.iter().map(Tensor::shallow_clone)).collect()
    }

    /// The parameters by state_dict name (sharing storage with the model).
    pub fn named_params(&self) -> Vec<(String, Tensor)> {
        self.named(&self.params)
    }

    /// The gradients left by the last step, by name (undefined ones left out).
    pub fn named_grads(&self) -> Vec<(String, Tensor)> {
        let grads: Vec<Tensor> = self.params.iter().map(Tensor::grad).collect();
        self.named(&grads).into_iter().filter(|(_, g)| g.defined()).collect()
    }

    /// The EMA weights by name (empty without an EMA).
    pub fn named_ema(&self) -> Vec<(String, Tensor)> {
        self.ema.as_ref().map(|e| self.named(&e.shadow)).unwrap_or_default()
    }

    /// Writes the state file, then the weights in the chosen format (a `.safetensors` file with
    /// what its run records: [`checkpoint::Recorded`]); each atomically.
    pub fn save(&self) -> Result<()> {
        let model = self.named_params();
        let ema = self.named_ema();
        let m = self.named(&self.adam.exp_avg);
        let v = self.named(&self.adam.exp_avg_sq);
        let groups: [(&str, &[(String, Tensor)]); 4] =
            [("model", &model), ("ema", &ema), ("adam_m", &m), ("adam_v", &v)];
        let meta = TrainMeta { adam_step: Some(self.adam.step), ..self.meta.clone() };
        state::save(&state::state_path(&self.weights_path), &meta, &groups)?;
        // A `.safetensors` weight file records what sampling it needs (the other formats have
        // no metadata): the model, diffusion and runtime sections, the classes, the latent space.
        let recorded =
            checkpoint::Recorded::of_run(self.config(), &self.meta.classes, self.meta.latent.as_ref());
        let metadata = recorded.to_metadata()?;
        checkpoint::write_tensors_with(&self.weights_path, &model, metadata)
    }

    /// Takes over the weights, EMA, Adam's moments and counters of a saved state (whose
    /// names and shapes the caller has checked).
    pub fn restore(&mut self, st: &state::TrainState) {
        checkpoint::copy_into(&self.vs, st.group("model").expect("state::load checks it"));
        if let (Some(m), Some(v)) = (st.group("adam_m"), st.group("adam_v")) {
            for (i, name) in self.names.iter().enumerate() {
                self.adam.exp_avg[i] = m[name].to_device(self.device);
                self.adam.exp_avg_sq[i] = v[name].to_device(self.device);
            }
            self.adam.step = st.meta.adam_step.unwrap_or(st.meta.step);
        }
        let decay = self.config().train.ema_decay;
        self.ema = match st.group("ema") {
            Some(g) if decay > 0.0 => {
                Some(Ema { decay, shadow: self.names.iter().map(|n| g[n].to_device(self.device)).collect() })
            }
            _ => (decay > 0.0).then(|| Ema::new(&self.params, decay)),
        };
        let (step, epoch, batch) = (st.meta.step, st.meta.epoch, st.meta.batch_in_epoch);
        (self.meta.step, self.meta.epoch, self.meta.batch_in_epoch) = (step, epoch, batch);
    }

    /// Replaces the weights by those of a weight file, after checking every key and shape
    /// (a weights-only start); the EMA restarts from them.
    pub fn load_weights(&mut self, path: &std::path::Path) -> Result<()> {
        checkpoint::load_weights(&mut self.vs, path)?;
        let decay = self.config().train.ema_decay;
        self.ema = (decay > 0.0).then(|| Ema::new(&self.params, decay));
        Ok(())
    }

    /// What every rank of a data-parallel run holds alike: the weights, the EMA and Adam's
    /// moments (sharing storage with the trainer's).
    pub(super) fn replicated(&self) -> Vec<Tensor> {
        let ema = self.ema.iter().flat_map(|e| e.shadow.iter());
        let adam = self.adam.exp_avg.iter().chain(&self.adam.exp_avg_sq);
        self.params.iter().chain(ema).chain(adam).map(Tensor::shallow_clone).collect()
    }

    /// Updates Adam has made (saved as `adam_step`).
    pub(super) fn adam_step(&self) -> i64 {
        self.adam.step
    }

    /// The parameters' names and shapes.
    pub fn shapes(&self) -> checkpoint::Shapes {
        checkpoint::shapes(&self.vs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny_trainer(dir: &std::path::Path) -> Trainer {
        let cfg = Config::from_json(
            r#"{"model": {"img_size": 8, "patch_size": 4, "dit_num": 1, "head": 1, "emb_size": 8},
                "diffusion": {"max_t": 100}}"#,
        )
        .unwrap();
        Trainer::new(TrainMeta::fresh(3, vec!["x".into()], cfg), Device::Cpu, dir.join("w.safetensors"))
    }

    #[test]
    fn adams_own_step_count_is_saved_and_restored_apart_from_the_global_step() {
        let dir = tempfile::tempdir().unwrap();
        let mut tr = tiny_trainer(dir.path());
        // Five steps of which two were skipped (train.skip_nonfinite): Adam made three updates.
        (tr.meta.step, tr.adam.step) = (5, 3);
        tr.save().unwrap();
        let st = state::load(&state::state_path(&tr.weights_path)).unwrap();
        assert_eq!((st.meta.step, st.meta.adam_step), (5, Some(3)));
        let mut resumed = tiny_trainer(dir.path());
        resumed.restore(&st);
        assert_eq!((resumed.meta.step, resumed.adam.step), (5, 3));
        // A file from before Adam's count was saved: the global step, as those runs had it.
        let old =
            state::TrainState { meta: TrainMeta { adam_step: None, ..st.meta.clone() }, groups: st.groups };
        resumed.restore(&old);
        assert_eq!(resumed.adam.step, 5);
    }
}

//! Sampling from a trained `Dit`: the original's DDPM denoise loop (docs/ORIGINAL.md §4, DDPM
//! Algorithm 2 with a clamp every step), DDIM (Song et al. 2021, eq. 12 with σ from eq. 16)
//! and DPM-Solver++(2M) (Lu et al. 2022) over the same model, whatever it predicts
//! (`diffusion.prediction`); the step math lives in `diffusion::Schedule`. A flow model
//! (`diffusion.process: flow`) is integrated from the noise to the data with Euler's or Heun's
//! method on LightningDiT's time grid (`diffusion::flow`). Also the image
//! helpers the sampler and the trainer share: a `make_grid`-style tiling into an RGB image,
//! an atomic PNG writer, and the original's choice of preview states.

use std::path::Path;

use anyhow::{ensure, Context, Result};
use image::RgbImage;
use tch::{Device, Kind, Tensor};

use crate::config::Process;
pub use crate::config::SamplerKind;
use crate::diffusion::{flow, Previous, Schedule};
use crate::Dit;

/// Pixels between tiles (and around the border) in a grid, as torchvision's `make_grid`.
pub const GRID_PADDING: i64 = 2;

/// States in the original's preview grid.
pub const PREVIEW_STATES: i64 = 16;

/// Steps DDIM takes when none are asked for.
pub const DEFAULT_DDIM_STEPS: i64 = 50;

/// Steps DPM-Solver++(2M) takes when none are asked for.
pub const DEFAULT_DPM_SOLVER_STEPS: i64 = 20;

/// Euler steps when none are asked for (50 model evaluations).
pub const DEFAULT_EULER_STEPS: i64 = 50;

/// Heun steps when none are asked for: two model evaluations each, so as many as Euler's 50.
pub const DEFAULT_HEUN_STEPS: i64 = 25;

/// DDIM's η when none is asked for: 1, the stochastic end (each step adds fresh noise, as
/// DDPM's do). Measured on the quick-start checkpoint (BENCHMARKS.md, "Sample quality against
/// sampling cost", 2026-11-27), DDIM-50 with η = 1 scores 39.5 in sliced Wasserstein distance
/// to the data against 41.7 for the original's DDPM-1000; with η = 0 (deterministic) 44.1.
pub const DEFAULT_DDIM_ETA: f64 = 1.0;

/// The samplers' rules: how many steps, which ones, and what is allowed.
impl SamplerKind {
    /// The number of steps used when the user names none: T for DDPM, 50 for DDIM and 20 for
    /// DPM-Solver++ (at most T).
    pub fn default_steps(self, max_t: i64) -> i64 {
        let most = self.max_steps(max_t);
        match self {
            Self::Ddpm => max_t,
            Self::Ddim => DEFAULT_DDIM_STEPS.min(most),
            Self::DpmPP2m => DEFAULT_DPM_SOLVER_STEPS.min(most),
            Self::Euler => DEFAULT_EULER_STEPS,
            Self::Heun => DEFAULT_HEUN_STEPS,
        }
    }

    /// Model evaluations of `steps` steps: two a step for Heun, one for the others.
    pub fn evaluations(self, steps: i64) -> i64 {
        if self == Self::Heun {
            2 * steps
        } else {
            steps
        }
    }

    /// Checks `steps` ([`SamplerKind::check_steps`]) and η against a schedule of `max_t` steps.
    pub fn check(self, steps: i64, eta: f64, max_t: i64) -> Result<()> {
        self.check_steps(steps, max_t)?;
        if self == Self::Ddim {
            ensure!(eta >= 0.0 && eta.is_finite(), "eta must be a number ≥ 0, got {eta}");
        }
        Ok(())
    }

    /// The training steps visited, descending (DDPM: T − 1 … 0; DDIM: see
    /// `Schedule::ddim_timesteps`; DPM-Solver++: `Schedule::dpm_solver_timesteps`). `steps`
    /// must have passed `check`.
    pub fn timesteps(self, schedule: &Schedule, steps: i64) -> Vec<i64> {
        match self {
            Self::Ddpm => (0..schedule.max_t).rev().collect(),
            Self::Ddim => schedule.ddim_timesteps(steps),
            Self::DpmPP2m => schedule.dpm_solver_timesteps(steps),
            Self::Euler | Self::Heun => unreachable!("flow samplers walk a time grid, not training steps"),
        }
    }
}

/// What to run: the sampler, its number of steps, and which states to keep.
#[derive(Debug, Clone, PartialEq)]
pub struct SampleOptions {
    pub sampler: SamplerKind,
    /// Model evaluations; DDPM needs exactly T.
    pub steps: i64,
    /// DDIM's η: 0 is deterministic, 1 with all T steps is an ancestral sampler with DDPM's
    /// variance (DDPM ignores it).
    pub eta: f64,
    /// States to return, as indices into the list of states 0 (the noise) … `steps` (the
    /// final images), in the order wanted.
    pub keep: Vec<i64>,
    /// Classifier-free guidance weight W: ε = ε_uncond + W·(ε_cond − ε_uncond), both from one
    /// batched forward pass (Ho & Salimans 2022, eq. 6 with w = W − 1). `None` (or W = 1) is
    /// the plain conditional model; W ≠ 1 needs a model with a "no label" row.
    pub guidance: Option<f64>,
    /// Flow samplers: the time grid's shift s, t' = s·t / (1 + (s − 1)·t) (`None`: evenly spaced).
    pub shift: Option<f64>,
    /// Flow samplers: guidance only from this time on (t ≥ it; 0 is the noise, 1 the data);
    /// `None`: at every step.
    pub cfg_interval_start: Option<f64>,
}

impl SampleOptions {
    /// `sampler` with its default number of steps for a schedule of `max_t`, keeping nothing.
    pub fn new(sampler: SamplerKind, max_t: i64) -> Self {
        Self {
            sampler,
            steps: sampler.default_steps(max_t),
            eta: DEFAULT_DDIM_ETA,
            keep: vec![],
            guidance: None,
            shift: None,
            cfg_interval_start: None,
        }
    }

    /// The flow-only options are for flow samplers, with values in range.
    pub fn check_flow_options(&self) -> Result<()> {
        let flow = self.sampler.process() == Process::Flow;
        if let Some(s) = self.shift {
            ensure!(flow, "the timestep shift applies to the flow samplers (euler, heun)");
            ensure!(s > 0.0 && s.is_finite(), "the timestep shift must be a number > 0, got {s}");
        }
        if let Some(t) = self.cfg_interval_start {
            ensure!(flow, "the guidance interval applies to the flow samplers (euler, heun)");
            ensure!((0.0..=1.0).contains(&t), "the guidance interval's start must lie in [0, 1], got {t}");
        }
        Ok(())
    }
}

/// Runs the sampler from `noise` (B, C, I, I) with `labels` (B) int64, both on the model's
/// device, without gradients. `progress(done, total)` is called after every step. Returns the
/// final images (B, C, I, I) in [−1, 1] and the states `opts.keep` names, in its order, on
/// the model's device. The model's output means what `schedule.prediction` says.
///
/// Random numbers: DDPM draws one `randn_like` per step for s = T − 1 … 1 and none at s = 0,
/// as the original; so with the noise drawn by `Tensor::randn` right after
/// `tch::manual_seed(seed)` on the CPU, the result equals the original's for that seed.
/// DDIM draws one per step except the last when η > 0, none when η = 0; DPM-Solver++ none.
pub fn sample(
    model: &Dit,
    schedule: &Schedule,
    opts: &SampleOptions,
    noise: Tensor,
    labels: &Tensor,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<(Tensor, Vec<Tensor>)> {
    check_inputs(model, &noise, labels)?;
    let guidance = opts.guidance.filter(|&w| w != 1.0);
    if let Some(w) = guidance {
        ensure!(w.is_finite() && w >= 0.0, "the guidance weight must be a number ≥ 0, got {w}");
        ensure!(
            model.config().null_label,
            "guidance needs a model trained with train.cfg_dropout > 0 (it has no \"no label\" row)"
        );
    }
    let null_labels = labels.full_like(model.config().label_num);
    let mut output = |x: &Tensor, t: &Tensor| {
        // LightningDiT's guidance interval: the conditional output alone while t < start.
        let guided = match opts.cfg_interval_start {
            Some(start) => guidance.filter(|_| t.double_value(&[0]) >= start),
            None => guidance,
        };
        model_output(model, x, labels, &null_labels, t, guided)
    };
    sample_with(schedule, opts, noise, &mut output, progress)
}

/// The sampler's walk from `noise` for any `output(x_t, t)` (t (B): int64 steps under DDPM,
/// float32 times under flow) that answers as a model predicting `schedule.prediction` (under
/// flow: the velocity) does: [`sample`] passes the model, tests an oracle.
/// `opts.guidance` is the caller's business here.
pub fn sample_with(
    schedule: &Schedule,
    opts: &SampleOptions,
    noise: Tensor,
    output: &mut dyn FnMut(&Tensor, &Tensor) -> Tensor,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<(Tensor, Vec<Tensor>)> {
    let SampleOptions { sampler, steps, eta, ref keep, .. } = *opts;
    sampler.check_process(schedule.process)?;
    sampler.check(steps, eta, schedule.max_t)?;
    opts.check_flow_options()?;
    if let Some(bad) = keep.iter().find(|&&k| !(0..=steps).contains(&k)) {
        anyhow::bail!("state {bad} cannot be kept: there are {} states (0 = the noise)", steps + 1);
    }
    if schedule.process == Process::Flow {
        return flow_walk(schedule, opts, noise, output, progress);
    }
    let timesteps = sampler.timesteps(schedule, steps);
    let total = timesteps.len();
    let batch = noise.size()[0];
    let device = noise.device();

    tch::no_grad(|| {
        let mut kept: Vec<Option<Tensor>> = keep.iter().map(|_| None).collect();
        let mut remember = |index: i64, x: &Tensor| {
            for (slot, &k) in kept.iter_mut().zip(keep) {
                if k == index {
                    // Every step makes a new tensor, so a shallow clone is a snapshot.
                    *slot = Some(x.shallow_clone());
                }
            }
        };
        let mut x = noise;
        let mut previous = None;
        remember(0, &x);
        for (i, &t) in timesteps.iter().enumerate() {
            let t_batch = Tensor::full([batch], t, (Kind::Int64, device)); // (B)
            let out = output(&x, &t_batch); // (B, C, I, I)
            let next = timesteps.get(i + 1).copied();
            x = step(schedule, (sampler, eta), &x, &out, (t, next), &mut previous);
            remember(i as i64 + 1, &x);
            progress(i + 1, total);
        }
        // DDPM clamps every step already and DDIM's and DPM-Solver++'s last steps return the
        // clamped x̂0; the clamp here only makes the contract independent of the sampler.
        let x = schedule.clipped(x);
        let kept = kept.into_iter().map(|k| k.expect("every kept index was checked")).collect();
        Ok((x, kept))
    })
}

/// The flow samplers' walk from `noise` at t = 0 to the data at t = 1 over
/// [`flow::time_grid`], for any velocity `output(x_t, t)` (t (B) float32): Euler,
/// x ← x + Δt·v̂(x, t), or Heun (torchdiffeq's `heun2`), x ← x + Δt·(v̂(x, t) + v̂(x̃, t + Δt))/2
/// with x̃ the Euler step. Draws nothing. The final images are clamped when the schedule clips
/// (pixel space); the states in between are not.
fn flow_walk(
    schedule: &Schedule,
    opts: &SampleOptions,
    noise: Tensor,
    output: &mut dyn FnMut(&Tensor, &Tensor) -> Tensor,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<(Tensor, Vec<Tensor>)> {
    let grid = flow::time_grid(opts.steps, opts.shift);
    let (batch, device) = (noise.size()[0], noise.device());
    let at = |t: f32| Tensor::full([batch], t as f64, (Kind::Float, device));
    tch::no_grad(|| {
        let mut states = vec![noise.shallow_clone()];
        let mut x = noise;
        for (i, w) in grid.windows(2).enumerate() {
            let dt = (w[1] - w[0]) as f64; // the float32 difference, as torchdiffeq takes it
            let v = output(&x, &at(w[0]));
            x = match opts.sampler {
                SamplerKind::Heun => {
                    let v_next = output(&(&x + &v * dt), &at(w[1]));
                    &x + (v * 0.5 + v_next * 0.5) * dt
                }
                _ => &x + v * dt,
            };
            states.push(x.shallow_clone());
            progress(i + 1, grid.len() - 1);
        }
        let kept = opts.keep.iter().map(|&k| states[k as usize].shallow_clone()).collect();
        Ok((schedule.clipped(x), kept))
    })
}

/// One step of the sampler (with DDIM's η) from `x` at `t` to `next`, given the model's output
/// there; `previous` carries DPM-Solver++'s last x̂0 and t from step to step. For an ε model
/// DDPM's and DDIM's ε̂ is the output itself, bit for bit.
fn step(
    schedule: &Schedule,
    (sampler, eta): (SamplerKind, f64),
    x: &Tensor,
    out: &Tensor,
    (t, next): (i64, Option<i64>),
    previous: &mut Option<(Tensor, i64)>,
) -> Tensor {
    let p = schedule.prediction;
    let c = schedule.coefficients_at(t);
    match sampler {
        SamplerKind::Ddpm => schedule.ddpm_step(x, &p.eps(out, x, &c), t),
        SamplerKind::Ddim => schedule.ddim_step_from(&p.eps(out, x, &c), &p.x0(out, x, &c), t, next, eta),
        SamplerKind::DpmPP2m => {
            let x0 = schedule.clipped(p.x0(out, x, &c));
            let before = previous.as_ref().map(|(x0, t)| Previous { x0, t: *t });
            let x_next = schedule.dpmpp_2m_step(x, &x0, t, next, before);
            *previous = Some((x0, t));
            x_next
        }
        SamplerKind::Euler | SamplerKind::Heun => {
            unreachable!("check_process sends flow samplers to flow_walk")
        }
    }
}

/// The model's output at (x, t): the conditional one, or with guidance weight `w` the mix
/// uncond + w·(cond − uncond) of both, computed in one batched forward pass. ε̂, x̂0 and v̂ are
/// each affine in the output at fixed (x, t), so mixing outputs mixes ε̂ alike (Ho & Salimans
/// 2022 mix ε̂).
fn model_output(
    model: &Dit,
    x: &Tensor,
    labels: &Tensor,
    null_labels: &Tensor,
    t: &Tensor,
    guidance: Option<f64>,
) -> Tensor {
    let Some(w) = guidance else { return model.forward(x, labels, t) };
    let batch = x.size()[0];
    let both = model.forward(
        &Tensor::cat(&[x, x], 0),
        &Tensor::cat(&[labels, null_labels], 0),
        &Tensor::cat(&[t, t], 0),
    ); // (2B, C, I, I)
    let (cond, uncond) = (both.narrow(0, 0, batch), both.narrow(0, batch, batch));
    &uncond + (cond - &uncond) * w
}

/// Shape and label checks that would otherwise surface as libtorch panics in the forward pass.
fn check_inputs(model: &Dit, noise: &Tensor, labels: &Tensor) -> Result<()> {
    let cfg = model.config();
    let want = [cfg.channel, cfg.img_size, cfg.img_size];
    let size = noise.size();
    ensure!(
        size.len() == 4 && size[1..] == want && size[0] > 0,
        "noise of shape {size:?} does not fit the model: expected (B, {}, {}, {})",
        want[0],
        want[1],
        want[2]
    );
    ensure!(labels.size() == [size[0]], "labels of shape {:?} for a batch of {}", labels.size(), size[0]);
    let (lo, hi) = (labels.min().int64_value(&[]), labels.max().int64_value(&[]));
    ensure!(
        lo >= 0 && hi < cfg.label_num,
        "label {} is out of range: the model has {} labels (0..={})",
        if lo < 0 { lo } else { hi },
        cfg.label_num,
        cfg.label_num - 1
    );
    Ok(())
}

/// The original's 16 preview states out of the T + 1 of a full DDPM run, ascending.
///
/// The original shows list indices T, T − 63, …, T − 15·63 (1000, 937, …, 55 for T = 1000):
/// a stride of ceil(T/16) = 63 counting down from the final image, the noise (index 0) not
/// included. For other T the stride is ceil(T/16), shortened to floor(T/15) where needed so
/// that all 16 fit (T − 15·stride ≥ 0, true for T ≥ 225), and at least 1; only T < 15 gives
/// fewer than 16 states (then all of 0…T).
/// [`sample`] over `noise` (N, C, I, I) and `labels` (N), both on the CPU, `batch_size` images
/// per call on the model's device. Returns the images (N, C, I, I) and the kept states (each
/// (N, C, I, I)), on the CPU. `progress` receives the denoising steps done over all batches.
pub fn sample_in_batches(
    model: &Dit,
    schedule: &Schedule,
    opts: &SampleOptions,
    noise: &Tensor,
    labels: &Tensor,
    batch_size: i64,
    progress: &mut dyn FnMut(u64),
) -> Result<(Tensor, Vec<Tensor>)> {
    let device = schedule.alphas_cumprod.device();
    let n = noise.size()[0];
    let (mut images, mut kept) = (vec![], vec![]);
    for (chunk, start) in (0..n).step_by(batch_size.max(1) as usize).enumerate() {
        let len = batch_size.min(n - start);
        let offset = chunk as u64 * opts.steps as u64;
        let (out, states) = sample(
            model,
            schedule,
            opts,
            noise.narrow(0, start, len).to_device(device),
            &labels.narrow(0, start, len).to_device(device),
            &mut |done, _| progress(offset + done as u64),
        )?;
        images.push(out.to_device(Device::Cpu));
        kept.push(states.iter().map(|s| s.to_device(Device::Cpu)).collect::<Vec<_>>());
    }
    let states = (0..kept.first().map_or(0, Vec::len))
        .map(|s| Tensor::cat(&kept.iter().map(|c| &c[s]).collect::<Vec<_>>(), 0))
        .collect();
    Ok((Tensor::cat(&images, 0), states))
}

/// The `--progress` picture: one row per image, one column per kept state (each (N, C, I, I)).
pub fn progress_grid(states: &[Tensor]) -> RgbImage {
    let grid = Tensor::stack(states, 1); // (N, S, C, I, I)
    let size = grid.size();
    let tiles = grid.reshape([size[0] * size[1], size[2], size[3], size[4]]); // (N·S, C, I, I), row-major
    to_image_grid(&tiles, size[1], Normalize::Fixed)
}

pub fn progress_indices(max_t: i64) -> Vec<i64> {
    let n = PREVIEW_STATES;
    let stride = ((max_t + n - 1) / n).min(max_t / (n - 1)).max(1);
    let mut indices: Vec<i64> = (0..n).map(|k| max_t - k * stride).filter(|&i| i >= 0).collect();
    indices.reverse();
    indices
}

/// `count` states evenly spaced over 0 (the noise) … `steps` (the final images), ascending,
/// both ends included: round(i·steps/(count − 1)). Fewer when steps + 1 < count.
pub fn evenly_spaced_states(steps: i64, count: i64) -> Vec<i64> {
    if count <= 1 {
        return vec![steps];
    }
    let mut states: Vec<i64> = (0..count).map(|i| (2 * i * steps + count - 1) / (2 * (count - 1))).collect();
    states.dedup();
    states
}

/// How float pixels become bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Normalize {
    /// (x − min)/(max − min) over the whole tensor, as `make_grid(normalize=True)`.
    MinMax,
    /// The model's own range: (x + 1)/2, clamped to [0, 1].
    Fixed,
}

/// Tiles images (N, C, H, W) into a grid of `nrow` columns with `GRID_PADDING` black pixels
/// between tiles and around the border, as torchvision's `make_grid`, and converts it to
/// 8-bit RGB (round(255·v), as `save_image`). One channel is shown as grey; channels beyond
/// three are dropped and a missing third one is black. Works on any device and kind.
pub fn to_image_grid(images: &Tensor, nrow: i64, normalize: Normalize) -> RgbImage {
    grid(images, nrow, normalize, GRID_PADDING)
}

/// One image (C, H, W) in [−1, 1], fixed normalisation, no border.
pub fn to_image(image: &Tensor) -> RgbImage {
    grid(&image.unsqueeze(0), 1, Normalize::Fixed, 0)
}

fn grid(images: &Tensor, nrow: i64, normalize: Normalize, padding: i64) -> RgbImage {
    let size = images.size();
    assert!(size.len() == 4 && size[0] > 0, "to_image_grid: expected (N, C, H, W), got {size:?}");
    let (n, c, h, w) = (size[0], size[1], size[2], size[3]);
    let x = images.detach().to_device(Device::Cpu).to_kind(Kind::Float);
    let x = match normalize {
        Normalize::Fixed => ((x + 1.0) / 2.0).clamp(0.0, 1.0),
        Normalize::MinMax => {
            let (lo, hi) = (x.min().double_value(&[]), x.max().double_value(&[]));
            // make_grid divides by max(max − min, 1e-5) so a constant image does not give NaNs.
            (x - lo) / (hi - lo).max(1e-5)
        }
    };
    let x = (x * 255.0 + 0.5).clamp(0.0, 255.0).to_kind(Kind::Uint8); // (N, C, H, W)
    let x = match c {
        1 => x.expand([n, 3, h, w], false),
        2 => Tensor::cat(&[x, Tensor::zeros([n, 1, h, w], (Kind::Uint8, Device::Cpu))], 1),
        _ => x.narrow(1, 0, 3),
    }; // (N, 3, H, W)

    let cols = nrow.clamp(1, n);
    let rows = (n + cols - 1) / cols;
    let (tile_h, tile_w) = (h + padding, w + padding);
    let canvas =
        Tensor::zeros([3, rows * tile_h + padding, cols * tile_w + padding], (Kind::Uint8, Device::Cpu));
    for i in 0..n {
        let (r, col) = (i / cols, i % cols);
        canvas.narrow(1, r * tile_h + padding, h).narrow(2, col * tile_w + padding, w).copy_(&x.get(i));
    }
    let (height, width) = (canvas.size()[1], canvas.size()[2]);
    let bytes = Vec::<u8>::try_from(canvas.permute([1, 2, 0]).contiguous().view([-1]))
        .expect("a uint8 CPU tensor converts to bytes");
    RgbImage::from_raw(width as u32, height as u32, bytes).expect("the buffer has width·height·3 bytes")
}

/// Writes a PNG atomically (temporary file beside it, then rename), creating parent folders;
/// errors name the path.
pub fn save_png(img: &RgbImage, path: &Path) -> Result<()> {
    // A PNG is at most a little larger than its raw pixels.
    let size_hint = img.as_raw().len() as u64 + 4096;
    crate::fs::write_atomic(path, size_hint, |tmp| {
        img.save_with_format(tmp, image::ImageFormat::Png).context("PNG encoding failed")
    })
}

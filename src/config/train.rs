//! The `train` section: the original's training settings and what this project adds (clipping,
//! EMA, schedule, previews, classes and guidance).

use anyhow::{ensure, Result};
use serde::{Deserialize, Serialize};

use super::{CacheImages, Loss, LossWeighting, Process};

/// Training settings; the first six mirror the original's `config.py` and `train.py`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// Number of passes over the data.
    pub epoch: i64,
    /// Images per forward pass (a micro-batch when `grad_accum_steps` > 1; per process in a
    /// data-parallel run).
    pub batch_size: i64,
    /// Micro-batches of `batch_size` whose gradients one optimizer step adds up (gradient
    /// accumulation): a step sees `grad_accum_steps × batch_size` images; 1 is the original's.
    pub grad_accum_steps: i64,
    /// Adam learning rate (peak value when a schedule is used).
    pub lr: f64,
    /// Threads that decode images in the background.
    pub num_workers: i64,
    /// Image folder, or `builtin:pandas` for the procedural data set.
    pub data_path: String,
    /// How the folder's images get their labels: `folders` (sub-folders are classes, as
    /// torchvision's `ImageFolder`) or `none` (every image below `data_path`, at any depth, is
    /// label 0: FFHQ, LSUN, sharded sets).
    pub classes: ClassLayout,
    /// Where the weights are saved (when [`TrainConfig::save_due`] says, and whenever the run
    /// stops); the extension picks the format (`.ot`, `.safetensors` or `.pth`).
    pub model_save_path: String,
    /// Save after every this many epochs (counted from the run's first epoch, so epochs
    /// `save_every`, 2 × `save_every`, …). Null: see `save_every_minutes`; when both are null,
    /// every epoch, as the original. A schedule setting like `lr`: it may change on resume.
    pub save_every: Option<i64>,
    /// Save at the end of the first epoch that ends at least this many minutes after the last
    /// save (or after the process started training, for its first). Null (the default): off.
    /// Set alone, epochs never trigger a save by their count.
    pub save_every_minutes: Option<f64>,
    /// TensorBoard log folder.
    pub logdir: String,
    /// Seed of every random draw (data order, steps t, noise); null picks one and records it.
    pub seed: Option<u64>,
    /// Clip the gradients' global L2 norm to this value; 0 turns clipping off.
    pub grad_clip: f64,
    /// Decay of the exponential moving average of the weights used for previews (0 = off).
    pub ema_decay: f64,
    /// Learning-rate schedule: `constant` (the original's) or `cosine` (decays to `min_lr`).
    pub lr_schedule: LrSchedule,
    /// Steps of linear warm-up from 0 to `lr` (both schedules).
    pub warmup_steps: i64,
    /// Final learning rate of the cosine schedule.
    pub min_lr: f64,
    /// The schedule's horizon in steps (where the cosine reaches `min_lr`); null fixes it at
    /// `epoch` × steps per epoch when the run begins. Either way it is saved with the run, so
    /// `--max-steps`, a new `epoch` or batch size on resume do not move it; setting it does.
    pub schedule_steps: Option<i64>,
    /// Distance between prediction and target: `l1` (the original's) or `l2`.
    pub loss: Loss,
    /// Weighting of each image's loss by its step: `none` (the original's) or `min_snr`.
    pub loss_weighting: LossWeighting,
    /// γ of `min_snr`: the signal-to-noise ratio above which steps stop gaining weight.
    pub min_snr_gamma: f64,
    /// Flow: add the mean over pixels of 1 − cos over channels between the predicted and the
    /// true velocity (LightningDiT's `use_cosine_loss`) to the loss.
    pub cosine_loss: bool,
    /// Adam's β2 (PyTorch's default 0.999, the original's; LightningDiT trains with 0.95).
    pub adam_beta2: f64,
    /// Log the `noise_prediction` and `target_noise` histograms (the model's output and its
    /// target, ε unless `diffusion.prediction` says otherwise) every this many steps.
    pub histogram_every: i64,
    /// Memory for keeping decoded images (as u8) so later epochs decode them no more: `auto`
    /// (a share of the memory available at start), `all`/true, `off`/false, or a size such as
    /// `"12GiB"`; images past the budget are decoded every epoch.
    pub cache_images: CacheImages,
    /// Probability of replacing a label by the "no label" row during training (classifier-free
    /// guidance, Ho & Salimans 2022); 0 keeps the original's behaviour and parameter shapes.
    pub cfg_dropout: f64,
    /// How a fresh run initialises the label table when it has more than one row:
    /// `independent` keeps PyTorch's independent N(0, 1) rows (the original's); `shared` draws
    /// them alike and then gives every row row 0's values, so the classes start from the
    /// one-class model and grow apart by training. Identical for one row (`label_num = 1`).
    pub label_init: LabelInit,
    /// On a non-finite loss or gradient: false stops the run (the last checkpoint stays as it
    /// was), true skips that step with a warning and goes on.
    pub skip_nonfinite: bool,
    /// Random horizontal flips of the training images (false, as the original): each image
    /// of each epoch is mirrored or not by a draw from (seed, epoch, index), so a resumed run
    /// flips what an uninterrupted one flips. With an autoencoder both versions are encoded.
    pub hflip: bool,
    /// The sample drawn and logged after epochs.
    pub preview: PreviewConfig,
    /// The sample quality measured after epochs (`Quality/swd` in TensorBoard).
    pub eval: EvalConfig,
}

/// Sample quality during training: every `every_epochs` epochs, `num` images sampled with the
/// EMA weights and the preview's sampler, and their sliced Wasserstein distance to as many
/// training images (`crate::quality`), logged as `Quality/swd` (the mean over pyramid levels,
/// × 10³) and `Quality/swd_<side>` per level.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EvalConfig {
    /// Measure every this many epochs; 0 (the default, as the original) turns it off.
    pub every_epochs: i64,
    /// Images sampled and compared (at least 16; a few hundred make a stable number).
    pub num: i64,
}

impl Default for EvalConfig {
    fn default() -> Self {
        Self { every_epochs: 0, num: 256 }
    }
}

/// Learning-rate schedules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LrSchedule {
    /// `lr` throughout, after the warm-up (the original has no schedule).
    #[default]
    Constant,
    /// Half a cosine from `lr` down to `min_lr` over the run, after the warm-up.
    Cosine,
}

/// How a data folder's images are labelled (`train.classes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ClassLayout {
    /// Sub-folders holding images are the classes (sorted names → labels 0…K−1), as
    /// torchvision's `ImageFolder`; a folder without any holds one class.
    #[default]
    Folders,
    /// Every image below the folder, at any depth, has label 0.
    None,
}

/// Initialisation of the label table's rows (`train.label_init`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LabelInit {
    /// Every row starts as row 0. Introduced when independent rows kept two-class training on
    /// a 0.7 loss plateau; that plateau came from tch's initialisation of the linears, and with
    /// PyTorch's (src/model/init.rs) both choices train (README, "Why `train.label_init`").
    Shared,
    /// PyTorch's `nn.Embedding` initialisation: independent N(0, 1) rows.
    #[default]
    Independent,
}

/// Samplers, for previews and the `sample` command (its behaviour: `crate::sampling`). No
/// default of its own: each use names its choice (`sample`: DDPM, the original's; previews
/// and `train.eval`: DDIM, [`PreviewConfig::default`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum SamplerKind {
    /// The original's ancestral sampler (DDPM), all max_t steps.
    Ddpm,
    /// DDIM over a subset of the steps of the same model.
    Ddim,
    /// DPM-Solver++(2M), a second-order multistep ODE solver, over a subset of the steps.
    #[serde(rename = "dpmpp_2m")]
    #[value(name = "dpmpp_2m")]
    DpmPP2m,
    /// Flow: Euler's method on the probability-flow ODE from t = 0 (noise) to 1 (data).
    Euler,
    /// Flow: Heun's second-order method (torchdiffeq's `heun2`), two evaluations a step.
    Heun,
}

impl SamplerKind {
    /// The name the config and the command line use.
    pub fn name(self) -> &'static str {
        match self {
            Self::Ddpm => "ddpm",
            Self::Ddim => "ddim",
            Self::DpmPP2m => "dpmpp_2m",
            Self::Euler => "euler",
            Self::Heun => "heun",
        }
    }

    /// The process whose models this sampler samples.
    pub fn process(self) -> Process {
        match self {
            Self::Ddpm | Self::Ddim | Self::DpmPP2m => Process::Ddpm,
            Self::Euler | Self::Heun => Process::Flow,
        }
    }

    /// Refuses a sampler of the other process, in one line.
    pub fn check_process(self, process: Process) -> Result<()> {
        ensure!(
            self.process() == process,
            "the {} sampler samples {} models, and this one is a {} model; use {}",
            self.name(),
            self.process().name(),
            process.name(),
            match process {
                Process::Ddpm => "ddpm, ddim or dpmpp_2m",
                Process::Flow => "euler or heun",
            }
        );
        Ok(())
    }

    /// The most steps this sampler takes on a schedule of `max_t` steps. DDPM and DDIM visit
    /// each training step at most once, so max_t. DPM-Solver++ evaluates the model at distinct
    /// steps above t = 0 and ends on t = 0 without evaluating there, so max_t − 1 (1 when
    /// max_t = 1); one more would repeat a step, and a step of zero length in λ divides by zero
    /// in the next second-order update.
    pub fn max_steps(self, max_t: i64) -> i64 {
        match self {
            Self::Ddpm | Self::Ddim => max_t,
            Self::DpmPP2m => (max_t - 1).max(1),
            // Integration steps over [0, 1]: no schedule bounds them.
            Self::Euler | Self::Heun => i64::MAX,
        }
    }

    /// Checks a number of steps against a schedule of `max_t` steps: DDPM takes all of them,
    /// the others any number from 1 to [`SamplerKind::max_steps`].
    pub fn check_steps(self, steps: i64, max_t: i64) -> Result<()> {
        ensure!(steps >= 1, "the number of steps must be at least 1, got {steps}");
        let most = self.max_steps(max_t);
        match self {
            Self::Ddpm => ensure!(
                steps == max_t,
                "the ddpm sampler takes all max_t = {max_t} steps, got {steps}; use ddim or dpmpp_2m for fewer"
            ),
            Self::Ddim => ensure!(steps <= most, "{steps} steps exceed the schedule's max_t = {max_t}"),
            Self::DpmPP2m => ensure!(
                steps <= most,
                "dpmpp_2m takes at most {most} steps on a schedule of max_t = {max_t} (it evaluates the model at \
                 distinct steps above t = 0), got {steps}"
            ),
            Self::Euler | Self::Heun => {}
        }
        Ok(())
    }
}

/// The preview sample after epochs. The original draws a full 1000-step DDPM sample after
/// every epoch (tens of minutes on a CPU at 256²); `{"sampler": "ddpm", "steps": 1000}` keeps that.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PreviewConfig {
    /// `ddim` (default) or `ddpm`.
    pub sampler: SamplerKind,
    /// Denoising steps (`ddpm` needs `max_t`).
    pub steps: i64,
    /// Draw a preview every this many epochs; 0 turns previews off.
    pub every_epochs: i64,
    /// Images in the saved preview grid (the TensorBoard grid shows the first one's states).
    pub num: i64,
}

impl Default for PreviewConfig {
    fn default() -> Self {
        Self { sampler: SamplerKind::Ddim, steps: 50, every_epochs: 1, num: 16 }
    }
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            epoch: 10000,
            batch_size: 6,
            grad_accum_steps: 1,
            lr: 1e-6,
            num_workers: 10,
            data_path: "data/Pandas".into(),
            classes: ClassLayout::Folders,
            model_save_path: "checkpoints/dit_train.ot".into(),
            save_every: None,
            save_every_minutes: None,
            logdir: "dit_training".into(),
            seed: None,
            grad_clip: 1.0,
            ema_decay: 0.999,
            lr_schedule: LrSchedule::Constant,
            warmup_steps: 0,
            min_lr: 0.0,
            schedule_steps: None,
            loss: Loss::L1,
            loss_weighting: LossWeighting::None,
            min_snr_gamma: 5.0,
            cosine_loss: false,
            adam_beta2: 0.999,
            histogram_every: 100,
            cache_images: CacheImages::Auto,
            cfg_dropout: 0.0,
            label_init: LabelInit::Independent,
            skip_nonfinite: false,
            hflip: false,
            preview: PreviewConfig::default(),
            eval: EvalConfig::default(),
        }
    }
}

impl TrainConfig {
    /// Images of one optimizer step on one process: `batch_size × grad_accum_steps`.
    pub fn step_images(&self) -> i64 {
        self.batch_size * self.grad_accum_steps
    }

    /// Whether the end of an epoch saves, with `epochs_done` epochs of the run finished and
    /// `since_save` passed since the last save (or since training started, before the first):
    /// when `save_every` divides `epochs_done`, or when `save_every_minutes` have passed; every
    /// epoch when neither is set. Stops (signals, `--max-steps`) and the last epoch save
    /// whatever this says.
    pub fn save_due(&self, epochs_done: i64, since_save: std::time::Duration) -> bool {
        let by_count = self.save_every.is_some_and(|n| epochs_done % n == 0);
        let by_time = self.save_every_minutes.is_some_and(|m| since_save.as_secs_f64() >= m * 60.0);
        let neither = self.save_every.is_none() && self.save_every_minutes.is_none();
        neither || by_count || by_time
    }

    pub fn validate(&self) -> Result<()> {
        ensure!(self.epoch > 0, "train.epoch must be a positive integer, got {}", self.epoch);
        ensure!(self.batch_size > 0, "train.batch_size must be a positive integer, got {}", self.batch_size);
        ensure!(
            self.grad_accum_steps > 0,
            "train.grad_accum_steps must be a positive integer (1 = no accumulation), got {}",
            self.grad_accum_steps
        );
        ensure!(self.lr > 0.0 && self.lr.is_finite(), "train.lr must be a positive number, got {}", self.lr);
        ensure!(
            self.num_workers > 0,
            "train.num_workers must be a positive integer, got {}",
            self.num_workers
        );
        ensure!(!self.data_path.is_empty(), "train.data_path must not be empty");
        ensure!(!self.model_save_path.is_empty(), "train.model_save_path must not be empty");
        ensure!(!self.logdir.is_empty(), "train.logdir must not be empty");
        if let Some(n) = self.save_every {
            ensure!(n >= 1, "train.save_every must be a positive number of epochs or null, got {n}");
        }
        if let Some(m) = self.save_every_minutes {
            ensure!(
                m > 0.0 && m.is_finite(),
                "train.save_every_minutes must be a positive number of minutes or null, got {m}"
            );
        }
        ensure!(
            self.grad_clip >= 0.0 && self.grad_clip.is_finite(),
            "train.grad_clip must be 0 (off) or positive, got {}",
            self.grad_clip
        );
        ensure!(
            (0.0..1.0).contains(&self.ema_decay),
            "train.ema_decay must lie in [0, 1), got {}",
            self.ema_decay
        );
        ensure!(self.warmup_steps >= 0, "train.warmup_steps must not be negative, got {}", self.warmup_steps);
        ensure!(
            self.min_lr >= 0.0 && self.min_lr <= self.lr,
            "train.min_lr must lie in [0, train.lr], got {}",
            self.min_lr
        );
        if let Some(n) = self.schedule_steps {
            ensure!(n > 0, "train.schedule_steps must be a positive integer or null, got {n}");
        }
        ensure!(
            self.min_snr_gamma > 0.0 && self.min_snr_gamma.is_finite(),
            "train.min_snr_gamma must be a positive number, got {}",
            self.min_snr_gamma
        );
        ensure!(
            self.adam_beta2 > 0.0 && self.adam_beta2 < 1.0,
            "train.adam_beta2 must lie strictly between 0 and 1, got {}",
            self.adam_beta2
        );
        ensure!(
            self.histogram_every > 0,
            "train.histogram_every must be a positive integer, got {}",
            self.histogram_every
        );
        ensure!(
            (0.0..1.0).contains(&self.cfg_dropout),
            "train.cfg_dropout must lie in [0, 1), got {}",
            self.cfg_dropout
        );
        let p = &self.preview;
        ensure!(p.steps > 0, "train.preview.steps must be a positive integer, got {}", p.steps);
        ensure!(
            p.every_epochs >= 0,
            "train.preview.every_epochs must be 0 (off) or positive, got {}",
            p.every_epochs
        );
        ensure!(p.num > 0, "train.preview.num must be a positive integer, got {}", p.num);
        let e = &self.eval;
        ensure!(
            e.every_epochs >= 0,
            "train.eval.every_epochs must be 0 (off) or positive, got {}",
            e.every_epochs
        );
        // Its lower bound belongs to the metric; `train` checks it before training starts.
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn train(json: &str) -> TrainConfig {
        crate::Config::from_json(&format!(r#"{{"train": {json}}}"#)).unwrap().train
    }

    const MINUTE: Duration = Duration::from_secs(60);

    #[test]
    fn without_either_setting_every_epoch_saves_as_the_original() {
        let t = TrainConfig::default();
        assert!((1..=7).all(|done| t.save_due(done, Duration::ZERO)));
    }

    #[test]
    fn save_every_saves_on_its_multiples_only() {
        let t = train(r#"{"save_every": 3}"#);
        let due: Vec<i64> = (1..=10).filter(|&done| t.save_due(done, 100 * MINUTE)).collect();
        assert_eq!(due, [3, 6, 9]);
    }

    #[test]
    fn save_every_minutes_alone_saves_by_time_only() {
        let t = train(r#"{"save_every_minutes": 5}"#);
        assert!(!t.save_due(1, 4 * MINUTE) && !t.save_due(5, 4 * MINUTE));
        assert!(t.save_due(7, 5 * MINUTE) && t.save_due(1, 6 * MINUTE));
    }

    #[test]
    fn both_settings_save_when_either_is_due() {
        let t = train(r#"{"save_every": 4, "save_every_minutes": 0.5}"#);
        assert!(t.save_due(4, Duration::ZERO), "by count");
        assert!(t.save_due(3, MINUTE / 2), "by time");
        assert!(!t.save_due(3, MINUTE / 3));
    }

    #[test]
    fn bad_intervals_are_one_line_naming_field_and_value() {
        let err = |json: &str| {
            let text =
                format!("{:#}", crate::Config::from_json(&format!(r#"{{"train": {json}}}"#)).unwrap_err());
            assert!(!text.contains('\n'), "{text}");
            text
        };
        for (json, field, value) in [
            (r#"{"save_every": 0}"#, "train.save_every", "0"),
            (r#"{"save_every": -2}"#, "train.save_every", "-2"),
            (r#"{"save_every_minutes": 0}"#, "train.save_every_minutes", "0"),
            (r#"{"save_every_minutes": -1.5}"#, "train.save_every_minutes", "-1.5"),
        ] {
            let text = err(json);
            assert!(text.contains(field) && text.contains(&format!("got {value}")), "{text}");
        }
        let text = err(r#"{"save_every": 1.5}"#);
        assert!(text.contains("train.save_every"), "{text}");
        let t = TrainConfig { save_every_minutes: Some(f64::INFINITY), ..TrainConfig::default() };
        assert!(format!("{:#}", t.validate().unwrap_err()).contains("train.save_every_minutes"));
        let t = TrainConfig { save_every_minutes: Some(f64::NAN), ..TrainConfig::default() };
        assert!(t.validate().is_err());
    }
}

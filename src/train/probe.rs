//! Sample quality after epochs (`train.eval`): images sampled with the EMA weights and the
//! preview's sampler, measured against the training data with the sliced Wasserstein distance
//! of `crate::quality`, and logged as `Quality/swd` (and `Quality/swd_<side>` per level).

use anyhow::{ensure, Result};
use tch::{Device, Kind, Tensor};

use super::preview::EmaSwap;
use super::trainer::Trainer;
use crate::data::Dataset;
use crate::quality::{self, SwdOptions, SwdReport};
use crate::rng::step_seed;
use crate::sampling::{self, SampleOptions};
use crate::tensorboard::Logger;

/// Images sampled per forward pass while measuring.
const BATCH: i64 = 64;

/// The training images the samples are compared with, loaded once.
pub(super) struct Probe {
    data: Tensor,
}

impl Probe {
    /// Loads `train.eval.num` images of `dataset` (evenly spaced over it).
    pub(super) fn new(dataset: &Dataset, num: i64) -> Result<Self> {
        let min = quality::MIN_IMAGES as i64;
        ensure!(num >= min, "train.eval.num must be at least {min}, got {num}");
        Ok(Self { data: quality::load_images(dataset, num as usize, None)? })
    }

    /// Samples as many images as the data holds (the same noise every time, so the numbers
    /// follow training, not new draws), measures and logs them at `epoch`.
    pub(super) fn measure(&self, tr: &Trainer, tb: &mut Logger, epoch: i64) -> Result<SwdReport> {
        let (m, p) = (&tr.config().model, &tr.config().train.preview);
        let n = self.data.size()[0];
        tch::manual_seed(step_seed(tr.meta.seed, -3));
        let noise = Tensor::randn([n, m.channel, m.img_size, m.img_size], (Kind::Float, Device::Cpu));
        let classes = (tr.meta.classes.len() as i64).max(1);
        let labels = Tensor::arange(n, (Kind::Int64, Device::Cpu)).remainder(classes);
        let options = SampleOptions {
            sampler: p.sampler,
            steps: p.steps,
            eta: sampling::DEFAULT_DDIM_ETA,
            keep: vec![],
            guidance: None,
        };
        let (images, _) = {
            let _ema = tr.ema.as_ref().map(|ema| EmaSwap::new(&tr.params, ema));
            sampling::sample_in_batches(
                &tr.model,
                &tr.schedule,
                &options,
                &noise,
                &labels,
                BATCH,
                &mut |_| {},
            )?
        };
        let report = quality::swd(&images, &self.data, &SwdOptions::default(), 0)?;
        tb.scalar("Quality/swd", epoch, report.mean)?;
        for (side, value) in &report.per_level {
            tb.scalar(&format!("Quality/swd_{side}"), epoch, *value)?;
        }
        Ok(report)
    }
}

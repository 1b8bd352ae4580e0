//! Sample quality after epochs (`train.eval`): images sampled with the EMA weights and the
//! preview's sampler, measured against the training data with the sliced Wasserstein distance
//! of `crate::quality`, and logged as `Quality/swd` (and `Quality/swd_<side>` per level).

use anyhow::{ensure, Result};
use tch::{Device, Kind, Tensor};

use super::preview::EmaSwap;
use super::trainer::Trainer;
use crate::autoencoder::visible;
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
    /// The labels the samples are drawn with: the data's classes in their proportions.
    labels: Tensor,
}

impl Probe {
    /// Loads `train.eval.num` images of `dataset` (evenly spaced over it).
    pub(super) fn new(dataset: &Dataset, num: i64) -> Result<Self> {
        let min = quality::MIN_IMAGES as i64;
        ensure!(num >= min, "train.eval.num must be at least {min}, got {num}");
        let data = quality::load_images(dataset, num as usize, None)?;
        let labels = proportional_labels(dataset, data.size()[0] as usize);
        Ok(Self { data, labels })
    }

    /// Samples as many images as the data holds (the same noise every time, so the numbers
    /// follow training, not new draws), measures and logs them at `epoch`.
    pub(super) fn measure(&self, tr: &Trainer, tb: &mut Logger, epoch: i64) -> Result<SwdReport> {
        let (m, p) = (&tr.config().model, &tr.config().train.preview);
        let n = self.data.size()[0];
        tch::manual_seed(step_seed(tr.meta.seed, -3));
        let noise = Tensor::randn(m.input_shape(n), (Kind::Float, Device::Cpu));
        let options = SampleOptions {
            sampler: p.sampler,
            steps: p.steps,
            eta: sampling::DEFAULT_DDIM_ETA,
            keep: vec![],
            guidance: None,
            shift: None,
            cfg_interval_start: None,
        };
        let (images, _) = {
            let _ema = tr.ema.as_ref().map(|ema| EmaSwap::new(&tr.params, ema));
            sampling::sample_in_batches(
                &tr.model,
                &tr.schedule,
                &options,
                &noise,
                &self.labels,
                BATCH,
                &mut |_| {},
            )?
        };
        let images = visible(tr.latent.as_ref(), images);
        let report = quality::swd(&images, &self.data, &SwdOptions::default(), 0)?;
        tb.scalar("Quality/swd", epoch, report.mean)?;
        for (side, value) in &report.per_level {
            tb.scalar(&format!("Quality/swd_{side}"), epoch, *value)?;
        }
        Ok(report)
    }
}

/// `n` labels with the data's class proportions: the labels of `n` images evenly spaced over
/// `dataset` (whose images are in class order), so a class of 90% of the images gets 90% of
/// the samples and the distance measures quality, not the class mix.
fn proportional_labels(dataset: &Dataset, n: usize) -> Tensor {
    let len = dataset.len();
    let labels: Vec<i64> = (0..n).map(|k| dataset.label(k * len / n).unwrap_or(0)).collect();
    Tensor::from_slice(&labels)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_labels_follow_the_class_proportions() {
        let dir = tempfile::tempdir().unwrap();
        for (class, count) in [("a", 9), ("b", 3)] {
            std::fs::create_dir_all(dir.path().join(class)).unwrap();
            for i in 0..count {
                image::RgbImage::new(2, 2).save(dir.path().join(class).join(format!("{i}.png"))).unwrap();
            }
        }
        let dataset = Dataset::open(&dir.path().display().to_string(), 2).unwrap();
        let labels = Vec::<i64>::try_from(proportional_labels(&dataset, 8)).unwrap();
        assert_eq!(labels.iter().filter(|&&l| l == 1).count(), 2, "{labels:?}");
        assert_eq!(labels.len(), 8);
    }
}

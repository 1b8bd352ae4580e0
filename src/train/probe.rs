//! Sample quality after epochs (`train.eval`): images sampled with the EMA weights and the
//! preview's sampler, measured against the training data with the sliced Wasserstein distance
//! of `crate::quality`, and logged as `Quality/swd` (and `Quality/swd_<side>` per level). When
//! pytorch-fid's Inception weights are already in their folder (`$DIT_INCEPTION_DIR`, else the
//! user cache: never downloaded during training) FID and KID are logged too, as `Quality/fid`
//! and `Quality/kid`.

use anyhow::{ensure, Context, Result};
use tch::{Device, Kind, Tensor};

use super::preview::EmaSwap;
use super::trainer::Trainer;
use crate::autoencoder::visible;
use crate::data::Dataset;
use crate::quality::fid::{frechet_distance, Statistics};
use crate::quality::inception::Inception;
use crate::quality::kid::{kid, Kid, KidOptions};
use crate::quality::{self, features, inception_files, SwdOptions, SwdReport};
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
    /// The Inception network and the data's features, when its weights are present.
    inception: Option<(Inception, Tensor)>,
}

/// What one measurement gave.
pub(super) struct Measured {
    pub swd: SwdReport,
    pub fid: Option<f64>,
    pub kid: Option<Kid>,
}

impl Probe {
    /// Loads `train.eval.num` images of `dataset` (evenly spaced over it), and their Inception
    /// features when the network's weights are present.
    pub(super) fn new(dataset: &Dataset, num: i64) -> Result<Self> {
        let min = quality::MIN_IMAGES as i64;
        ensure!(num >= min, "train.eval.num must be at least {min}, got {num}");
        let data = quality::load_images(dataset, num as usize, None)?;
        let labels = proportional_labels(dataset, data.size()[0] as usize);
        let folder = inception_files::folder_from(None, |name| std::env::var_os(name))?;
        let weights = folder.join(inception_files::FILE);
        let inception = match weights.is_file() {
            false => None,
            true => {
                let net = Inception::load(&weights, Device::cuda_if_available())?;
                println!("sample quality: FID and KID too, with {}", weights.display());
                let features =
                    features::features(&net, &((&data + 1.0) / 2.0), "features of the data", false);
                Some((net, features))
            }
        };
        Ok(Self { data, labels, inception })
    }

    /// Samples as many images as the data holds (the same noise every time, so the numbers
    /// follow training, not new draws), measures and logs them at `epoch`.
    pub(super) fn measure(&self, tr: &Trainer, tb: &mut Logger, epoch: i64) -> Result<Measured> {
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
        let mut measured = Measured { swd: report, fid: None, kid: None };
        if let Some((net, data)) = &self.inception {
            let ours = features::features(net, &((images.clamp(-1.0, 1.0) + 1.0) / 2.0), "features", false);
            let fid = frechet_distance(&Statistics::of(&ours)?, &Statistics::of(data)?).context("FID")?;
            let kid = kid(&ours, data, &KidOptions::default(), 0)?;
            tb.scalar("Quality/fid", epoch, fid)?;
            tb.scalar("Quality/kid", epoch, kid.mean)?;
            (measured.fid, measured.kid) = (Some(fid), Some(kid));
        }
        Ok(measured)
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

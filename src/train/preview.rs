//! The preview after epochs: a sample with the EMA weights, the original's 16-state grid of the
//! first image logged as `Generated Images`, and a grid of all previews written beside the
//! checkpoint.

use std::path::PathBuf;

use anyhow::Result;
use tch::{Device, Kind, Tensor};

use super::trainer::Trainer;
use crate::autoencoder::visible;
use crate::optim::Ema;
use crate::rng::step_seed;
use crate::sampling::{self, Normalize, SampleOptions};
use crate::tensorboard::Logger;

/// Tiles per row of the TensorBoard preview grid (torchvision's make_grid default).
const PREVIEW_GRID_ROW: i64 = 8;

/// The EMA weights copied into the parameters for as long as it lives; the raw weights come
/// back when it drops, whatever happened in between.
pub(super) struct EmaSwap<'a> {
    params: &'a [Tensor],
    raw: Vec<Tensor>,
}

impl<'a> EmaSwap<'a> {
    pub(super) fn new(params: &'a [Tensor], ema: &Ema) -> Self {
        let raw = tch::no_grad(|| {
            params
                .iter()
                .zip(&ema.shadow)
                .map(|(p, e)| {
                    let saved = p.detach().copy();
                    p.shallow_clone().copy_(e);
                    saved
                })
                .collect()
        });
        Self { params, raw }
    }
}

impl Drop for EmaSwap<'_> {
    fn drop(&mut self) {
        tch::no_grad(|| self.params.iter().zip(&self.raw).for_each(|(p, r)| p.shallow_clone().copy_(r)));
    }
}

/// Samples the preview of `epoch` (0-based) and writes it to `png` (default: beside the
/// checkpoint, `<checkpoint>.preview.png`); returns where it went.
pub(super) fn preview(tr: &Trainer, tb: &mut Logger, epoch: i64, png: Option<PathBuf>) -> Result<PathBuf> {
    let (m, p) = (&tr.config().model, &tr.config().train.preview);
    let keep = sampling::progress_indices(p.steps);
    let options = SampleOptions {
        sampler: p.sampler,
        steps: p.steps,
        eta: sampling::DEFAULT_DDIM_ETA,
        keep,
        guidance: None,
        shift: None,
        cfg_interval_start: None,
    };
    // The same noise every time, so previews show training progress, not new draws.
    tch::manual_seed(step_seed(tr.meta.seed, -2));
    let n = p.num;
    let noise = Tensor::randn(m.input_shape(n), (Kind::Float, Device::Cpu)).to_device(tr.device);
    let classes = (tr.meta.classes.len() as i64).max(1);
    let labels = Tensor::arange(n, (Kind::Int64, tr.device)).remainder(classes);
    let (images, states) = {
        let _ema = tr.ema.as_ref().map(|ema| EmaSwap::new(&tr.params, ema));
        sampling::sample(&tr.model, &tr.schedule, &options, noise, &labels, &mut |_, _| {})?
    };

    // In latent space every state is decoded: what a user sees is images.
    let first: Vec<Tensor> = states.iter().map(|s| s.get(0)).collect();
    let first = visible(tr.latent.as_ref(), Tensor::stack(&first, 0));
    let images = visible(tr.latent.as_ref(), images);
    let grid = sampling::to_image_grid(&first, PREVIEW_GRID_ROW, Normalize::MinMax);
    tb.image("Generated Images", epoch, &grid)?;
    let path = png.unwrap_or_else(|| {
        let mut name = tr.weights_path.as_os_str().to_owned();
        name.push(".preview.png");
        PathBuf::from(name)
    });
    let nrow = (n as f64).sqrt().ceil() as i64;
    sampling::save_png(&sampling::to_image_grid(&images, nrow, Normalize::Fixed), &path)?;
    Ok(path)
}

//! What the `sample` command does between parsing and writing: the seed contract, batching and
//! progress, and the output files.
//!
//! Seed contract: after `tch::manual_seed(seed)` the noise of all `num` images is one
//! `Tensor::randn([num, C, I, I])` on the CPU, moved to the device afterwards, so `num = N`
//! draws what the original's `torch.randn(N, C, I, I)` draws. Exact parity with the original
//! (CPU, ddpm) holds when the batch size equals `num`: smaller batches keep the same initial
//! noise but draw the per-step noise batch after batch.

use std::path::PathBuf;

use anyhow::Result;
use tch::{Device, Kind, Tensor};

use crate::autoencoder::{visible, LatentDecoder};
use crate::checkpoint::{self, Loaded};
use crate::diffusion::Schedule;
use crate::progress::Progress;
use crate::sampling::{self, Normalize, SampleOptions};

/// How many images, of which label, from which seed, in batches of how many.
#[derive(Debug, Clone)]
pub struct Request {
    pub num: i64,
    pub label: i64,
    pub seed: u64,
    pub batch_size: i64,
}

/// Samples `req` with `opts` from `loaded`'s model on `device`, with a progress bar; returns
/// the images (N, C, I, I) in [−1, 1] and the kept states, on the CPU. A latent-space model's
/// latents, final and kept, are decoded by `decoder` into images of `img_size`.
pub fn generate(
    loaded: &Loaded,
    opts: &SampleOptions,
    req: &Request,
    device: Device,
    decoder: Option<&LatentDecoder>,
) -> Result<(Tensor, Vec<Tensor>)> {
    let schedule = Schedule::new(&loaded.config.diffusion, device).for_space(loaded.config.model.autoencoder);
    let m = &loaded.config.model;
    tch::manual_seed(req.seed as i64);
    let noise = Tensor::randn(m.input_shape(req.num), (Kind::Float, Device::Cpu));
    let labels = Tensor::full([req.num], req.label, (Kind::Int64, Device::Cpu));
    let chunks = (req.num + req.batch_size - 1) / req.batch_size;
    let total = opts.steps as u64 * chunks as u64;
    let mut bar = Progress::new("sampling", total, 0);
    let result = sampling::sample_in_batches(
        &loaded.model,
        &schedule,
        opts,
        &noise,
        &labels,
        req.batch_size,
        &mut |done| bar.set(done, || format!("sampling: {done}/{total} steps")),
    );
    bar.finish();
    let (images, kept) = result?;
    Ok((visible(decoder, images), kept.into_iter().map(|k| visible(decoder, k)).collect()))
}

/// Where the results go; `None` fields are not written.
#[derive(Debug, Clone, Default)]
pub struct Outputs {
    /// A PNG grid of all images.
    pub grid: Option<PathBuf>,
    /// A folder of one PNG per image (0000.png, 0001.png, …).
    pub dir: Option<PathBuf>,
    /// A PNG of the denoising: one row per image, one column per kept state.
    pub progress: Option<PathBuf>,
    /// The images as float32 in [−1, 1] under the key "images".
    pub tensor: Option<PathBuf>,
}

/// Writes every output asked for, saying so on standard output.
pub fn write_outputs(out: &Outputs, images: &Tensor, kept: &[Tensor]) -> Result<()> {
    let num = images.size()[0];
    if let Some(path) = &out.grid {
        let nrow = (num as f64).sqrt().ceil() as i64;
        sampling::save_png(&sampling::to_image_grid(images, nrow, Normalize::Fixed), path)?;
        println!("wrote {} (grid of {num})", path.display());
    }
    if let Some(dir) = &out.dir {
        for i in 0..num {
            sampling::save_png(&sampling::to_image(&images.get(i)), &dir.join(format!("{i:04}.png")))?;
        }
        println!("wrote {num} PNG file(s) to {}", dir.display());
    }
    if let Some(path) = &out.progress {
        sampling::save_png(&sampling::progress_grid(kept), path)?;
        println!("wrote {} (denoising progress)", path.display());
    }
    if let Some(path) = &out.tensor {
        checkpoint::write_tensors(path, &[("images".to_string(), images.to_kind(Kind::Float))])?;
        println!("wrote {} (\"images\", float32 in [-1, 1])", path.display());
    }
    Ok(())
}

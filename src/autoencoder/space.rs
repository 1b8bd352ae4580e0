//! Turning what a latent-space DiT outputs into images: normalised latents → (undo the
//! normalisation, `crate::data::latents`) → the decoder → images in [−1, 1], the range every
//! image writer and the quality measure take. In pixel space nothing is done ([`visible`]).

use std::path::Path;

use anyhow::{anyhow, Result};
use tch::{Device, Tensor};

use super::files::{self, Located};
use super::{Decoder, Encoder, Variant};
use crate::data::LatentStats;

/// Latents decoded per forward pass of the decoder: its activations at 256² are about
/// 17 MB a image, so this bounds the memory of decoding hundreds of samples.
const DECODE_BATCH: i64 = 8;

/// The weight files of `variant` ([`files::locate`]: `dir`, then `$DIT_AUTOENCODER_DIR`, then
/// the user cache, downloading the pinned ones), with a one-line error.
pub fn locate(variant: Variant, dir: Option<&Path>) -> Result<Located> {
    files::locate(variant.name(), dir).map_err(|e| anyhow!("{e:#}"))
}

/// The encoder of `located`, its convolutions in channels-last layout (the published numbers
/// within 2e-5, measured about 1.6× faster on the CPU: BENCHMARKS.md, "Latent space").
pub fn load_encoder(located: &Located, variant: Variant, device: Device) -> Result<Encoder> {
    Ok(Encoder::load(&located.encoder, variant, device)?.channels_last())
}

/// The decoder of `located`, channels-last as [`load_encoder`] (a training run loads it before
/// encoding, so that a bad file stops the start before that work).
pub fn load_decoder(located: &Located, variant: Variant, device: Device) -> Result<Decoder> {
    Ok(Decoder::load(&located.decoder, variant, device)?.channels_last())
}

/// The decoder of a latent-space model with the normalisation its latents were trained under.
pub struct LatentDecoder {
    decoder: Decoder,
    stats: LatentStats,
}

impl LatentDecoder {
    /// The decoder of `located` on `device` (channels-last, as [`load_encoder`]), after
    /// checking `stats` against its channels.
    pub fn load(located: &Located, variant: Variant, stats: LatentStats, device: Device) -> Result<Self> {
        stats.check(variant.latent_channels(), &located.decoder.display().to_string())?;
        let decoder = Decoder::load(&located.decoder, variant, device)?.channels_last();
        Ok(Self { decoder, stats })
    }

    /// A decoder already loaded (tests).
    pub fn new(decoder: Decoder, stats: LatentStats) -> Self {
        Self { decoder, stats }
    }

    pub fn stats(&self) -> &LatentStats {
        &self.stats
    }

    /// Normalised latents (N, C, h, w) → images (N, 3, 8h, 8w) in [−1, 1] on the CPU, decoded
    /// [`DECODE_BATCH`] at a time.
    pub fn to_images(&self, x: &Tensor) -> Tensor {
        let n = x.size()[0];
        let parts: Vec<Tensor> = (0..n)
            .step_by(DECODE_BATCH as usize)
            .map(|start| {
                let z = self.stats.denormalise(&x.narrow(0, start, DECODE_BATCH.min(n - start)));
                (self.decoder.decode(&z) * 2.0 - 1.0).to_device(Device::Cpu)
            })
            .collect();
        Tensor::cat(&parts, 0)
    }
}

/// What a model's outputs `x` look like: decoded by `decoder` in latent space, else `x` as it is.
pub fn visible(decoder: Option<&LatentDecoder>, x: Tensor) -> Tensor {
    match decoder {
        Some(d) => d.to_images(&x),
        None => x,
    }
}

//! `Decoder`: latents → RGB images in [0, 1] at 8 times the side (`layout::decoder`).

use std::path::Path;

use anyhow::Result;
use tch::nn::{self, Module};
use tch::{Device, Kind, Tensor};

use super::layout;
use super::stack::Stack;
use super::Variant;

#[derive(Debug)]
pub struct Decoder {
    stack: Stack,
    variant: Variant,
    device: Device,
}

impl Decoder {
    /// Built on `vs` with tch's default initialisation, to be loaded or used as it is (tests).
    pub fn new(vs: &nn::Path, variant: Variant) -> Self {
        Self { stack: Stack::new(vs, &layout::decoder(variant)), variant, device: vs.device() }
    }

    /// The decoder of `variant` with the weights of `path` (`.pth`, `.safetensors`, `.ot`),
    /// checked strictly (`load.rs`), frozen, on `device`.
    pub fn load(path: &Path, variant: Variant, device: Device) -> Result<Self> {
        super::load::load(path, variant, "decoder", device, |vs| Self::new(vs, variant))
    }

    pub fn variant(&self) -> Variant {
        self.variant
    }

    /// The same network computing in channels-last memory format: its convolution weights
    /// copied channels-last (no longer shared with the VarStore it was built on), each input
    /// converted on the way in and each output returned contiguous as before. The results
    /// equal the plain network's within float rounding (tests/autoencoder.rs); faster on the
    /// CPU, where oneDNN then skips its layout reorders (scripts/bench_latent).
    pub fn channels_last(mut self) -> Self {
        self.stack.channels_last();
        self
    }

    /// Latents (N, C, h, w) float → images (N, 3, 8h, 8w) in [0, 1] on the decoder's device,
    /// without gradient. The soft clamp on the input is the network's first layer; the clamp
    /// to [0, 1] of the output is the published way to use it (not part of its Sequential).
    pub fn decode(&self, latents: &Tensor) -> Tensor {
        let size = latents.size();
        let channels = self.variant.latent_channels();
        assert!(
            size.len() == 4 && size[1] == channels,
            "latents must be (N, {channels}, h, w), got {size:?}"
        );
        assert_eq!(latents.kind(), Kind::Float, "latents must be float32");
        let images = tch::no_grad(|| self.stack.forward(&latents.to_device(self.device))); // (N, 3, 8h, 8w)
        images.clamp(0.0, 1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_are_eight_times_the_side_and_inside_the_unit_interval() {
        for variant in [Variant::Taesd, Variant::Taef2] {
            let vs = nn::VarStore::new(Device::Cpu);
            let dec = Decoder::new(&vs.root(), variant);
            let z = Tensor::randn([2, variant.latent_channels(), 4, 3], (Kind::Float, Device::Cpu)) * 10;
            let x = dec.decode(&z);
            assert_eq!(x.size(), [2, 3, 32, 24], "{variant}");
            let (lo, hi) = (x.min().double_value(&[]), x.max().double_value(&[]));
            assert!((0.0..=1.0).contains(&lo) && (0.0..=1.0).contains(&hi), "{variant}: [{lo}, {hi}]");
        }
    }

    #[test]
    fn parameter_names_are_the_published_sequential_keys() {
        let vs = nn::VarStore::new(Device::Cpu);
        let _dec = Decoder::new(&vs.root(), Variant::Taef2);
        let shapes = crate::checkpoint::shapes(&vs);
        assert_eq!(shapes.len(), 7 * 6 + 3 * (6 + 4) + 3 + 2 * 2);
        assert_eq!(shapes["1.weight"], [64, 32, 3, 3]);
        assert_eq!(shapes["3.pool.1.bias"], [256]);
        assert_eq!(shapes["17.weight"], [64, 64, 3, 3]);
        assert_eq!(shapes["19.weight"], [3, 64, 3, 3]);
        assert!(!shapes.contains_key("0.weight") && !shapes.contains_key("7.bias"));
        assert!(
            !shapes.keys().any(|k| k.starts_with("8.pool")),
            "only the first three blocks have the branch"
        );
    }
}

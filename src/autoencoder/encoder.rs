//! `Encoder`: RGB images in [0, 1] → latents at 1/8 of the side (`layout::encoder`).

use std::path::Path;

use anyhow::Result;
use tch::nn::{self, Module};
use tch::{Device, Kind, Tensor};

use super::layout::{self, RGB};
use super::stack::Stack;
use super::Variant;

#[derive(Debug)]
pub struct Encoder {
    stack: Stack,
    variant: Variant,
    device: Device,
}

impl Encoder {
    /// Built on `vs` with tch's default initialisation, to be loaded or used as it is (tests).
    pub fn new(vs: &nn::Path, variant: Variant) -> Self {
        Self { stack: Stack::new(vs, &layout::encoder(variant)), variant, device: vs.device() }
    }

    /// The encoder of `variant` with the weights of `path` (`.pth`, `.safetensors`, `.ot`),
    /// checked strictly (`load.rs`), frozen, on `device`.
    pub fn load(path: &Path, variant: Variant, device: Device) -> Result<Self> {
        super::load::load(path, variant, "encoder", device, |vs| Self::new(vs, variant))
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

    /// Images (N, 3, H, W), float in [0, 1] → latents (N, C, H/8, W/8) on the encoder's device,
    /// without gradient (sides not divisible by 8 round up, as the stride-2 convolutions do).
    pub fn encode(&self, images: &Tensor) -> Tensor {
        let size = images.size();
        assert!(size.len() == 4 && size[1] == RGB, "images must be (N, 3, H, W), got {size:?}");
        assert_eq!(images.kind(), Kind::Float, "images must be float32 in [0, 1]");
        tch::no_grad(|| self.stack.forward(&images.to_device(self.device))) // (N, C, H/8, W/8)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latents_have_the_variants_channels_at_an_eighth_of_the_side() {
        for variant in Variant::ALL {
            let vs = nn::VarStore::new(Device::Cpu);
            let enc = Encoder::new(&vs.root(), variant);
            let z = enc.encode(&Tensor::rand([2, 3, 64, 48], (Kind::Float, Device::Cpu)));
            assert_eq!(z.size(), [2, variant.latent_channels(), 8, 6], "{variant}");
            assert!(!z.requires_grad(), "{variant}");
        }
    }

    #[test]
    fn parameter_names_are_the_published_sequential_keys() {
        let vs = nn::VarStore::new(Device::Cpu);
        let _enc = Encoder::new(&vs.root(), Variant::Taef2);
        let shapes = crate::checkpoint::shapes(&vs);
        // 1 + 3 + 3 plain blocks of 6 tensors, 3 with the 5-tensor branch, 3 bias-free
        // resampling convolutions and the first and last convolutions with their biases.
        assert_eq!(shapes.len(), 7 * 6 + 3 * (6 + 4) + 3 + 2 * 2);
        assert_eq!(shapes["1.conv.4.bias"], [64]);
        assert_eq!(shapes["13.pool.0.weight"], [256, 64, 1, 1]);
        assert_eq!(shapes["13.pool.1.weight"], [256]);
        assert_eq!(shapes["13.pool.3.weight"], [64, 256, 1, 1]);
        assert_eq!(shapes["14.weight"], [32, 64, 3, 3]);
        assert!(!shapes.contains_key("2.bias") && !shapes.contains_key("10.bias"));
        assert!(!shapes.keys().any(|k| k.contains("__") || k.contains("skip")), "{shapes:?}");
    }
}

//! JPEG pixels from libjpeg-turbo through the `turbojpeg` crate, shrunk in the decoder by 1/2,
//! 1/4 or 1/8 where the image is large enough (DCT-domain scaling: the inverse DCT computes
//! only the low frequencies of each 8×8 block, as PIL's `draft` and libjpeg-turbo's
//! `scale_denom` do), so a 4000×3000 photo headed for 256² costs an eighth of its pixels.
//!
//! Why libjpeg-turbo: it is the decoder PIL itself uses, with SIMD kernels, fuzzed
//! continuously, and its scaled inverse DCTs are the standard ones. Measured on this project's
//! CPU, the pure-Rust decoders were slower where it matters: `zune-jpeg` (the `image` crate's)
//! has no scaled decoding, and `jpeg-decoder`'s `scale` still decoded a 4000×3000 photo 2×
//! slower than libjpeg-turbo at 1/8. The crate builds libjpeg-turbo from its bundled source
//! (cmake and nasm, installed by scripts/setup), so no system library version matters.

use std::cell::RefCell;

use anyhow::{anyhow, Result};
use image::RgbImage;
use turbojpeg::{Colorspace, Decompressor, Image, PixelFormat, ScalingFactor};

/// Shrink only while the shrunk shorter side keeps at least this many times the target side,
/// so that the antialiased resize after it still has pixels to average (as PIL's `reducing_gap`).
const REDUCING_GAP: u32 = 2;
/// Progressive scans accepted in one file: real photos use about ten; a crafted file with
/// thousands would take minutes to decode.
const MAX_SCANS: u32 = 500;

thread_local! {
    /// One decompressor per decoding thread (creating one allocates libjpeg's state).
    static DECOMPRESSOR: RefCell<Option<Decompressor>> = const { RefCell::new(None) };
}

/// The denominator (1, 2, 4 or 8) to decode a `width × height` JPEG at for a square of side
/// `size`: the largest that keeps the shorter side ≥ `REDUCING_GAP × size`.
pub(super) fn shrink_denominator(width: u32, height: u32, size: u32) -> u32 {
    let short = width.min(height);
    [8, 4, 2].into_iter().find(|&d| short.div_ceil(d) >= REDUCING_GAP * size).unwrap_or(1)
}

/// Decodes the JPEG `bytes` (`width × height` by its header, already checked against the
/// decode limits) to RGB, shrunk by `1 / denominator`; `None` for colour spaces libjpeg-turbo
/// does not convert to RGB (CMYK, YCCK), which the `image` crate then decodes.
pub(super) fn decode(bytes: &[u8], denominator: u32) -> Result<Option<RgbImage>> {
    DECOMPRESSOR.with_borrow_mut(|slot| {
        let decompressor = match slot {
            Some(d) => d,
            None => {
                let mut fresh = Decompressor::new()?;
                fresh.set_scan_limit(MAX_SCANS)?;
                slot.insert(fresh)
            }
        };
        let header = decompressor.read_header(bytes)?;
        if matches!(header.colorspace, Colorspace::CMYK | Colorspace::YCCK) {
            return Ok(None);
        }
        let factor = ScalingFactor::new(1, denominator as usize);
        decompressor.set_scaling_factor(factor)?;
        let scaled = header.scaled(factor);
        let (width, height) = (scaled.width, scaled.height);
        let mut image = Image {
            pixels: vec![0; 3 * width * height],
            width,
            pitch: 3 * width,
            height,
            format: PixelFormat::RGB,
        };
        decompressor.decompress(bytes, image.as_deref_mut())?;
        let rgb = RgbImage::from_raw(width as u32, height as u32, image.pixels)
            .ok_or_else(|| anyhow!("the JPEG decoder returned a short buffer"))?;
        Ok(Some(rgb))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shrinks_only_what_stays_twice_the_target() {
        assert_eq!(shrink_denominator(4000, 3000, 256), 4); // 750 ≥ 512; 1/8 gives 375
        assert_eq!(shrink_denominator(4000, 3000, 128), 8);
        assert_eq!(shrink_denominator(500, 375, 256), 1);
        assert_eq!(shrink_denominator(500, 375, 64), 2); // 188 ≥ 128; 1/4 gives 94
        assert_eq!(shrink_denominator(1, 1, 1), 1);
    }
}

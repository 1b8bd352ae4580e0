//! JPEG pixels from libjpeg-turbo (TurboJPEG 3, through `turbo.rs`), shrunk in the decoder by 1/2,
//! 1/4 or 1/8 where the image is large enough (DCT-domain scaling: the inverse DCT computes
//! only the low frequencies of each 8×8 block, as PIL's `draft` and libjpeg-turbo's
//! `scale_denom` do), so a 4000×3000 photo headed for 256² costs an eighth of its pixels.
//!
//! Files whose decode raised libjpeg *warnings* (say "Corrupt JPEG data: 64 extraneous bytes
//! before marker 0xd9", common in scraped and camera data) load with the pixels decoded, as
//! PIL loads them; truncated files are refused, as PIL refuses them (`accept_warned`).
//!
//! Why libjpeg-turbo: it is the decoder PIL itself uses, with SIMD kernels, fuzzed
//! continuously, and its scaled inverse DCTs are the standard ones. Measured on this project's
//! CPU, the pure-Rust decoders were slower where it matters: `zune-jpeg` (the `image` crate's)
//! has no scaled decoding, and `jpeg-decoder`'s `scale` still decoded a 4000×3000 photo 2×
//! slower than libjpeg-turbo at 1/8. The crate builds libjpeg-turbo from its bundled source
//! (cmake and nasm, installed by scripts/setup), so no system library version matters.

use std::cell::RefCell;

use anyhow::{anyhow, ensure, Result};
use image::RgbImage;
use turbojpeg_sys as tj;

use super::jpeg_markers::reaches_end_marker;
use super::turbo::{Decompressor, Outcome};

/// Shrink only while the shrunk shorter side keeps at least this many times the target side,
/// so that the antialiased resize after it still has pixels to average (as PIL's `reducing_gap`).
const REDUCING_GAP: u32 = 2;
/// Progressive scans accepted in one file: real photos use about ten; a crafted file with
/// thousands would take minutes to decode.
const MAX_SCANS: i32 = 500;

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

/// Decodes the JPEG `bytes` (already checked against the decode limits) to RGB, shrunk by
/// `1 / denominator` (1 for lossless JPEGs, which TurboJPEG cannot scale), with the denominator
/// used; `None` for colour spaces libjpeg-turbo does not convert to RGB (CMYK, YCCK), which the
/// `image` crate then decodes. Files with warnings load as PIL loads them ([`accept_warned`]).
pub(super) fn decode(bytes: &[u8], denominator: u32) -> Result<Option<(RgbImage, u32)>> {
    DECOMPRESSOR.with_borrow_mut(|slot| {
        let decompressor = match slot {
            Some(d) => d,
            None => {
                let mut fresh = Decompressor::new()?;
                fresh.set(tj::TJPARAM_TJPARAM_SCANLIMIT, MAX_SCANS)?;
                slot.insert(fresh)
            }
        };
        let header = decompressor.read_header(bytes)?;
        if header.colorspace == tj::TJCS_TJCS_CMYK || header.colorspace == tj::TJCS_TJCS_YCCK {
            return Ok(None);
        }
        let denominator = if header.lossless { 1 } else { denominator };
        let (pixels, width, height, outcome) = decompressor.decompress_rgb(bytes, &header, denominator)?;
        if let Outcome::Warned(message) = outcome {
            accept_warned(bytes, &message)?;
        }
        let rgb = RgbImage::from_raw(width as u32, height as u32, pixels)
            .ok_or_else(|| anyhow!("the JPEG decoder returned a short buffer"))?;
        Ok(Some((rgb, denominator)))
    })
}

/// A decode that raised warnings only (`message`: the first) gave the whole image, as PIL
/// with its defaults gives it, unless the data ran out before the end-of-image marker: a
/// truncated file, which PIL refuses unless `ImageFile.LOAD_TRUNCATED_IMAGES` is set, and so
/// does this loader. (Fatal errors after warnings are errors already: `turbo.rs`.)
fn accept_warned(bytes: &[u8], message: &str) -> Result<()> {
    ensure!(
        reaches_end_marker(bytes),
        "truncated JPEG: the data ends before its end-of-image marker (libjpeg-turbo: {message}); \
         PIL refuses such files too"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 48×40 baseline JPEG of a smooth gradient (quality 90).
    fn jpeg() -> Vec<u8> {
        let rgb = RgbImage::from_fn(48, 40, |x, y| image::Rgb([(x * 5) as u8, (y * 6) as u8, 128]));
        let mut out = vec![];
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90).encode_image(&rgb).unwrap();
        out
    }

    fn pixels(bytes: &[u8]) -> Result<Vec<u8>> {
        Ok(decode(bytes, 1)?.expect("an RGB JPEG").0.into_raw())
    }

    #[test]
    fn warnings_keep_the_pixels_and_truncation_is_refused() {
        let clean = jpeg();
        let want = pixels(&clean).unwrap();
        let (body, eoi) = clean.split_at(clean.len() - 2);
        for stray in [4, 64] {
            // libjpeg warns "Corrupt JPEG data: N extraneous bytes before marker 0xd9".
            let damaged = [body, &vec![0u8; stray], eoi].concat();
            assert_eq!(pixels(&damaged).unwrap(), want, "{stray} stray bytes");
        }
        let after = [&clean[..], &[0x17u8; 100][..]].concat();
        assert_eq!(pixels(&after).unwrap(), want, "garbage after EOI");
        // Cut inside the image data (after SOS), or just the EOI marker.
        let sos = clean.windows(2).position(|w| w == [0xFF, 0xDA]).unwrap();
        for cut in [clean.len() - 2, clean.len() - 40, (sos + clean.len()) / 2, sos + 20] {
            let err = pixels(&clean[..cut]).unwrap_err().to_string();
            assert!(err.starts_with("truncated JPEG") && !err.contains('\n'), "cut at {cut}: {err}");
        }
        // Cut inside the header: a fatal error.
        let err = pixels(&clean[..sos / 2]).unwrap_err().to_string();
        assert!(!err.contains('\n'), "{err}");
        // The decompressor is reused per thread: a clean file after the broken ones is clean.
        assert_eq!(pixels(&clean).unwrap(), want);
    }

    #[test]
    fn a_fatal_error_after_a_warning_is_an_error() {
        // Stray bytes (a warning), then a marker segment with a bogus length before the image
        // data: libjpeg's fatal "Bogus marker length" follows the warning.
        let clean = jpeg();
        let sos = clean.windows(2).position(|w| w == [0xFF, 0xDA]).unwrap();
        let damaged = [&clean[..sos], &[0u8; 8], &[0xFF, 0xDD, 0x00, 0x02], &clean[sos..]].concat();
        let err = pixels(&damaged).unwrap_err().to_string();
        assert!(!err.contains("extraneous") && !err.contains('\n'), "{err}");
    }

    #[test]
    fn shrinks_only_what_stays_twice_the_target() {
        assert_eq!(shrink_denominator(4000, 3000, 256), 4); // 750 ≥ 512; 1/8 gives 375
        assert_eq!(shrink_denominator(4000, 3000, 128), 8);
        assert_eq!(shrink_denominator(500, 375, 256), 1);
        assert_eq!(shrink_denominator(500, 375, 64), 2); // 188 ≥ 128; 1/4 gives 94
        assert_eq!(shrink_denominator(1, 1, 1), 1);
    }
}

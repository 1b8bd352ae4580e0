//! Decoding one image file into the square RGB bytes the model trains on: the format guessed
//! from the content, any colour type converted to RGB8 with its EXIF orientation applied, the
//! shorter side resized to `img_size` (triangle filter, i.e. area-weighted when shrinking) and
//! the centre cropped to a square, which is torchvision's `Resize(I) + CenterCrop(I)`. Decoding
//! is bounded ([`MAX_DECODE_SIDE`], [`MAX_DECODE_BYTES`]) and a decoder panic is an error.

use std::fs;
use std::io::Cursor;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

use anyhow::{anyhow, ensure, Context, Result};
use image::imageops::FilterType;
use image::{DynamicImage, ImageDecoder, ImageReader, Limits, RgbImage};

/// Largest side a decoded image may declare; larger headers are refused before any allocation.
pub const MAX_DECODE_SIDE: u32 = 16_384;
/// Largest buffer one decode may allocate (1 GiB).
pub const MAX_DECODE_BYTES: u64 = 1 << 30;

/// Reads and decodes one file into `img_size × img_size × 3` RGB bytes.
pub(super) fn load_file(path: &Path, img_size: i64) -> Result<Vec<u8>> {
    let bytes = fs::read(path).with_context(|| format!("reading image {}", path.display()))?;
    // Image decoders are third-party code fed untrusted bytes: a panic there is one bad file.
    let decoded = catch_unwind(AssertUnwindSafe(|| decode_image(&bytes)))
        .unwrap_or_else(|_| Err(anyhow!("the decoder panicked")))
        .with_context(|| format!("decoding image {}", path.display()))?;
    Ok(square_resize(&decoded, img_size as u32))
}

/// Decodes `bytes` with the format guessed from the content (not the file name), within
/// [`MAX_DECODE_SIDE`] and [`MAX_DECODE_BYTES`], applies the EXIF orientation, returns RGB8.
fn decode_image(bytes: &[u8]) -> Result<RgbImage> {
    let mut reader = ImageReader::new(Cursor::new(bytes)).with_guessed_format()?;
    ensure!(reader.format().is_some(), "not a PNG or JPEG file (unrecognised content)");
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_DECODE_SIDE);
    limits.max_image_height = Some(MAX_DECODE_SIDE);
    limits.max_alloc = Some(MAX_DECODE_BYTES);
    reader.limits(limits);
    // into_decoder checks the declared size against the limits before any pixel is allocated.
    let mut decoder = reader.into_decoder()?;
    let (width, height) = decoder.dimensions();
    ensure!(width > 0 && height > 0, "empty image ({width}×{height})");
    ensure!(
        decoder.total_bytes() <= MAX_DECODE_BYTES,
        "image too large to decode ({width}×{height}, {} bytes)",
        decoder.total_bytes()
    );
    let orientation = decoder.orientation()?;
    let mut image = DynamicImage::from_decoder(decoder)?;
    image.apply_orientation(orientation);
    Ok(image.into_rgb8())
}

/// Resizes the shorter side to `size` and crops the centre square, as `Resize + CenterCrop`:
/// done as crop-then-resize, which selects the same source square and resizes fewer pixels.
fn square_resize(image: &RgbImage, size: u32) -> Vec<u8> {
    let (w, h) = image.dimensions();
    if w == size && h == size {
        return image.as_raw().clone();
    }
    let side = w.min(h);
    let square = image::imageops::crop_imm(image, (w - side) / 2, (h - side) / 2, side, side);
    image::imageops::resize(&*square, size, size, FilterType::Triangle).into_raw()
}

//! Decoding one image file into the square RGB bytes the model trains on, meaning what
//! torchvision's `Resize(I) + CenterCrop(I)` on a PIL image means: the format guessed from the
//! content (png, jpeg, webp), any colour type converted to RGB8 with its EXIF orientation
//! applied, the shorter side resized to `img_size` with PIL's antialiased bilinear filter and
//! the centre cropped to a square (`resize.rs`). JPEGs are shrunk in the decoder first where
//! they are large (`jpeg.rs`). Decoding is bounded ([`MAX_DECODE_SIDE`], [`MAX_DECODE_BYTES`],
//! checked on the header before any pixel is allocated) and a decoder panic is an error.

use std::fs;
use std::io::Cursor;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

use anyhow::{anyhow, ensure, Context, Result};
use image::metadata::Orientation;
use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, Limits, RgbImage};

use super::{jpeg, resize};

/// Largest side a decoded image may declare; larger headers are refused before any allocation.
pub const MAX_DECODE_SIDE: u32 = 16_384;
/// Largest buffer one decode may allocate (1 GiB).
pub const MAX_DECODE_BYTES: u64 = 1 << 30;

/// Reads and decodes one file into `img_size × img_size × 3` RGB bytes.
pub(super) fn load_file(path: &Path, img_size: i64) -> Result<Vec<u8>> {
    let bytes = fs::read(path).with_context(|| format!("reading image {}", path.display()))?;
    // Image decoders are third-party code fed untrusted bytes: a panic there is one bad file.
    catch_unwind(AssertUnwindSafe(|| decode_square(&bytes, img_size as u32)))
        .unwrap_or_else(|_| Err(anyhow!("the decoder panicked")))
        .with_context(|| format!("decoding image {}", path.display()))
}

/// Decodes `bytes` (format guessed from the content, not the file name) within the limits and
/// returns the `size × size` square.
fn decode_square(bytes: &[u8], size: u32) -> Result<Vec<u8>> {
    let mut reader = ImageReader::new(Cursor::new(bytes)).with_guessed_format()?;
    let format = reader.format();
    ensure!(format.is_some(), "not a PNG, JPEG or WebP file (unrecognised content)");
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_DECODE_SIDE);
    limits.max_image_height = Some(MAX_DECODE_SIDE);
    limits.max_alloc = Some(MAX_DECODE_BYTES);
    reader.limits(limits);
    // into_decoder reads the header only and checks the declared size against the limits.
    let mut decoder = reader.into_decoder()?;
    let (width, height) = decoder.dimensions();
    ensure!(width > 0 && height > 0, "empty image ({width}×{height})");
    ensure!(
        decoder.total_bytes() <= MAX_DECODE_BYTES,
        "image too large to decode ({width}×{height}, {} bytes)",
        decoder.total_bytes()
    );
    let orientation = decoder.orientation()?;
    // The size the image shows once oriented, which is what Resize + CenterCrop sees.
    let (shown_w, shown_h) = if swaps_sides(orientation) { (height, width) } else { (width, height) };
    let denominator = jpeg::shrink_denominator(width, height, size);
    let shrunk = match format {
        Some(ImageFormat::Jpeg) => jpeg::decode(bytes, denominator)?,
        _ => None,
    };
    let (rgb, denominator) = match shrunk {
        Some(found) => found,
        None => (DynamicImage::from_decoder(decoder)?.into_rgb8(), 1),
    };
    let rgb = oriented(rgb, orientation);
    let window = resize::torchvision_window(shown_w, shown_h, size).shrunk(denominator);
    Ok(resize::resample(rgb.as_raw(), rgb.width(), rgb.height(), window, size))
}

/// Whether `orientation` turns the image by a quarter (width and height trade places).
fn swaps_sides(orientation: Orientation) -> bool {
    use Orientation::*;
    matches!(orientation, Rotate90 | Rotate270 | Rotate90FlipH | Rotate270FlipH)
}

/// `rgb` as it is meant to be seen under its EXIF `orientation`.
fn oriented(rgb: RgbImage, orientation: Orientation) -> RgbImage {
    if orientation == Orientation::NoTransforms {
        return rgb;
    }
    let mut image = DynamicImage::ImageRgb8(rgb);
    image.apply_orientation(orientation);
    image.into_rgb8()
}

//! torchvision's `Resize(I) + CenterCrop(I)` as one resampling: the window of the source that
//! the resize-then-crop ends up showing ([`torchvision_window`], computed with torchvision's own
//! integer arithmetic) is resampled straight into the I×I square with the same filter PIL's
//! `Image.resize(BILINEAR)` applies (a triangle stretched by the scale, i.e. antialiased), so
//! every output pixel is centred on the same source point and weighs the same neighbours.
//!
//! The resampler is `fast_image_resize`: Pillow's convolution ported to Rust with AVX2 / SSE4.1
//! kernels chosen at run time, several times faster per core than `image::imageops::resize`
//! (and than Pillow), maintained, and taking a fractional crop window, which is what lets the
//! crop and the resize be one pass.

use std::cell::RefCell;

use fast_image_resize as fir;

/// A rectangle of the source image, in its pixels (fractional).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Window {
    pub left: f64,
    pub top: f64,
    pub width: f64,
    pub height: f64,
}

impl Window {
    /// The same rectangle in an image shrunk by `1 / denominator`.
    pub fn shrunk(self, denominator: u32) -> Window {
        let d = denominator as f64;
        Window { left: self.left / d, top: self.top / d, width: self.width / d, height: self.height / d }
    }
}

/// The part of a `width × height` image that `Resize(size)` (shorter side to `size`, the
/// longer one to `int(size · long / short)`) followed by `CenterCrop(size)` (offsets
/// `int(round((side − size) / 2))`, ties to even as Python rounds) keeps.
pub(super) fn torchvision_window(width: u32, height: u32, size: u32) -> Window {
    let (short, long) = (width.min(height) as f64, width.max(height) as f64);
    let new_long = (size as f64 * long / short) as u32; // Python's int(): truncation
    let (new_w, new_h) = if width <= height { (size, new_long) } else { (new_long, size) };
    let offset = |side: u32| ((side - size) as f64 / 2.0).round_ties_even();
    let (scale_x, scale_y) = (width as f64 / new_w as f64, height as f64 / new_h as f64);
    Window {
        left: offset(new_w) * scale_x,
        top: offset(new_h) * scale_y,
        width: size as f64 * scale_x,
        height: size as f64 * scale_y,
    }
}

thread_local! {
    /// One resizer per decoding thread: it keeps its scratch buffers between images.
    static RESIZER: RefCell<fir::Resizer> = RefCell::new(fir::Resizer::new());
}

/// Resamples `window` of the RGB image `rgb` (`width × height`, rows packed) into a
/// `size × size` RGB square with PIL's bilinear (antialiased) filter.
pub(super) fn resample(rgb: &[u8], width: u32, height: u32, window: Window, size: u32) -> Vec<u8> {
    let whole = Window { left: 0.0, top: 0.0, width: width as f64, height: height as f64 };
    if width == size && height == size && window == whole {
        return rgb.to_vec();
    }
    let src = fir::images::ImageRef::new(width, height, rgb, fir::PixelType::U8x3)
        .expect("an RgbImage's buffer holds width × height × 3 bytes");
    let mut dst = fir::images::Image::new(size, size, fir::PixelType::U8x3);
    // The window's far edges are products of rounded quotients: 454 / 299 · 299 is
    // 454.00000000000006, which the resizer refuses as outside the image.
    let (crop_w, crop_h) =
        (window.width.min(width as f64 - window.left), window.height.min(height as f64 - window.top));
    let options = fir::ResizeOptions::new()
        .resize_alg(fir::ResizeAlg::Convolution(fir::FilterType::Bilinear))
        .crop(window.left, window.top, crop_w, crop_h);
    RESIZER
        .with_borrow_mut(|resizer| resizer.resize(&src, &mut dst, &options))
        .expect("source and destination are both U8x3 and non-empty");
    dst.into_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_is_torchvisions_resize_then_crop() {
        // 500×375 → Resize(256): 341×256 (int(256·500/375) = 341); crop left round(42.5) = 42.
        let w = torchvision_window(500, 375, 256);
        let scale = 500.0 / 341.0;
        assert_eq!((w.left, w.width), (42.0 * scale, 256.0 * scale));
        assert_eq!((w.top, w.height), (0.0, 375.0));
        // Portrait, odd remainder: 375×500 at 64 → 64×85, top offset round(10.5) = 10.
        let w = torchvision_window(375, 500, 64);
        assert_eq!(w.top, 10.0 * (500.0 / 85.0));
        assert_eq!((w.left, w.width), (0.0, 375.0));
        // A square image is taken whole.
        assert_eq!(torchvision_window(90, 90, 32), Window { left: 0.0, top: 0.0, width: 90.0, height: 90.0 });
    }

    #[test]
    fn a_window_whose_edge_rounds_past_the_image_is_resampled() {
        // 454×500 at 299: the window's width is 454 / 299 · 299 = 454.00000000000006.
        let w = torchvision_window(454, 500, 299);
        assert!(w.left + w.width > 454.0);
        let rgb: Vec<u8> = [10u8, 200, 30].repeat(454 * 500);
        let out = resample(&rgb, 454, 500, w, 299);
        assert!(out.chunks(3).all(|p| p == [10, 200, 30]));
    }

    #[test]
    fn flat_images_stay_flat_at_any_scale() {
        for (w, h, size) in [(1, 1, 32), (300, 200, 32), (7, 40, 64)] {
            let rgb: Vec<u8> = [10u8, 200, 30].repeat((w * h) as usize);
            let out = resample(&rgb, w, h, torchvision_window(w, h, size), size);
            assert_eq!(out.len(), (size * size * 3) as usize);
            assert!(out.chunks(3).all(|p| p == [10, 200, 30]), "{w}×{h} → {size}");
        }
    }
}

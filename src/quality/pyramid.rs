//! The Laplacian pyramid of Burt & Adelson ("The Laplacian Pyramid as a Compact Image Code",
//! IEEE Trans. Communications, 1983) that the sliced Wasserstein distance is measured on:
//! the 5-tap binomial filter [1 4 6 4 1]/16 (their generating kernel with a = 0.375), applied
//! separably to each channel, with mirrored borders.

use tch::{Kind, Tensor};

/// Taps of the binomial filter, before the 1/16.
const TAPS: [f32; 5] = [1.0, 4.0, 6.0, 4.0, 1.0];

/// The 2-D filter as a depthwise weight (C, 1, 5, 5) of `x`'s device, scaled by `gain`.
fn kernel(x: &Tensor, gain: f64) -> Tensor {
    let taps = Tensor::from_slice(&TAPS) / 16.0;
    let square = taps.unsqueeze(1) * taps.unsqueeze(0) * gain; // (5, 5)
    let channels = x.size()[1];
    square.expand([channels, 1, 5, 5], false).contiguous().to_device(x.device())
}

/// Blurs and halves (N, C, H, W) → (N, C, ⌈H/2⌉, ⌈W/2⌉): output pixel i is centred on input
/// pixel 2i. Needs H, W ≥ 3.
pub fn down(x: &Tensor) -> Tensor {
    let channels = x.size()[1];
    x.reflection_pad2d([2, 2, 2, 2]).conv2d(&kernel(x, 1.0), None::<Tensor>, [2, 2], [0, 0], [1, 1], channels)
}

/// Doubles and blurs (N, C, H, W) → (N, C, 2H, 2W), the adjoint sampling of [`down`]: input
/// pixel j lands on output pixel 2j with zeros between, and the filter is scaled by 4 so that a
/// constant image stays constant. The input is mirrored by one pixel first, so the outermost
/// output pixels interpolate between real neighbours. Needs H, W ≥ 2.
pub fn up(x: &Tensor) -> Tensor {
    let (channels, h, w) = (x.size()[1], x.size()[2], x.size()[3]);
    let padded = x.reflection_pad2d([1, 1, 1, 1]); // (H + 2, W + 2)
    let out =
        padded.conv_transpose2d(&kernel(x, 4.0), None::<Tensor>, [2, 2], [0, 0], [0, 0], channels, [1, 1]);
    // Output index o is centred on padded pixel (o − 2)/2, i.e. on input pixel (o − 4)/2.
    out.narrow(2, 4, 2 * h).narrow(3, 4, 2 * w)
}

/// The sides of the pyramid's levels for images of side `side`: `side` itself, then halves as
/// long as the side is even and the half is still ≥ `min_resolution`. 32 → [32, 16];
/// 256 → [256, 128, 64, 32, 16]; 16 or less → [side] alone.
pub fn resolutions(side: i64, min_resolution: i64) -> Vec<i64> {
    let mut sides = vec![side];
    let mut s = side;
    while s % 2 == 0 && s / 2 >= min_resolution {
        s /= 2;
        sides.push(s);
    }
    sides
}

/// The Laplacian pyramid of `images` (N, C, H, W) with `levels` levels, finest first: each
/// level but the last is the band G_l − up(G_{l+1}) of the Gaussian pyramid G_0 = images,
/// G_{l+1} = down(G_l); the last is the low-pass G_{levels−1} itself.
pub fn laplacian(images: &Tensor, levels: usize) -> Vec<Tensor> {
    let mut gaussian = images.to_kind(Kind::Float);
    let mut bands = Vec::with_capacity(levels);
    for _ in 1..levels {
        let smaller = down(&gaussian);
        bands.push(&gaussian - up(&smaller));
        gaussian = smaller;
    }
    bands.push(gaussian);
    bands
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    #[test]
    fn constant_images_stay_constant_and_have_empty_bands() {
        let x = Tensor::full([2, 3, 32, 32], 0.25, (Kind::Float, Device::Cpu));
        assert!((down(&x) - 0.25).abs().max().double_value(&[]) < 1e-6);
        assert!((up(&down(&x)) - 0.25).abs().max().double_value(&[]) < 1e-6);
        let levels = laplacian(&x, 2);
        assert_eq!(levels[0].size(), [2, 3, 32, 32]);
        assert_eq!(levels[1].size(), [2, 3, 16, 16]);
        assert!(levels[0].abs().max().double_value(&[]) < 1e-6);
    }

    #[test]
    fn down_then_up_reproduces_a_ramp_away_from_the_borders() {
        // A symmetric filter keeps a linear ramp linear, so a sampling phase error of up
        // against down would show as a constant offset everywhere.
        let ramp =
            Tensor::arange(16, (Kind::Float, Device::Cpu)).view([1, 1, 1, 16]).expand([1, 1, 16, 16], false);
        let back = up(&down(&ramp.contiguous()));
        let err = (&back - &ramp).abs().select(2, 8); // one row
        let err = Vec::<f32>::try_from(err.view([-1])).unwrap();
        assert!(err[3..12].iter().all(|e| *e < 1e-4), "{err:?}");
    }

    #[test]
    fn resolutions_stop_at_16() {
        assert_eq!(resolutions(32, 16), [32, 16]);
        assert_eq!(resolutions(256, 16), [256, 128, 64, 32, 16]);
        assert_eq!(resolutions(48, 16), [48, 24]);
        assert_eq!(resolutions(16, 16), [16]);
        assert_eq!(resolutions(8, 16), [8]);
    }
}

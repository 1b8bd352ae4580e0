//! Patch descriptors of one pyramid level (Karras et al. 2018, appendix D): square
//! neighbourhoods of all channels at random positions, and their per-channel normalisation.

use tch::{Device, Kind, Tensor};

use crate::rng::SplitMix64;

/// `per_image` neighbourhoods of `patch × patch` pixels of every image of `level`
/// (N, C, S, S'), each at a position drawn uniformly (with replacement) from the S − patch + 1
/// by S' − patch + 1 possible ones: (N·per_image, C·patch·patch), channel-major, float32, on
/// `level`'s device. Needs S, S' ≥ patch.
pub fn sample(level: &Tensor, per_image: i64, patch: i64, rng: &mut SplitMix64) -> Tensor {
    let size = level.size();
    let (n, channels, h, w) = (size[0], size[1], size[2], size[3]);
    let count = n * per_image;
    let mut image = Vec::with_capacity(count as usize);
    let (mut top, mut left) = (Vec::with_capacity(count as usize), Vec::with_capacity(count as usize));
    for i in 0..n {
        for _ in 0..per_image {
            image.push(i);
            top.push(rng.below((h - patch + 1) as usize) as i64);
            left.push(rng.below((w - patch + 1) as usize) as i64);
        }
    }
    let device = level.device();
    let offsets = Tensor::arange(patch, (Kind::Int64, Device::Cpu));
    let index = |v: &[i64]| Tensor::from_slice(v);
    // Advanced indexing broadcasts (D,1,1,1), (1,C,1,1), (D,1,P,1), (D,1,1,P) to (D, C, P, P).
    let image = index(&image).view([count, 1, 1, 1]);
    let channel = Tensor::arange(channels, (Kind::Int64, Device::Cpu)).view([1, channels, 1, 1]);
    let rows = (index(&top).view([count, 1]) + offsets.view([1, patch])).view([count, 1, patch, 1]);
    let cols = (index(&left).view([count, 1]) + offsets.view([1, patch])).view([count, 1, 1, patch]);
    let indices = [image, channel, rows, cols].map(|t| Some(t.to_device(device)));
    level.to_kind(Kind::Float).index(&indices).view([count, channels * patch * patch])
}

/// Normalises descriptors (D, C·P²) by the mean and standard deviation (population) of each
/// colour channel over the whole set, as the paper's "normalize … w.r.t. the mean and
/// standard deviation of each color channel". A constant channel is only centred.
pub fn normalize(descriptors: &Tensor, channels: i64) -> Tensor {
    let size = descriptors.size();
    let x = descriptors.view([size[0], channels, -1]); // (D, C, P²)
    let mean = x.mean_dim([0i64, 2].as_slice(), true, Kind::Float);
    let std = x.std_dim([0i64, 2].as_slice(), false, true);
    let std = std.where_self(&std.gt(1e-12), &std.ones_like());
    ((x - mean) / std).view([size[0], size[1]])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patches_are_the_pixels_they_claim_to_be() {
        let level = Tensor::arange(2 * 3 * 10 * 12, (Kind::Float, Device::Cpu)).view([2, 3, 10, 12]);
        let d = sample(&level, 5, 7, &mut SplitMix64::stream(0, 0));
        assert_eq!(d.size(), [10, 147]);
        for k in 0..10 {
            let row = Vec::<f32>::try_from(d.get(k)).unwrap();
            // Decode the top-left pixel of the first channel: n·360 + y·12 + x.
            let first = row[0] as i64;
            let (n, y, x) = (first / 360, first % 360 / 12, first % 12);
            assert_eq!(n, k / 5, "descriptor {k} comes from image {}", k / 5);
            assert!(y <= 3 && x <= 5, "position ({y}, {x}) leaves room for the patch");
            let expected = level.get(n).narrow(1, y, 7).narrow(2, x, 7).contiguous().view([-1]);
            assert_eq!(Vec::<f32>::try_from(expected).unwrap(), row);
        }
    }

    #[test]
    fn normalised_channels_have_mean_0_and_std_1() {
        tch::manual_seed(0);
        let d = Tensor::randn([500, 3 * 49], (Kind::Float, Device::Cpu)) * 3.0 + 2.0;
        let n = normalize(&d, 3).view([500, 3, 49]);
        let mean = n.mean_dim([0i64, 2].as_slice(), false, Kind::Float).abs().max().double_value(&[]);
        let std = n.std_dim([0i64, 2].as_slice(), false, false);
        assert!(mean < 1e-4 && (std - 1.0).abs().max().double_value(&[]) < 1e-4);
    }
}

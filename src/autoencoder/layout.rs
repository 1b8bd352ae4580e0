//! What the weights are: the encoder and the decoder as tables of layers in the published
//! `nn.Sequential` order, so a layer's position is the first part of its parameter names
//! (`1.conv.0.weight` is the first convolution of the block at position 1). How each kind of
//! layer computes is `stack.rs` and `block.rs` (docs/AUTOENCODER.md).

use super::Variant;

/// Channels of every hidden layer.
pub const WIDTH: i64 = 64;
/// Channels of an RGB image.
pub const RGB: i64 = 3;
/// Halvings of the side between image and latent (8 = 2³).
pub const STAGES: usize = 3;
/// Blocks at each scale between two resolution changes.
const BLOCKS_PER_STAGE: usize = 3;

/// One entry of a published `nn.Sequential`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layer {
    /// 3×3 convolution with padding 1; `weight`, and `bias` when `bias`.
    Conv {
        c_in: i64,
        c_out: i64,
        stride: i64,
        bias: bool,
    },
    /// Residual block of width [`WIDTH`] (`block.rs`); `midblock_gn` adds its GroupNorm branch.
    Block {
        midblock_gn: bool,
    },
    Relu,
    /// Nearest-neighbour upsampling by 2.
    Upsample,
    /// The decoder's soft clamp 3·tanh(z/3).
    SoftClamp,
}

fn conv(c_in: i64, c_out: i64) -> Layer {
    Layer::Conv { c_in, c_out, stride: 1, bias: true }
}

/// The bias-free 3×3 convolutions that change the resolution (stride 2 down, 1 after an upsample).
fn resample_conv(stride: i64) -> Layer {
    Layer::Conv { c_in: WIDTH, c_out: WIDTH, stride, bias: false }
}

fn blocks(midblock_gn: bool) -> [Layer; BLOCKS_PER_STAGE] {
    [Layer::Block { midblock_gn }; BLOCKS_PER_STAGE]
}

/// Image (N, 3, H, W) → latent (N, C, H/8, W/8): 15 layers.
pub fn encoder(variant: Variant) -> Vec<Layer> {
    let mut layers = vec![conv(RGB, WIDTH), Layer::Block { midblock_gn: false }];
    for stage in 0..STAGES {
        // Only the deepest scale (1/8) carries the GroupNorm branch.
        let deepest = stage == STAGES - 1;
        layers.push(resample_conv(2));
        layers.extend(blocks(deepest && variant.midblock_gn()));
    }
    layers.push(conv(WIDTH, variant.latent_channels()));
    layers
}

/// Latent (N, C, h, w) → image (N, 3, 8h, 8w): 20 layers, the mirror of [`encoder`].
pub fn decoder(variant: Variant) -> Vec<Layer> {
    let mut layers = vec![Layer::SoftClamp, conv(variant.latent_channels(), WIDTH), Layer::Relu];
    for stage in 0..STAGES {
        let deepest = stage == 0;
        layers.extend(blocks(deepest && variant.midblock_gn()));
        layers.extend([Layer::Upsample, resample_conv(1)]);
    }
    layers.extend([Layer::Block { midblock_gn: false }, conv(WIDTH, RGB)]);
    layers
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_the_published_indices() {
        let enc = encoder(Variant::Taef2);
        assert_eq!(enc.len(), 15);
        for i in [2, 6, 10] {
            assert_eq!(enc[i], Layer::Conv { c_in: 64, c_out: 64, stride: 2, bias: false }, "encoder {i}");
        }
        let gn: Vec<usize> =
            (0..enc.len()).filter(|&i| enc[i] == Layer::Block { midblock_gn: true }).collect();
        assert_eq!(gn, [11, 12, 13]);
        assert_eq!(enc[14], Layer::Conv { c_in: 64, c_out: 32, stride: 1, bias: true });

        let dec = decoder(Variant::Taef2);
        assert_eq!(dec.len(), 20);
        let ups: Vec<usize> = (0..dec.len()).filter(|&i| dec[i] == Layer::Upsample).collect();
        assert_eq!(ups, [6, 11, 16]);
        let gn: Vec<usize> =
            (0..dec.len()).filter(|&i| dec[i] == Layer::Block { midblock_gn: true }).collect();
        assert_eq!(gn, [3, 4, 5]);
        assert_eq!(dec[1], Layer::Conv { c_in: 32, c_out: 64, stride: 1, bias: true });
        assert_eq!(dec[19], Layer::Conv { c_in: 64, c_out: 3, stride: 1, bias: true });
    }

    #[test]
    fn variants_without_the_branch_differ_only_in_latent_channels() {
        let plain = |v: Variant| {
            encoder(v).iter().chain(&decoder(v)).all(|l| *l != Layer::Block { midblock_gn: true })
        };
        for v in [Variant::Taesd, Variant::Taesdxl, Variant::Taesd3, Variant::Taef1] {
            assert!(plain(v), "{v}");
        }
        assert!(!plain(Variant::Taef2));
    }
}

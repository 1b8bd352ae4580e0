//! Channels-last memory format (NHWC strides) for the autoencoders on the CPU: the same
//! numbers in the same (N, C, H, W) shape, stored channel-innermost, so that oneDNN's
//! convolutions, GroupNorm and nearest upsampling run without reordering to their blocked
//! layouts and back at every layer. `Encoder::channels_last` and `Decoder::channels_last` switch
//! a loaded network to it; measured by scripts/bench_latent (BENCHMARKS.md).

use tch::Tensor;

/// `x` (N, C, H, W) with channels-last strides: a copy unless it already has them. tch has no
/// memory-format argument, so this is the permutation that PyTorch's `to(memory_format=
/// torch.channels_last)` amounts to: NHWC made contiguous, viewed back as NCHW.
pub(super) fn to_channels_last(x: &Tensor) -> Tensor {
    x.permute([0, 2, 3, 1]).contiguous().permute([0, 3, 1, 2])
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use tch::{Device, Kind};

    /// Whether `x` is stored channels-last (its strides, not its shape, say so).
    pub fn is_channels_last(x: &Tensor) -> bool {
        let (size, stride) = (x.size(), x.stride());
        let [_, c, h, w] = size[..] else { return false };
        stride[1] == 1 && stride[3] == c && stride[2] == w * c && stride[0] == h * w * c
    }

    #[test]
    fn the_numbers_and_the_shape_stay_and_only_the_strides_change() {
        let x = Tensor::rand([2, 5, 4, 3], (Kind::Float, Device::Cpu));
        let y = to_channels_last(&x);
        assert_eq!(y.size(), x.size());
        assert_eq!(y.stride(), [60, 1, 15, 5]);
        assert!(is_channels_last(&y) && !is_channels_last(&x));
        assert!(y.equal(&x));
        assert!(y.contiguous().is_contiguous() && y.contiguous().equal(&x));
    }
}

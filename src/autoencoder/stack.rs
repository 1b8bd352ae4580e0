//! How a table of layers (`layout.rs`) computes: each entry built on the path of its index, so
//! VarStore keys equal the published `nn.Sequential` state_dict keys, then applied in order.

use tch::nn::{self, Module};
use tch::Tensor;

use super::block::{channels_last_weight, Block};
use super::channels_last::to_channels_last;
use super::layout::Layer;

/// The soft clamp's bound: 3·tanh(z/3) stays inside (−3, 3) and is near the identity close to 0.
const SOFT_CLAMP: f64 = 3.0;
/// Side factor of an upsampling layer.
const UPSAMPLE: i64 = 2;

#[derive(Debug)]
enum Built {
    Conv(nn::Conv2D),
    Block(Box<Block>),
    Relu,
    Upsample,
    SoftClamp,
}

/// A published `nn.Sequential`, built from its layout.
#[derive(Debug)]
pub struct Stack {
    layers: Vec<Built>,
    /// Computes in channels-last memory format (`channels_last.rs`).
    channels_last: bool,
}

impl Stack {
    pub fn new(vs: &nn::Path, layout: &[Layer]) -> Self {
        let layers = layout.iter().enumerate().map(|(i, layer)| build(&(vs / i), *layer)).collect();
        Self { layers, channels_last: false }
    }

    /// Computes channels-last from now on (`channels_last.rs`): every convolution weight
    /// stored so, each input converted on the way in, each output returned contiguous.
    pub fn channels_last(&mut self) {
        self.channels_last = true;
        for layer in &mut self.layers {
            match layer {
                Built::Conv(conv) => channels_last_weight(conv),
                Built::Block(block) => block.channels_last(),
                Built::Relu | Built::Upsample | Built::SoftClamp => {}
            }
        }
    }
}

fn build(vs: &nn::Path, layer: Layer) -> Built {
    match layer {
        Layer::Conv { c_in, c_out, stride, bias } => {
            let config = nn::ConvConfig { stride, padding: 1, bias, ..Default::default() };
            Built::Conv(nn::conv2d(vs, c_in, c_out, 3, config))
        }
        Layer::Block { midblock_gn } => Built::Block(Box::new(Block::new(vs, midblock_gn))),
        Layer::Relu => Built::Relu,
        Layer::Upsample => Built::Upsample,
        Layer::SoftClamp => Built::SoftClamp,
    }
}

/// 3·tanh(z/3), in the published order of operations (divide, tanh, multiply).
fn soft_clamp(z: &Tensor) -> Tensor {
    (z / SOFT_CLAMP).tanh() * SOFT_CLAMP
}

fn upsample(x: &Tensor) -> Tensor {
    let size = x.size(); // (N, C, h, w)
    let (s, f) = (UPSAMPLE, UPSAMPLE as f64);
    x.upsample_nearest2d([size[2] * s, size[3] * s], f, f) // (N, C, 2h, 2w)
}

impl Module for Stack {
    fn forward(&self, x: &Tensor) -> Tensor {
        let x = if self.channels_last { to_channels_last(x) } else { x.shallow_clone() };
        let y = self.layers.iter().fold(x, |x, layer| match layer {
            Built::Conv(conv) => conv.forward(&x),
            Built::Block(block) => block.forward(&x),
            Built::Relu => x.relu(),
            Built::Upsample => upsample(&x),
            Built::SoftClamp => soft_clamp(&x),
        });
        if self.channels_last {
            y.contiguous()
        } else {
            y
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    #[test]
    fn the_soft_clamp_never_leaves_three_and_is_near_the_identity_at_zero() {
        let z = Tensor::from_slice(&[-100f32, -1e-3, 0.0, 1e-3, 3.0, 9.0, 100.0]);
        let y: Vec<f32> = Vec::try_from(soft_clamp(&z)).unwrap();
        assert!(y[0] == -3.0 && y[6] == 3.0, "float32 saturates at the bound: {y:?}");
        assert!((y[1] + 1e-3).abs() < 1e-9 && y[2] == 0.0 && (y[3] - 1e-3).abs() < 1e-9, "{y:?}");
        assert!((y[4] - 3.0 * 1f32.tanh()).abs() < 1e-6 && (y[5] - 3.0 * 3f32.tanh()).abs() < 1e-6, "{y:?}");
    }

    /// Both networks of the taef2 shape (GroupNorm branch, upsampling), seeded random weights:
    /// channels-last computes what the plain network does, and hands back a contiguous tensor.
    #[test]
    fn channels_last_computes_what_the_plain_stack_does() {
        use crate::autoencoder::channels_last::tests::is_channels_last;
        use crate::autoencoder::{layout, Variant};
        tch::manual_seed(0);
        for (layout, c_in) in [(layout::encoder(Variant::Taef2), 3), (layout::decoder(Variant::Taef2), 32)] {
            let (a, mut b) = (nn::VarStore::new(Device::Cpu), nn::VarStore::new(Device::Cpu));
            let plain = Stack::new(&a.root(), &layout);
            let mut fast = Stack::new(&b.root(), &layout);
            b.copy(&a).unwrap();
            fast.channels_last();
            let Built::Conv(first) = &fast.layers[if c_in == 3 { 0 } else { 1 }] else { panic!("no conv") };
            assert!(is_channels_last(&first.ws), "{:?}", first.ws.stride());
            let x = Tensor::rand([2, c_in, 24, 16], (Kind::Float, Device::Cpu));
            let (want, got) = tch::no_grad(|| (plain.forward(&x), fast.forward(&x)));
            assert!(got.is_contiguous() && got.size() == want.size());
            let diff = (&got - &want).abs().max().double_value(&[]);
            assert!(diff < 1e-5 * want.abs().max().double_value(&[]).max(1.0), "max |Δ| {diff}");
        }
    }

    #[test]
    fn upsampling_repeats_each_pixel_in_a_two_by_two_square() {
        let x = Tensor::arange(4, (Kind::Float, Device::Cpu)).view([1, 1, 2, 2]);
        let y = upsample(&x);
        let want = Tensor::from_slice(&[0f32, 0., 1., 1., 0., 0., 1., 1., 2., 2., 3., 3., 2., 2., 3., 3.]);
        assert!(y.equal(&want.view([1, 1, 4, 4])), "{y}");
    }
}

//! PyTorch's default initialisation of `nn.Linear` and `nn.Conv2d`, draw for draw
//! (docs/ORIGINAL.md §2): the weight from U(±b) with b = √3 · gain / √fan_in, where gain =
//! √(2 / (1 + a²)) and a = √5 (`kaiming_uniform_(a=√5)`, so b = 1/√fan_in), then the bias from
//! U(±1/√fan_in). tch's own defaults differ: a weight bound √6 times wider, the bias drawn
//! before the weight, and a convolution's bias left at zero. With these, a model built after
//! `tch::manual_seed(s)` on the CPU holds what PyTorch builds after `torch.manual_seed(s)`.

use tch::nn::{self, Init};
use tch::Tensor;

/// The bound of `kaiming_uniform_(w, a=√5)`, computed in PyTorch's order of operations (the
/// same libm `pow` and `sqrt`), so the draws are bit-identical.
fn weight_bound(fan_in: i64) -> f64 {
    let a = 5f64.sqrt();
    let gain = (2.0 / (1.0 + a.powf(2.0))).sqrt();
    let std = gain / (fan_in as f64).sqrt();
    3f64.sqrt() * std
}

/// Fills `bias` from U(±1/√fan_in), after its weight was drawn, as PyTorch's `reset_parameters`.
fn draw_bias(bias: &mut Tensor, fan_in: i64) {
    let bound = 1.0 / (fan_in as f64).sqrt();
    tch::no_grad(|| {
        let _ = bias.uniform_(-bound, bound);
    });
}

fn uniform(bound: f64) -> Init {
    Init::Uniform { lo: -bound, up: bound }
}

/// `nn.Linear(in_dim, out_dim)` as PyTorch initialises it.
pub fn linear<'a, T: std::borrow::Borrow<nn::Path<'a>>>(vs: T, in_dim: i64, out_dim: i64) -> nn::Linear {
    // The bias is created first by tch, as a constant (no draw), and drawn after the weight.
    let config = nn::LinearConfig {
        ws_init: uniform(weight_bound(in_dim)),
        bs_init: Some(Init::Const(0.0)),
        bias: true,
    };
    let mut layer = nn::linear(vs, in_dim, out_dim, config);
    draw_bias(layer.bs.as_mut().expect("created with a bias"), in_dim);
    layer
}

/// `nn.Conv2d(in_dim, out_dim, kernel, stride=kernel)` (no padding) as PyTorch initialises it.
pub fn patchify_conv<'a, T: std::borrow::Borrow<nn::Path<'a>>>(
    vs: T,
    in_dim: i64,
    out_dim: i64,
    kernel: i64,
) -> nn::Conv2D {
    let fan_in = in_dim * kernel * kernel;
    let config = nn::ConvConfig {
        stride: kernel,
        ws_init: uniform(weight_bound(fan_in)),
        bs_init: Init::Const(0.0),
        ..Default::default()
    };
    let mut conv = nn::conv2d(vs, in_dim, out_dim, kernel, config);
    draw_bias(conv.bs.as_mut().expect("created with a bias"), fan_in);
    conv
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    #[test]
    fn the_weight_bound_is_one_over_the_square_root_of_fan_in() {
        for fan in [1, 48, 64, 256, 384] {
            let want = 1.0 / (fan as f64).sqrt();
            assert!((weight_bound(fan) - want).abs() <= 1e-15 * want, "fan {fan}");
        }
    }

    /// The draw order (weight, then bias) is checked bit for bit against PyTorch in
    /// tests/init.rs, a process of its own: unit tests share the global generator.
    #[test]
    fn weights_and_biases_fill_their_bounds() {
        let vs = nn::VarStore::new(Device::Cpu);
        let l = linear(vs.root() / "l", 256, 512);
        let (w, b) = (&l.ws, l.bs.as_ref().unwrap());
        let max = |t: &Tensor| t.abs().max().double_value(&[]);
        assert!(max(w) <= 1.0 / 16.0 && max(w) > 0.99 / 16.0, "weight max {}", max(w));
        assert!(max(b) <= 1.0 / 16.0 && max(b) > 0.9 / 16.0, "bias max {}", max(b));
        let conv = patchify_conv(vs.root() / "c", 3, 48, 4); // fan_in 48
        let bound = 1.0 / 48f64.sqrt();
        for t in [&conv.ws, conv.bs.as_ref().unwrap()] {
            assert!(max(t) <= bound && max(t) > 0.5 * bound, "conv max {} against {bound}", max(t));
        }
        assert_eq!(conv.ws.kind(), Kind::Float);
    }
}

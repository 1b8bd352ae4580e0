//! How a residual block computes: three 3×3 convolutions with ReLUs between them, added to the
//! block's input and passed through a final ReLU. The skip is the identity because every block
//! of the 1/8-scale family keeps its width. With the GroupNorm branch (taef2's 1/8-scale
//! blocks) the input first gains 1×1 conv (×4 width) → GroupNorm(4) → ReLU → 1×1 conv.
//! Parameter names follow the published attributes: `conv.{0,2,4}`, `pool.{0,1,3}`.

use tch::nn::{self, Module};
use tch::Tensor;

use super::channels_last::to_channels_last;
use super::layout::WIDTH;

/// Groups of the branch's GroupNorm.
const GN_GROUPS: i64 = 4;
/// The branch widens the features this many times before its GroupNorm.
const GN_EXPANSION: i64 = 4;

#[derive(Debug)]
pub struct Block {
    conv: [nn::Conv2D; 3],
    pool: Option<MidblockNorm>,
}

/// The GroupNorm branch (published attribute `pool`).
#[derive(Debug)]
struct MidblockNorm {
    widen: nn::Conv2D,
    norm: nn::GroupNorm,
    narrow: nn::Conv2D,
}

fn conv3x3(vs: nn::Path) -> nn::Conv2D {
    nn::conv2d(vs, WIDTH, WIDTH, 3, nn::ConvConfig { padding: 1, ..Default::default() })
}

fn conv1x1(vs: nn::Path, c_in: i64, c_out: i64) -> nn::Conv2D {
    nn::conv2d(vs, c_in, c_out, 1, nn::ConvConfig { bias: false, ..Default::default() })
}

impl Block {
    pub fn new(vs: &nn::Path, midblock_gn: bool) -> Self {
        let conv = vs / "conv";
        Self {
            // Sequential indices 1 and 3 are the parameter-free ReLUs.
            conv: [conv3x3(&conv / 0), conv3x3(&conv / 2), conv3x3(&conv / 4)],
            pool: midblock_gn.then(|| MidblockNorm::new(&(vs / "pool"))),
        }
    }
}

impl MidblockNorm {
    fn new(vs: &nn::Path) -> Self {
        let wide = WIDTH * GN_EXPANSION;
        Self {
            widen: conv1x1(vs / 0, WIDTH, wide),
            norm: nn::group_norm(vs / 1, GN_GROUPS, wide, Default::default()),
            // Index 2 is the ReLU.
            narrow: conv1x1(vs / 3, wide, WIDTH),
        }
    }
}

impl Block {
    /// Stores every convolution weight channels-last (`channels_last.rs`).
    pub fn channels_last(&mut self) {
        for conv in &mut self.conv {
            channels_last_weight(conv);
        }
        if let Some(pool) = &mut self.pool {
            channels_last_weight(&mut pool.widen);
            channels_last_weight(&mut pool.narrow);
        }
    }
}

/// `conv`'s weight (out, in, k, k), copied channels-last and detached from its VarStore.
pub fn channels_last_weight(conv: &mut nn::Conv2D) {
    conv.ws = tch::no_grad(|| to_channels_last(&conv.ws));
}

impl Module for MidblockNorm {
    fn forward(&self, x: &Tensor) -> Tensor {
        let h = self.norm.forward(&self.widen.forward(x)).relu_(); // (N, 4·64, h, w)
        self.narrow.forward(&h) // (N, 64, h, w)
    }
}

/// The ReLUs and the residual sums work in place on tensors the block itself just made (never
/// on its input): the same numbers with fewer passes over memory (1.10–1.20× per network at
/// 256² on the CPU, BENCHMARKS.md).
impl Module for Block {
    fn forward(&self, x: &Tensor) -> Tensor {
        let x = match &self.pool {
            Some(pool) => {
                let mut y = pool.forward(x);
                y += x;
                y // (N, 64, h, w)
            }
            None => x.shallow_clone(),
        };
        let [c0, c2, c4] = &self.conv;
        let h = c2.forward(&c0.forward(&x).relu_()).relu_(); // (N, 64, h, w)
        let mut y = c4.forward(&h);
        y += &x;
        y.relu_() // (N, 64, h, w)
    }
}

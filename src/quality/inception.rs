//! The Inception-v3 network of FID (Heusel et al. 2017) as pytorch-fid runs it: torchvision's
//! Inception3 with the blocks that match TensorFlow's graph of 2015-12-05 (`FIDInceptionA`, `C`,
//! `E_1`, `E_2`: their side branch averages 3×3 windows without counting the padding, and the
//! last block's takes the maximum), up to the final average pool: 2048 features an image.
//!
//! Parameters carry torchvision's names (`Mixed_5b.branch5x5_2.conv.weight`,
//! `….bn.running_var`, `fc.weight`), so pytorch-fid's published file
//! `pt_inception-2015-12-05-6726825d.pth` loads strictly: every key it has is used or checked
//! (the 1008-class `fc` layer, which the features never reach, is checked for shape), every
//! key the network needs must be there, `num_batches_tracked` may be either. Each layer runs as
//! PyTorch runs it (convolution, then batch norm with eps 0.001 in evaluation mode, then ReLU),
//! by default in the channels-last memory format for speed ([`Layout`]); pytorch-fid runs NCHW,
//! which [`Layout::Nchw`] reproduces (tests/fid.rs bounds both against it).

use std::collections::HashMap;
use std::path::Path;

use anyhow::{bail, ensure, Context, Result};
use tch::{Device, Kind, Tensor};

/// Features an image: the channels of the last block.
pub const FEATURES: i64 = 2048;

/// The side every input is resized to, as pytorch-fid does.
pub const INPUT_SIDE: i64 = 299;

/// Batch norm's epsilon in torchvision's `BasicConv2d`.
const BN_EPS: f64 = 0.001;

/// Classes of the TensorFlow graph's classifier (`fc`), checked at load and never run.
const CLASSES: i64 = 1008;

/// A convolution, its batch norm (evaluation mode) and ReLU (`BasicConv2d`).
struct Conv {
    weight: Tensor,
    gamma: Tensor,
    beta: Tensor,
    mean: Tensor,
    var: Tensor,
    stride: i64,
    padding: [i64; 2],
}

impl Conv {
    fn forward(&self, x: &Tensor) -> Tensor {
        let y = x.conv2d(&self.weight, None::<Tensor>, [self.stride; 2], self.padding, [1, 1], 1);
        y.batch_norm(
            Some(&self.gamma),
            Some(&self.beta),
            Some(&self.mean),
            Some(&self.var),
            false,
            0.0,
            BN_EPS,
            false,
        )
        .relu()
    }
}

/// The parameters of a state_dict, taken out by name as the network is built.
struct Params {
    left: HashMap<String, Tensor>,
    device: Device,
}

impl Params {
    /// The entry `name`, of shape `shape`.
    fn take(&mut self, name: &str, shape: &[i64]) -> Result<Tensor> {
        let t = self.left.remove(name).with_context(|| format!("missing key {name}"))?;
        ensure!(t.size() == shape, "{name} has shape {:?}, expected {shape:?}", t.size());
        Ok(t.to_kind(Kind::Float).to_device(self.device))
    }

    /// `BasicConv2d` `name`: `cin` → `cout` channels, kernel `k`.
    fn conv(
        &mut self,
        name: &str,
        cin: i64,
        cout: i64,
        k: [i64; 2],
        stride: i64,
        padding: [i64; 2],
    ) -> Result<Conv> {
        let weight = self.take(&format!("{name}.conv.weight"), &[cout, cin, k[0], k[1]])?;
        let gamma = self.take(&format!("{name}.bn.weight"), &[cout])?;
        let beta = self.take(&format!("{name}.bn.bias"), &[cout])?;
        let mean = self.take(&format!("{name}.bn.running_mean"), &[cout])?;
        let var = self.take(&format!("{name}.bn.running_var"), &[cout])?;
        self.left.remove(&format!("{name}.bn.num_batches_tracked"));
        Ok(Conv { weight, gamma, beta, mean, var, stride, padding })
    }

    /// A 1×1 convolution.
    fn one(&mut self, name: &str, cin: i64, cout: i64) -> Result<Conv> {
        self.conv(name, cin, cout, [1, 1], 1, [0, 0])
    }
}

/// How a block's pooled side branch pools.
#[derive(Clone, Copy)]
enum Pool {
    /// 3×3 average, stride 1, padding not counted (TensorFlow's `AvgPool`).
    Average,
    /// 3×3 maximum, stride 1 (the last block of the FID graph).
    Max,
}

impl Pool {
    fn apply(self, x: &Tensor) -> Tensor {
        match self {
            Pool::Average => x.avg_pool2d([3, 3], [1, 1], [1, 1], false, false, None::<i64>),
            Pool::Max => x.max_pool2d([3, 3], [1, 1], [1, 1], [1, 1], false),
        }
    }
}

/// 3×3 maximum with stride 2, no padding: between the stem's stages and in the reduction blocks.
fn reduce_pool(x: &Tensor) -> Tensor {
    x.max_pool2d([3, 3], [2, 2], [0, 0], [1, 1], false)
}

/// Runs a chain of convolutions.
fn chain(convs: &[Conv], x: &Tensor) -> Tensor {
    convs.iter().fold(x.shallow_clone(), |x, c| c.forward(&x))
}

/// One of the Inception blocks (torchvision's `InceptionA` … `InceptionE`, with the FID
/// graph's pools), as its branches.
enum Block {
    /// `FIDInceptionA`: 1×1; 1×1 → 5×5; 1×1 → 3×3 → 3×3; average pool → 1×1.
    A { one: Conv, five: [Conv; 2], double: [Conv; 3], pool: Conv },
    /// `InceptionB` (Mixed_6a, reduction): 3×3/2; 1×1 → 3×3 → 3×3/2; max pool/2.
    B { three: Conv, double: [Conv; 3] },
    /// `FIDInceptionC`: 1×1; 1×1 → 1×7 → 7×1; 1×1 → 7×1 → 1×7 → 7×1 → 1×7; average pool → 1×1.
    C { one: Conv, seven: [Conv; 3], double: [Conv; 5], pool: Conv },
    /// `InceptionD` (Mixed_7a, reduction): 1×1 → 3×3/2; 1×1 → 1×7 → 7×1 → 3×3/2; max pool/2.
    D { three: [Conv; 2], seven: [Conv; 4] },
    /// `FIDInceptionE_1` / `_2`: 1×1; 1×1 → (1×3 | 3×1); 1×1 → 3×3 → (1×3 | 3×1); pool → 1×1.
    E {
        one: Conv,
        three: Conv,
        split: [Conv; 2],
        double: [Conv; 2],
        double_split: [Conv; 2],
        pool: Conv,
        kind: Pool,
    },
}

impl Block {
    fn a(p: &mut Params, name: &str, cin: i64, pool_features: i64) -> Result<Block> {
        let n = |b: &str| format!("{name}.{b}");
        Ok(Block::A {
            one: p.one(&n("branch1x1"), cin, 64)?,
            five: [p.one(&n("branch5x5_1"), cin, 48)?, p.conv(&n("branch5x5_2"), 48, 64, [5, 5], 1, [2, 2])?],
            double: [
                p.one(&n("branch3x3dbl_1"), cin, 64)?,
                p.conv(&n("branch3x3dbl_2"), 64, 96, [3, 3], 1, [1, 1])?,
                p.conv(&n("branch3x3dbl_3"), 96, 96, [3, 3], 1, [1, 1])?,
            ],
            pool: p.one(&n("branch_pool"), cin, pool_features)?,
        })
    }

    fn b(p: &mut Params, name: &str, cin: i64) -> Result<Block> {
        let n = |b: &str| format!("{name}.{b}");
        Ok(Block::B {
            three: p.conv(&n("branch3x3"), cin, 384, [3, 3], 2, [0, 0])?,
            double: [
                p.one(&n("branch3x3dbl_1"), cin, 64)?,
                p.conv(&n("branch3x3dbl_2"), 64, 96, [3, 3], 1, [1, 1])?,
                p.conv(&n("branch3x3dbl_3"), 96, 96, [3, 3], 2, [0, 0])?,
            ],
        })
    }

    fn c(p: &mut Params, name: &str, c7: i64) -> Result<Block> {
        let n = |b: &str| format!("{name}.{b}");
        let (row, col) = (([1, 7], [0, 3]), ([7, 1], [3, 0]));
        let mut k = |b: &str, cin, cout, (kernel, pad): ([i64; 2], [i64; 2])| {
            p.conv(&n(b), cin, cout, kernel, 1, pad)
        };
        let seven = [
            k("branch7x7_1", 768, c7, ([1, 1], [0, 0]))?,
            k("branch7x7_2", c7, c7, row)?,
            k("branch7x7_3", c7, 192, col)?,
        ];
        let double = [
            k("branch7x7dbl_1", 768, c7, ([1, 1], [0, 0]))?,
            k("branch7x7dbl_2", c7, c7, col)?,
            k("branch7x7dbl_3", c7, c7, row)?,
            k("branch7x7dbl_4", c7, c7, col)?,
            k("branch7x7dbl_5", c7, 192, row)?,
        ];
        Ok(Block::C {
            one: p.one(&n("branch1x1"), 768, 192)?,
            seven,
            double,
            pool: p.one(&n("branch_pool"), 768, 192)?,
        })
    }

    fn d(p: &mut Params, name: &str) -> Result<Block> {
        let n = |b: &str| format!("{name}.{b}");
        Ok(Block::D {
            three: [
                p.one(&n("branch3x3_1"), 768, 192)?,
                p.conv(&n("branch3x3_2"), 192, 320, [3, 3], 2, [0, 0])?,
            ],
            seven: [
                p.one(&n("branch7x7x3_1"), 768, 192)?,
                p.conv(&n("branch7x7x3_2"), 192, 192, [1, 7], 1, [0, 3])?,
                p.conv(&n("branch7x7x3_3"), 192, 192, [7, 1], 1, [3, 0])?,
                p.conv(&n("branch7x7x3_4"), 192, 192, [3, 3], 2, [0, 0])?,
            ],
        })
    }

    fn e(p: &mut Params, name: &str, cin: i64, kind: Pool) -> Result<Block> {
        let n = |b: &str| format!("{name}.{b}");
        let mut pair = |a: &str, b: &str| -> Result<[Conv; 2]> {
            Ok([p.conv(&n(a), 384, 384, [1, 3], 1, [0, 1])?, p.conv(&n(b), 384, 384, [3, 1], 1, [1, 0])?])
        };
        let split = pair("branch3x3_2a", "branch3x3_2b")?;
        let double_split = pair("branch3x3dbl_3a", "branch3x3dbl_3b")?;
        Ok(Block::E {
            one: p.one(&n("branch1x1"), cin, 320)?,
            three: p.one(&n("branch3x3_1"), cin, 384)?,
            split,
            double: [
                p.one(&n("branch3x3dbl_1"), cin, 448)?,
                p.conv(&n("branch3x3dbl_2"), 448, 384, [3, 3], 1, [1, 1])?,
            ],
            double_split,
            pool: p.one(&n("branch_pool"), cin, 192)?,
            kind,
        })
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let parts = match self {
            Block::A { one, five, double, pool } => {
                vec![one.forward(x), chain(five, x), chain(double, x), pool.forward(&Pool::Average.apply(x))]
            }
            Block::B { three, double } => vec![three.forward(x), chain(double, x), reduce_pool(x)],
            Block::C { one, seven, double, pool } => {
                vec![one.forward(x), chain(seven, x), chain(double, x), pool.forward(&Pool::Average.apply(x))]
            }
            Block::D { three, seven } => vec![chain(three, x), chain(seven, x), reduce_pool(x)],
            Block::E { one, three, split, double, double_split, pool, kind } => {
                let t = three.forward(x);
                let d = chain(double, x);
                vec![
                    one.forward(x),
                    Tensor::cat(&[split[0].forward(&t), split[1].forward(&t)], 1),
                    Tensor::cat(&[double_split[0].forward(&d), double_split[1].forward(&d)], 1),
                    pool.forward(&kind.apply(x)),
                ]
            }
        };
        Tensor::cat(&parts, 1)
    }
}

/// The memory format the network computes in: the same numbers in another order of addition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// NHWC in memory (the default): oneDNN's convolutions run without reordering at every
    /// layer, 1.4–1.5× the images a second of NCHW on this project's CPU (BENCHMARKS.md).
    ChannelsLast,
    /// NCHW, as pytorch-fid runs: its kernels, its order of addition.
    Nchw,
}

/// The FID Inception network, ready to compute features (see the module documentation).
pub struct Inception {
    stem: [Conv; 5],
    blocks: Vec<Block>,
    device: Device,
    layout: Layout,
}

impl Inception {
    /// Loads the network from a pytorch-fid weight file (either `torch.save` container) onto
    /// `device`; a missing, extra or misshapen key is one line naming it and the file.
    pub fn load(path: &Path, device: Device) -> Result<Inception> {
        let entries = crate::checkpoint::read_tensors(path)?;
        Self::from_entries(entries, device)
            .with_context(|| format!("{}: not pytorch-fid's Inception weights", path.display()))
    }

    /// The network from the (name, tensor) entries of its state_dict.
    pub fn from_entries(entries: Vec<(String, Tensor)>, device: Device) -> Result<Inception> {
        let mut p = Params { left: entries.into_iter().collect(), device };
        let stem = [
            p.conv("Conv2d_1a_3x3", 3, 32, [3, 3], 2, [0, 0])?,
            p.conv("Conv2d_2a_3x3", 32, 32, [3, 3], 1, [0, 0])?,
            p.conv("Conv2d_2b_3x3", 32, 64, [3, 3], 1, [1, 1])?,
            p.one("Conv2d_3b_1x1", 64, 80)?,
            p.conv("Conv2d_4a_3x3", 80, 192, [3, 3], 1, [0, 0])?,
        ];
        let blocks = vec![
            Block::a(&mut p, "Mixed_5b", 192, 32)?,
            Block::a(&mut p, "Mixed_5c", 256, 64)?,
            Block::a(&mut p, "Mixed_5d", 288, 64)?,
            Block::b(&mut p, "Mixed_6a", 288)?,
            Block::c(&mut p, "Mixed_6b", 128)?,
            Block::c(&mut p, "Mixed_6c", 160)?,
            Block::c(&mut p, "Mixed_6d", 160)?,
            Block::c(&mut p, "Mixed_6e", 192)?,
            Block::d(&mut p, "Mixed_7a")?,
            Block::e(&mut p, "Mixed_7b", 1280, Pool::Average)?,
            Block::e(&mut p, "Mixed_7c", 2048, Pool::Max)?,
        ];
        let _classifier = (p.take("fc.weight", &[CLASSES, FEATURES])?, p.take("fc.bias", &[CLASSES])?);
        if let Some(extra) = p.left.keys().min() {
            bail!("unexpected key {extra} ({} keys not in the network)", p.left.len());
        }
        Ok(Inception { stem, blocks, device, layout: Layout::ChannelsLast })
    }

    /// The same network computing in `layout`.
    pub fn with_layout(self, layout: Layout) -> Inception {
        Inception { layout, ..self }
    }

    /// The 2048 pool features (N, 2048) of images (N, 3, H, W) with values in [0, 1]: resized to
    /// 299×299 bilinearly (`align_corners=False`) and scaled to [−1, 1] first, as pytorch-fid's
    /// `InceptionV3` does with its defaults.
    pub fn features(&self, images: &Tensor) -> Tensor {
        tch::no_grad(|| {
            let x = images.to_device(self.device).to_kind(Kind::Float);
            let x = match self.layout {
                Layout::ChannelsLast => x.permute([0, 2, 3, 1]).contiguous().permute([0, 3, 1, 2]),
                Layout::Nchw => x.contiguous(),
            };
            let x = x.upsample_bilinear2d([INPUT_SIDE, INPUT_SIDE], false, None, None) * 2.0 - 1.0;
            let x = chain(&self.stem[..3], &x);
            let x = chain(&self.stem[3..], &reduce_pool(&x));
            let x = self.blocks.iter().fold(reduce_pool(&x), |x, b| b.forward(&x));
            x.adaptive_avg_pool2d([1, 1]).flatten(1, 3)
        })
    }
}

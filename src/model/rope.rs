//! 2-D rotary position embedding of LightningDiT (`VisionRotaryEmbeddingFast`, from EVA-02,
//! Fang et al. 2023; Su et al. 2021 for RoPE): each head's first half rotates with the token's
//! row, the second half with its column, pairs (2i, 2i + 1) by the angle pos·θ_i with
//! θ_i = 10000^(−2i/d), d = head width / 2. The cos and sin tables are the published module's
//! persistent buffers `feat_rope.freqs_cos` and `feat_rope.freqs_sin` (L, head width): they are
//! in its state_dict, so they are variables here (not trained).

use tch::nn;
use tch::{Kind, Tensor};

/// Base of the rotation frequencies.
const THETA: f64 = 10_000.0;

#[derive(Debug)]
pub struct Rope {
    cos: Tensor,
    sin: Tensor,
}

impl Rope {
    /// The tables for a `side` × `side` token grid and heads `head_width` wide, as the
    /// published module computes them (float32, its order of operations), stored under `vs`.
    pub fn new(vs: nn::Path, side: i64, head_width: i64) -> Self {
        let (cos, sin) = Self::tables(side, head_width);
        let var = |name: &str, value: &Tensor| {
            let v = vs.zeros_no_train(name, &value.size());
            tch::no_grad(|| v.shallow_clone().copy_(value));
            v
        };
        Self { cos: var("freqs_cos", &cos), sin: var("freqs_sin", &sin) }
    }

    /// (cos, sin), each (side², head_width): rows are tokens in row-major order.
    fn tables(side: i64, head_width: i64) -> (Tensor, Tensor) {
        let dim = head_width / 2; // the published `dim`: half a head
        let opts = (Kind::Float, tch::Device::Cpu);
        // 1 / θ^(arange(0, dim, 2) / dim)
        let exponents = Tensor::arange_start_step(0, dim, 2, (Kind::Int64, tch::Device::Cpu))
            .narrow(0, 0, dim / 2)
            .to_kind(Kind::Float)
            / dim as f64;
        let freqs = Tensor::from(THETA as f32).pow(&exponents).reciprocal(); // (dim / 2)
        let t = Tensor::arange(side, opts) / side as f64 * side as f64; // arange(ft) / ft * pt
        let f = t.unsqueeze(1) * freqs.unsqueeze(0); // (side, dim / 2)
        let f = f.unsqueeze(-1).expand([side, dim / 2, 2], false).reshape([side, dim]); // each twice
        let rows = f.unsqueeze(1).expand([side, side, dim], false); // the row's angles
        let cols = f.unsqueeze(0).expand([side, side, dim], false); // the column's angles
        let all = Tensor::cat(&[rows, cols], -1).reshape([side * side, 2 * dim]);
        (all.cos(), all.sin())
    }

    /// x (B, H, L, head width) rotated: x·cos + rotate_half(x)·sin, where rotate_half maps each
    /// pair (a, b) to (−b, a). Computed as x·cos + swap(x)·sin', where swap maps (a, b) to
    /// (b, a) (one flip, whose backward is one flip) and sin' is sin with the first of each
    /// pair negated: the same products, as (−b)·s = b·(−s) exactly.
    pub fn apply(&self, x: &Tensor) -> Tensor {
        let size = x.size();
        let width = *size.last().expect("RoPE's input has a head dimension");
        let swapped = x.reshape([-1, width / 2, 2]).flip([-1]).reshape(size.as_slice());
        let kind = x.kind();
        x * self.cos.to_kind(kind) + swapped * self.signed_sin().to_kind(kind)
    }

    /// The sin table with the first of each pair negated (a small table, no gradient).
    fn signed_sin(&self) -> Tensor {
        let pairs = self.sin.reshape([-1, 2]);
        Tensor::stack(&[pairs.select(1, 0).neg(), pairs.select(1, 1)], 1).reshape(self.sin.size().as_slice())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_rotate_rows_in_the_first_half_and_columns_in_the_second() {
        let (cos, sin) = Rope::tables(4, 8); // dim 4: θ_0 = 1, θ_1 = 1/100
        assert_eq!(cos.size(), [16, 8]);
        // Token (row 2, column 3) = index 11: angles 2·[1, 1, 0.01, 0.01], 3·[1, 1, 0.01, 0.01].
        let want = [2.0, 2.0, 0.02, 0.02, 3.0, 3.0, 0.03, 0.03];
        for (j, a) in want.iter().enumerate() {
            assert!((cos.double_value(&[11, j as i64]) - f64::cos(*a)).abs() < 1e-6, "cos {j}");
            assert!((sin.double_value(&[11, j as i64]) - f64::sin(*a)).abs() < 1e-6, "sin {j}");
        }
    }

    #[test]
    fn apply_is_exactly_x_cos_plus_rotate_half_x_sin() {
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let rope = Rope::new(vs.root(), 4, 8);
        tch::manual_seed(0);
        let x = Tensor::randn([2, 3, 16, 8], (Kind::Float, tch::Device::Cpu));
        // rotate_half as the published module writes it: pairs (a, b) → (−b, a).
        let pairs = x.reshape([2, 3, 16, 4, 2]);
        let rotated =
            Tensor::stack(&[pairs.select(-1, 1).neg(), pairs.select(-1, 0)], -1).reshape([2, 3, 16, 8]);
        let want = &x * &rope.cos + rotated * &rope.sin;
        assert!(rope.apply(&x).equal(&want));
    }
}

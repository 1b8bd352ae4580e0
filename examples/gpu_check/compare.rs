//! Comparing one training step computed two ways, and the bounds that decide it.
//!
//! Loss and gradients: the device's result against the CPU's for the same variant, each error
//! relative to the CPU tensor's norm. The bound is K times what two correct CPU computations
//! differ by for the same tensor (fp32: naive against fused attention; bf16: bf16 against fp32
//! with the same kernel), and never below a floor: K = 10 and floor 1e-4 in fp32 (a wrong
//! kernel is off by 1e-2 or more; reduction-order differences between libraries are 1e-6 to
//! 1e-5), K = 3 and floor 1e-2 in bf16 (two bf16 computations each sit about one bf16
//! rounding, ~0.4% per product, from the fp32 result, so their distance is at most about
//! twice that). The key projections' biases are skipped: their gradient is zero in exact
//! arithmetic (softmax ignores a shift shared by all keys), so only rounding noise remains.
//!
//! Adam and EMA: the device's weights after the update against the update recomputed in f64
//! on the CPU from the device's own (clipped) gradients, relative to the update's size; this
//! tests the optimizer on the device apart from the gradients, where comparing against the
//! CPU's own update would be dominated by Adam's first step, lr·g/|g|, flipping with the sign of
//! near-zero gradient entries. Bounds: 1e-4 for Adam (float32 rounding of w ~0.1 against an
//! update of ~lr = 2e-3 is ~1e-5), 1e-2 for the EMA (its step is 0.005 of that update, so the
//! same rounding is ~6e-4 of it).

use tch::{Device, Kind, Tensor};

use dit::config::Precision;

/// What one step left, on the CPU in f64: loss, clipped gradients, weights and EMA after the update.
pub struct Snapshot {
    pub loss: f64,
    pub grads: Vec<(String, Tensor)>,
    pub weights: Vec<(String, Tensor)>,
    pub ema: Vec<(String, Tensor)>,
}

/// Named tensors on the CPU in f64, sorted by name (so lists from any source line up).
pub fn to_cpu(named: &[(String, Tensor)]) -> Vec<(String, Tensor)> {
    let mut out: Vec<(String, Tensor)> = named
        .iter()
        .map(|(n, t)| (n.clone(), t.detach().to_device(Device::Cpu).to_kind(Kind::Double)))
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn norm(t: &Tensor) -> f64 {
    t.norm().double_value(&[])
}

/// ‖a − b‖ / ‖b‖ (‖a − b‖ when b is zero).
pub fn rel(a: &Tensor, b: &Tensor) -> f64 {
    let d = norm(&(a - b));
    let n = norm(b);
    if n > 0.0 {
        d / n
    } else {
        d
    }
}

/// Gradients that are zero in exact arithmetic (see the module documentation).
fn skipped(name: &str) -> bool {
    name.ends_with("k_emb.bias")
}

/// The largest [`rel`] over the tensors of `a` against `b`, and its name.
pub fn worst(a: &[(String, Tensor)], b: &[(String, Tensor)]) -> (f64, String) {
    a.iter()
        .zip(b)
        .filter(|((n, _), _)| !skipped(n))
        .map(|((n, x), (_, y))| (rel(x, y), n.clone()))
        .fold((0.0, String::new()), |acc, x| if x.0 > acc.0 { x } else { acc })
}

/// `x ≤ bound`, false for NaN: a non-finite error never passes.
fn within(x: f64, bound: f64) -> bool {
    x <= bound
}

pub struct Verdict {
    pub pass: bool,
    pub detail: String,
}

impl Verdict {
    pub fn word(&self) -> &'static str {
        if self.pass {
            "PASS"
        } else {
            "FAIL"
        }
    }

    /// Judges `dev` against `cpu` (same variant), with `reference` (another correct CPU
    /// computation) setting the scale of honest differences; `w0` are the initial weights.
    pub fn judge(
        precision: Precision,
        dev: &Snapshot,
        cpu: &Snapshot,
        reference: &Snapshot,
        w0: &[(String, Tensor)],
        lr: f64,
    ) -> Verdict {
        let (k, floor) = if precision == Precision::Fp32 { (10.0, 1e-4) } else { (3.0, 1e-2) };
        let mut fails = vec![];
        let loss_err = (dev.loss - cpu.loss).abs() / cpu.loss.abs();
        let loss_bound = (k * (reference.loss - cpu.loss).abs() / cpu.loss.abs()).max(floor);
        if !within(loss_err, loss_bound) {
            fails.push(format!(
                "loss {} vs CPU {} (error {loss_err:.2e} > {loss_bound:.2e})",
                dev.loss, cpu.loss
            ));
        }
        let mut grad_worst: (f64, String) = (-1.0, String::new());
        for (((name, g), (_, c)), (_, r)) in dev.grads.iter().zip(&cpu.grads).zip(&reference.grads) {
            if skipped(name) {
                continue;
            }
            let (err, bound) = (rel(g, c), (k * rel(r, c)).max(floor));
            if !within(err, bound) {
                fails.push(format!("gradient {name} error {err:.2e} > {bound:.2e}"));
            }
            if err / bound > grad_worst.0 {
                grad_worst = (err / bound, format!("{name} {err:.2e} (bound {bound:.2e})"));
            }
        }
        let (adam, ema) = update_errors(dev, w0, lr);
        if !within(adam.0, 1e-4) {
            fails.push(format!("Adam update of {} off by {:.2e} > 1e-4", adam.1, adam.0));
        }
        if !within(ema.0, 1e-2) {
            fails.push(format!("EMA of {} off by {:.2e} > 1e-2", ema.1, ema.0));
        }
        let detail = if fails.is_empty() {
            format!(
                "loss error {loss_err:.1e} (bound {loss_bound:.1e}); worst gradient {}; Adam {:.1e}, EMA {:.1e} of the update",
                grad_worst.1, adam.0, ema.0
            )
        } else {
            fails.join("; ")
        };
        Verdict { pass: fails.is_empty(), detail }
    }
}

/// The device's Adam and EMA results against their f64 recomputation from its own gradients
/// (the first Adam step of PyTorch's defaults, and the EMA with decay 0.995): the worst error
/// relative to the update's norm, with its tensor.
fn update_errors(dev: &Snapshot, w0: &[(String, Tensor)], lr: f64) -> ((f64, String), (f64, String)) {
    let (b1, b2, eps, decay) = (0.9, 0.999, 1e-8, 0.995);
    let (mut adam, mut ema): ((f64, String), (f64, String)) = ((0.0, String::new()), (0.0, String::new()));
    for ((((name, g), (_, w)), (_, e)), (_, w0)) in dev.grads.iter().zip(&dev.weights).zip(&dev.ema).zip(w0) {
        // m̂ = g and v̂ = g² after one step's bias corrections.
        let m_hat = g * (1.0 - b1) / (1.0 - b1);
        let v_hat = (g * g) * (1.0 - b2) / (1.0 - b2);
        let w1 = w0 - m_hat * lr / (v_hat.sqrt() + eps);
        let update = norm(&(&w1 - w0)).max(f64::MIN_POSITIVE);
        let a = norm(&(w - &w1)) / update;
        let e_want = w0 + (w - w0) * (1.0 - decay);
        let e_err = norm(&(e - &e_want)) / (norm(&(&e_want - w0)).max(f64::MIN_POSITIVE));
        if !skipped(name) && a > adam.0 {
            adam = (a, name.clone());
        }
        if !skipped(name) && e_err > ema.0 {
            ema = (e_err, name.clone());
        }
    }
    (adam, ema)
}

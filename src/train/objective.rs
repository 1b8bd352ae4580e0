//! The loss of a slice of a step (docs/OBJECTIVES.md): the distance `train.loss` between the
//! model's output and its target, weighted per image by `train.loss_weighting`.

use tch::{Kind, Reduction, Tensor};

use crate::config::Loss;

/// `loss` between `output` and `target` (B, C, I, I): without `weights`, the mean over every
/// value (for L1 exactly the original's `l1_loss`); with `weights` (B), each image's mean
/// times its weight, averaged over the images (equal to the former for weights of 1).
pub fn objective_loss(output: &Tensor, target: &Tensor, loss: Loss, weights: Option<&Tensor>) -> Tensor {
    match weights {
        None => match loss {
            Loss::L1 => output.l1_loss(target, Reduction::Mean),
            Loss::L2 => output.mse_loss(target, Reduction::Mean),
        },
        Some(w) => {
            let diff = output - target;
            let values = match loss {
                Loss::L1 => diff.abs(),
                Loss::L2 => diff.square(),
            };
            let per_image = values.mean_dim([1, 2, 3].as_slice(), false, Kind::Float); // (B)
            (per_image * w).mean(Kind::Float)
        }
    }
}

#[cfg(test)]
mod tests {
    use tch::Device;

    use super::*;

    #[test]
    fn unit_weights_give_the_plain_mean_and_weights_scale_images() {
        tch::manual_seed(2);
        let a = Tensor::randn([3, 2, 4, 4], (Kind::Float, Device::Cpu));
        let b = Tensor::randn([3, 2, 4, 4], (Kind::Float, Device::Cpu));
        let ones = Tensor::ones([3], (Kind::Float, Device::Cpu));
        for loss in [Loss::L1, Loss::L2] {
            let plain = objective_loss(&a, &b, loss, None).double_value(&[]);
            let unit = objective_loss(&a, &b, loss, Some(&ones)).double_value(&[]);
            assert!((plain - unit).abs() < 1e-6 * plain, "{loss:?}");
        }
        let l2 = (&a - &b).square().mean(Kind::Float).double_value(&[]);
        assert!((objective_loss(&a, &b, Loss::L2, None).double_value(&[]) - l2).abs() < 1e-6);
        // Weight 3 on image 0 and 0 elsewhere: that image's mean error, times 3, over 3 images.
        let w = Tensor::from_slice(&[3.0f32, 0.0, 0.0]);
        let first = (a.get(0) - b.get(0)).abs().mean(Kind::Float).double_value(&[]);
        let got = objective_loss(&a, &b, Loss::L1, Some(&w)).double_value(&[]);
        assert!((got - first).abs() < 1e-6, "{got} against {first}");
    }
}

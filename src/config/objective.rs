//! The training objective's choices (docs/OBJECTIVES.md): what the model's output means
//! (`diffusion.prediction`), the distance between it and its target (`train.loss`) and how the
//! steps t are weighted (`train.loss_weighting`). The defaults are the original's: ε, L1,
//! every t alike.

use serde::{Deserialize, Serialize};

/// What the model predicts from (x_t, t). The network is the same for every choice; only the
/// meaning of its output, the training target and the samplers' conversion change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Prediction {
    /// The noise ε that made x_t (the original's).
    #[default]
    Epsilon,
    /// The clean image x0.
    X0,
    /// The velocity v = sqrt(ᾱ_t)·ε − sqrt(1 − ᾱ_t)·x0 (Salimans & Ho 2022).
    V,
}

impl Prediction {
    /// The name the config and the command line use.
    pub fn name(self) -> &'static str {
        match self {
            Self::Epsilon => "epsilon",
            Self::X0 => "x0",
            Self::V => "v",
        }
    }
}

/// The diffusion process a model is trained on and sampled with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Process {
    /// DDPM (Ho et al. 2020): discrete steps 0…max_t−1 of a linear β schedule (the original's).
    #[default]
    Ddpm,
    /// Flow matching on the linear path (SiT, Ma et al. 2024; LightningDiT): t in [0, 1],
    /// x_t = t·x1 + (1 − t)·x0 with x1 the data and x0 the noise; the model predicts the
    /// velocity x1 − x0 and sees t unscaled.
    Flow,
}

impl Process {
    pub fn name(self) -> &'static str {
        match self {
            Self::Ddpm => "ddpm",
            Self::Flow => "flow",
        }
    }
}

/// How flow training draws t.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum TimestepSampling {
    /// t ~ U[0, 1).
    #[default]
    Uniform,
    /// t = sigmoid(n), n ~ N(0, 1) (Esser et al. 2024; LightningDiT's `use_lognorm`).
    #[value(name = "logit_normal")]
    LogitNormal,
}

/// The distance between the prediction and its target, averaged over the values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Loss {
    /// Mean absolute error (the original's).
    #[default]
    L1,
    /// Mean squared error.
    L2,
}

/// How each image's loss is weighted by its step t.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum LossWeighting {
    /// Every t alike (the original's).
    #[default]
    None,
    /// Min-SNR-γ (Hang et al. 2023): the x0-space distance weighted by min(SNR_t, γ), the
    /// same weighting for every prediction target and either loss; expressed for the target
    /// it is, under L2, ε: min(SNR, γ)/SNR, v: min(SNR, γ)/(SNR + 1); under L1,
    /// ε: min(SNR, γ)/sqrt(SNR), v: min(SNR, γ)/sqrt(SNR + 1); x0: min(SNR, γ).
    #[value(name = "min_snr")]
    MinSnr,
}

/// One line for the start of a run: "x0 prediction, L1 loss, Min-SNR-5 weighting".
pub fn describe_objective(
    prediction: Prediction,
    loss: Loss,
    weighting: LossWeighting,
    gamma: f64,
) -> String {
    let loss = if loss == Loss::L1 { "L1" } else { "L2" };
    let weighting = match weighting {
        LossWeighting::None => "every t alike".to_string(),
        LossWeighting::MinSnr => format!("Min-SNR-{gamma} weighting"),
    };
    format!("{} prediction, {loss} loss, {weighting}", prediction.name())
}

/// One line for the start of a flow run: "flow matching (logit-normal t), velocity target, L2
/// loss + cosine loss".
pub fn describe_flow(sampling: TimestepSampling, loss: Loss, cosine: bool) -> String {
    let t = match sampling {
        TimestepSampling::Uniform => "uniform t",
        TimestepSampling::LogitNormal => "logit-normal t",
    };
    let loss = if loss == Loss::L1 { "L1" } else { "L2" };
    let cosine = if cosine { " + cosine loss" } else { "" };
    format!("flow matching ({t}), velocity target, {loss} loss{cosine}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describe_flow_names_the_times_the_loss_and_the_cosine_term() {
        assert_eq!(
            describe_flow(TimestepSampling::LogitNormal, Loss::L2, true),
            "flow matching (logit-normal t), velocity target, L2 loss + cosine loss"
        );
        assert_eq!(
            describe_flow(TimestepSampling::Uniform, Loss::L1, false),
            "flow matching (uniform t), velocity target, L1 loss"
        );
    }

    #[test]
    fn describe_objective_names_the_prediction_the_loss_and_the_weighting() {
        let original =
            describe_objective(Prediction::default(), Loss::default(), LossWeighting::default(), 5.0);
        assert_eq!(original, "epsilon prediction, L1 loss, every t alike");
        assert_eq!(
            describe_objective(Prediction::X0, Loss::L1, LossWeighting::MinSnr, 5.0),
            "x0 prediction, L1 loss, Min-SNR-5 weighting"
        );
        assert_eq!(
            describe_objective(Prediction::V, Loss::L2, LossWeighting::MinSnr, 2.5),
            "v prediction, L2 loss, Min-SNR-2.5 weighting"
        );
    }
}

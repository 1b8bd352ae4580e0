//! Measures how distinct generated classes are: the mean (R − B) of the central half of each
//! image (near 0 for a white panda face, large for an orange red-panda face), compared with
//! the same statistic on the training data of `builtin:pandas2`.
//!
//!   guidance_stat LABEL0.safetensors LABEL1.safetensors   (files from `sample --tensor-out`)

use anyhow::{Context, Result};
use tch::{Kind, Tensor};

/// Mean R − B over the central half of each image, in [0, 1] units; images (N, 3, I, I) in [−1, 1].
fn statistic(images: &Tensor) -> Vec<f64> {
    let i = images.size()[2];
    let c = images.narrow(2, i / 4, i / 2).narrow(3, i / 4, i / 2);
    let rb = (c.select(1, 0) - c.select(1, 2)) / 2.0; // (N, I/2, I/2)
    Vec::<f64>::try_from(rb.mean_dim(&[1i64, 2][..], false, Kind::Double)).unwrap()
}

fn mean_std(v: &[f64]) -> (f64, f64) {
    let m = v.iter().sum::<f64>() / v.len() as f64;
    (m, (v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / v.len() as f64).sqrt())
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let data = dit::data::Dataset::open("builtin:pandas2", 32)?;
    let real: Vec<Vec<f64>> = (0..2)
        .map(|label| {
            let imgs: Vec<Tensor> = (0..256)
                .filter(|&k| data.label(k) == Some(label))
                .map(|k| Tensor::from_slice(&data.load(k).unwrap()).view([32, 32, 3]).permute([2, 0, 1]))
                .collect();
            statistic(&(Tensor::stack(&imgs, 0).to_kind(Kind::Float) / 127.5 - 1.0))
        })
        .collect();
    let (r0, r1) = (mean_std(&real[0]).0, mean_std(&real[1]).0);
    let threshold = (r0 + r1) / 2.0;
    println!("training data: panda {r0:.3}, red panda {r1:.3} (threshold {threshold:.3})");
    let mut gen = vec![];
    for (label, path) in args[1..3].iter().enumerate() {
        let t =
            Tensor::read_safetensors(path)?.into_iter().find(|(n, _)| n == "images").context("no images")?.1;
        let s = statistic(&t);
        let correct = s.iter().filter(|&&x| (x > threshold) == (label == 1)).count();
        let (m, sd) = mean_std(&s);
        println!("label {label}: mean {m:.3} ± {sd:.3}, classified as asked: {correct}/{}", s.len());
        gen.push((m, sd));
    }
    let pooled = ((gen[0].1.powi(2) + gen[1].1.powi(2)) / 2.0).sqrt();
    println!(
        "separation (difference of means / pooled std): {:.2}",
        (gen[1].0 - gen[0].0) / pooled.max(1e-9)
    );
    Ok(())
}

//! Image sets for the metric from the project's [`Dataset`], so that training data, sample
//! folders written by `sample --out-dir` and the built-in sets are all read the same way (the
//! training pipeline's decoding, resize and centre crop).

use anyhow::{bail, ensure, Context, Result};
use rayon::prelude::*;
use tch::Tensor;

use crate::data::Dataset;

/// Up to `num` images of `dataset` (only those of label `class`, when given) as one
/// (N, 3, I, I) float32 tensor in [−1, 1] on the CPU (I = `dataset.img_size()`; pixel
/// values x/255·2 − 1 as in training), decoded in parallel on rayon's global pool: the images
/// [`choose`] picks, as [`load_pixels`] reads them.
pub fn load_images(dataset: &Dataset, num: usize, class: Option<i64>) -> Result<Tensor> {
    Ok(crate::data::to_model_range(&load_pixels(dataset, &choose(dataset, num, class)?)?))
}

/// Which images of `dataset` make a set of up to `num` (of label `class`, when given): all of
/// them when there are at most `num`, else `num` evenly spaced over the data set's (sorted)
/// order, so a subset covers the whole set.
pub fn choose(dataset: &Dataset, num: usize, class: Option<i64>) -> Result<Vec<usize>> {
    let candidates: Vec<usize> =
        (0..dataset.len()).filter(|&i| class.is_none_or(|c| dataset.label(i) == Some(c))).collect();
    ensure!(!candidates.is_empty(), "{} has no image of class {}", dataset.describe(), class.unwrap_or(0));
    Ok(if candidates.len() <= num {
        candidates
    } else {
        (0..num).map(|k| candidates[k * candidates.len() / num]).collect()
    })
}

/// The images `chosen` of `dataset` as one (N, 3, I, I) uint8 tensor on the CPU, decoded in
/// parallel. Files that fail to decode are skipped with one warning each on stderr (as in
/// training), so N can be below `chosen.len()`; it is an error only when none loads.
pub fn load_pixels(dataset: &Dataset, chosen: &[usize]) -> Result<Tensor> {
    let loaded: Vec<Vec<u8>> = chosen
        .par_iter()
        .filter_map(|&i| match dataset.load(i) {
            Ok(pixels) => Some(pixels),
            Err(err) => {
                eprintln!("warning: skipping image {i}: {}", format!("{err:#}").replace('\n', " "));
                None
            }
        })
        .collect();
    ensure!(
        !loaded.is_empty(),
        "none of the {} chosen images of {} could be loaded",
        chosen.len(),
        dataset.describe()
    );
    let side = dataset.img_size();
    let bytes: Vec<u8> = loaded.concat();
    Ok(Tensor::from_slice(&bytes).view([loaded.len() as i64, side, side, 3]).permute([0, 3, 1, 2]))
}

/// The side of the square images of a folder data set, read from the file headers: an error
/// names the first file that is not square or not of the first file's size. `None` for a
/// built-in data set (it renders at any size).
pub fn native_size(dataset: &Dataset) -> Result<Option<i64>> {
    let mut first: Option<(u32, std::path::PathBuf)> = None;
    for i in 0..dataset.len() {
        let Some(path) = dataset.path(i) else { return Ok(None) };
        let (w, h) =
            image::image_dimensions(path).with_context(|| format!("reading image {}", path.display()))?;
        ensure!(w == h, "image {} is {w}×{h}: sample images must be square", path.display());
        match &first {
            None => first = Some((w, path.to_path_buf())),
            Some((side, at)) if *side != w => bail!(
                "image {} is {w}×{w} but {} is {side}×{side}: all sample images must have one size",
                path.display(),
                at.display()
            ),
            Some(_) => {}
        }
    }
    Ok(first.map(|(side, _)| side as i64))
}

/// The label named by `class`: one of the data set's class names, or a label number.
pub fn resolve_class(dataset: &Dataset, class: &str) -> Result<i64> {
    let names = dataset.class_names();
    if let Some(label) = names.iter().position(|n| n == class) {
        return Ok(label as i64);
    }
    match class.parse::<i64>() {
        Ok(label) if (0..names.len() as i64).contains(&label) => Ok(label),
        _ => bail!(
            "class {class:?} is not one of {} (names: {}, or 0..{})",
            dataset.describe(),
            names.join(", "),
            names.len() - 1
        ),
    }
}

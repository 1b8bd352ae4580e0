//! Checkpoints: weight files in the three formats users exchange with PyTorch (`format.rs`),
//! checked key by key and shape by shape against the model (`keys.rs`), the full training state
//! beside them ([`state`]), what a `.safetensors` weight file records about its run
//! ([`Recorded`]), and models loaded for sampling (`inference.rs`). Every file is
//! written atomically (temporary file, fsync, rename: [`crate::fs::write_atomic`]).

use std::path::Path;

use anyhow::Result;
use tch::nn::VarStore;

mod format;
mod inference;
mod keys;
mod pth;
mod recorded;
pub mod state;

pub use format::{read_metadata, read_tensors, write_tensors, write_tensors_with, Format};
pub use inference::{load_for_inference, Loaded};
pub use keys::{check_keys, copy_into, expected_shapes, named_variables, shapes, Shapes};
pub use recorded::{Recorded, CLASSES_KEY, DIFFUSION_KEY, LATENT_KEY, MODEL_KEY, RUNTIME_KEY};

/// Loads a weight file of any format into `vs`, after checking every key and shape.
pub fn load_weights(vs: &mut VarStore, path: &Path) -> Result<()> {
    let found = read_tensors(path)?;
    check_keys(path, &shapes(vs), &found)?;
    copy_into(vs, found.iter().map(|(n, t)| (n, t)));
    Ok(())
}

/// Saves the VarStore's variables atomically in the format `path`'s extension names.
pub fn save_weights(vs: &VarStore, path: &Path) -> Result<()> {
    write_tensors(path, &named_variables(vs))
}

/// Converts a weight file between formats (by extension), checking it against the model first.
pub fn convert(input: &Path, output: &Path, cfg: &crate::config::ModelConfig) -> Result<usize> {
    Format::from_path(output)?;
    let tensors = read_tensors(input)?;
    check_keys(input, &expected_shapes(cfg), &tensors)?;
    write_tensors(output, &tensors)?;
    Ok(tensors.len())
}

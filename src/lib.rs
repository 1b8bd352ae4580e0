//! dit: the Diffusion Transformer of a small PyTorch program, ported to tch (libtorch) with
//! the same parameters and the same numbers, so weights move both ways.

pub mod autoencoder;
pub mod checkpoint;
pub mod cli;
pub mod config;
pub mod data;
pub mod diffusion;
pub mod distributed;
pub mod download;
pub mod ffi;
pub mod fs;
pub mod generate;
pub mod model;
pub mod optim;
pub mod profile;
pub mod progress;
pub mod quality;
pub mod rng;
pub mod sampling;
pub mod tensorboard;
pub mod torch_flags;
pub mod train;

pub use config::Config;
pub use model::Dit;

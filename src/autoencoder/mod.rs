//! The published tiny autoencoders (TAESD family: taesd, taesdxl, taesd3, taef1, taef2), ported
//! with their parameter names so their `.pth` files load as they are (docs/AUTOENCODER.md).
//! What the weights are ([`Variant`], which lives with the config, and [`layout`]) is kept apart from how they compute
//! (`stack.rs`, `block.rs`); [`Encoder`] and [`Decoder`] join the two and load weight files
//! strictly (`load.rs`); [`files`] finds, downloads and verifies the weight files. On the CPU,
//! `channels_last()` makes either network faster with the same results (`channels_last.rs`).
//! Tested against the published PyTorch code in tests/autoencoder.rs and
//! tests/autoencoder_files.rs.

mod block;
mod channels_last;
mod decoder;
mod encoder;
pub mod files;
pub mod layout;
mod load;
mod space;
mod stack;

pub use crate::config::Variant;
pub use decoder::Decoder;
pub use encoder::Encoder;
pub use space::{load_decoder, load_encoder, locate, visible, LatentDecoder};

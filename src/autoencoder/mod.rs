//! The pretrained tiny autoencoders (TAESD family) that map images to latents and back.

pub mod files;

//! The DiT of the original, one file per class: [`TimeEmbedding`], [`DiTBlock`], [`Dit`].
//! Every sub-path uses the original's attribute name, so VarStore keys equal the PyTorch
//! state_dict keys with no renaming table (REFERENCE.md §2).

mod dit;
mod dit_block;
pub mod time_embedding;

pub use dit::Dit;
pub use dit_block::DiTBlock;
pub use time_embedding::TimeEmbedding;

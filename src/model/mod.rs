//! The DiT of the original, one file per class: [`TimeEmbedding`], [`DiTBlock`], [`Dit`].
//! Every sub-path uses the original's attribute name, so VarStore keys equal the PyTorch
//! state_dict keys with no renaming table (docs/ORIGINAL.md §2).

pub mod compute;
mod dit;
mod dit_block;
mod graph;
mod init;
pub mod time_embedding;

pub use compute::{Compute, Kernel};
pub use dit::Dit;
pub use dit_block::{DiTBlock, MODULATION};
pub use graph::{dit_graph, GraphNode};
pub use time_embedding::TimeEmbedding;

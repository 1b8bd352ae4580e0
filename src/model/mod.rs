//! The DiT of the original, one file per class: [`TimeEmbedding`], [`DiTBlock`], [`Dit`];
//! how it computes ([`compute`]) and what training recomputes ([`checkpointing`]) apart.
//! Every sub-path uses the original's attribute name, so VarStore keys equal the PyTorch
//! state_dict keys with no renaming table (docs/ORIGINAL.md §2).

pub mod checkpointing;
pub mod compute;
mod dit;
mod dit_block;
mod graph;
mod init;
pub mod time_embedding;

pub use checkpointing::TrainingForward;
pub use compute::{Compute, Kernel};
pub use dit::Dit;
pub use dit_block::{DiTBlock, MODULATION};
pub use graph::{dit_graph, GraphNode};
pub use time_embedding::TimeEmbedding;

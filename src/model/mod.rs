//! The model, one file per class: the original's DiT ([`TimeEmbedding`], [`DiTBlock`],
//! `original`) and LightningDiT's (`lightning`, `lightning_block`, `rope`), behind the one
//! interface [`Dit`]; how it computes ([`compute`]) and what training recomputes
//! ([`checkpointing`]) apart. Every sub-path uses the published attribute name, so VarStore
//! keys equal the PyTorch state_dict keys with no renaming table (docs/ORIGINAL.md §2,
//! docs/RECIPES.md).

pub mod checkpointing;
pub mod compute;
mod dit;
mod dit_block;
mod graph;
mod init;
mod lightning;
mod lightning_block;
mod original;
mod rope;
pub mod time_embedding;

pub use checkpointing::TrainingForward;
pub use compute::{Compute, Kernel};
pub use dit::Dit;
pub use dit_block::{DiTBlock, MODULATION};
pub use graph::{dit_graph, GraphNode};
pub use time_embedding::TimeEmbedding;

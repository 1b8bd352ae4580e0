//! Data-parallel training on PyTorch's own c10d, launched by torchrun: each process trains a
//! replica on its share of every batch, and gradients are averaged over the processes.
//!
//! - [`World`]: this process's rank and the rendezvous address, from torchrun's variables.
//! - [`Backend`]: Gloo (CPU) or NCCL (CUDA).
//! - [`ProcessGroup`]: c10d's TCPStore + ProcessGroupGloo/NCCL; bucketed all-reduce and
//!   broadcast, barrier, all-gather, and [`ProcessGroup::check_same`] for config checks.
//! - [`GradReducer`]: DistributedDataParallel's c10d `Reducer`, averaging gradients during
//!   backward.
//!
//! Faults are bounded: connecting gives up after [`Options::connect_timeout`], a collective
//! after [`Options::timeout`] (a peer that dies closes its connections and fails it at once),
//! and the error names the lost rank, from per-rank heartbeats kept in the store.
//!
//! The C++ side is `c10d_shim.cpp`; `gloo_decls/README.md` explains how it compiles against a
//! wheel that ships no gloo headers.

mod backend;
mod ffi;
mod group;
mod liveness;
mod reducer;
mod store;
mod world;

pub use backend::Backend;
pub use group::{Options, ProcessGroup};
pub use reducer::GradReducer;
pub use world::World;

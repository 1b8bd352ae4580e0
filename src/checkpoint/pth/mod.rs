//! The `torch.save` zip-pickle format (`.pth`/`.pt`) of a state_dict, both ways.
//!
//! Reading: libtorch's own unpickler turns a `collections.OrderedDict` (what
//! `model.state_dict()` returns, so every file the original writes) into None, so this module
//! carries a small pickle machine (`pickle.rs`) for the opcodes `torch.save` emits and rebuilds
//! tensors from the archive's storages (`archive.rs`). Anything else in the pickle is refused by
//! name.
//!
//! Writing: libtorch's own serializer, through the C++ shim `writer.cpp` (`write.rs`).

use std::path::Path;

use anyhow::{bail, ensure, Result};
use tch::Tensor;

mod archive;
mod pickle;
mod write;

use archive::Archive;
use pickle::{Machine, Value};
pub use write::write;

/// Reads a `torch.save`d state_dict: every str → tensor entry, in file order.
pub fn read(path: &Path) -> Result<Vec<(String, Tensor)>> {
    let mut archive = Archive::open(path)?;
    if let Ok(order) = archive.read("byteorder") {
        ensure!(order == b"little", "big-endian archives are not supported");
    }
    let pickle = archive.read("data.pkl")?;
    let mut machine = Machine::new(&pickle, &mut archive);
    let Value::Dict(entries) = machine.run()? else { bail!("the file holds no dict (not a state_dict)") };
    entries
        .into_iter()
        .map(|(k, v)| match (k, v) {
            (Value::Str(k), Value::Tensor(t)) => Ok((k, t)),
            (Value::Str(k), _) => bail!("entry {k:?} is not a tensor (not a plain state_dict)"),
            (k, _) => bail!("key {k:?} is not a string (not a state_dict)"),
        })
        .collect()
}

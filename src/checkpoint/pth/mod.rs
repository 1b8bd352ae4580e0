//! The `torch.save` format (`.pth`/`.pt`) of a state_dict, both ways.
//!
//! Reading: libtorch's own unpickler turns a `collections.OrderedDict` (what
//! `model.state_dict()` returns, so every file the original writes) into None, so this module
//! carries a small pickle machine (`pickle.rs`) for the opcodes `torch.save` emits. Its storages
//! come from one of the two containers `torch.load` reads: the zip archive of PyTorch 1.6 and
//! later (`archive.rs`), or the legacy stream of pickles followed by the raw storages that
//! older releases wrote and `_use_new_zipfile_serialization=False` still writes (`legacy.rs`;
//! published weights such as pytorch-fid's Inception are in it). Anything else in the pickle is
//! refused by name, as `torch.load(weights_only=True)` refuses it.
//!
//! Writing: libtorch's own serializer, through the C++ shim `writer.cpp` (`write.rs`).

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

use anyhow::{bail, ensure, Context, Result};
use tch::Tensor;

mod archive;
mod legacy;
mod pickle;
mod write;

use archive::Archive;
use pickle::{Machine, Value, View};
pub use write::write;

/// Reads a `torch.save`d state_dict, in either container: every str → tensor entry, in file
/// order.
pub fn read(path: &Path) -> Result<Vec<(String, Tensor)>> {
    let mut head = [0u8; 4];
    let mut file = std::fs::File::open(path)?;
    let got = file.read(&mut head)?;
    if got == 4 && &head == b"PK\x03\x04" {
        return read_zip(path);
    }
    if legacy::starts(&head[..got]) {
        let bytes = std::fs::read(path)?;
        let (views, storages) = legacy::parse(&bytes)?;
        return resolve(views, |key| storages.get(key).map(Tensor::shallow_clone).context("missing"));
    }
    bail!("not a torch.save file (neither a zip archive nor the legacy pickle stream)")
}

/// The zip container: the pickle is `data.pkl`, storage `k` is the record `data/k`.
fn read_zip(path: &Path) -> Result<Vec<(String, Tensor)>> {
    let mut archive = Archive::open(path)?;
    if let Ok(order) = archive.read("byteorder") {
        ensure!(order == b"little", "big-endian archives are not supported");
    }
    let pickle = archive.read("data.pkl")?;
    let views = state_dict(Machine::new(&pickle, 0).run()?)?;
    let mut storages: HashMap<String, Tensor> = HashMap::new();
    let kinds: HashMap<String, tch::Kind> = views.iter().map(|(_, v)| (v.key.clone(), v.kind)).collect();
    for (key, kind) in kinds {
        let bytes = archive.read(&format!("data/{key}"))?;
        let elem = kind.elt_size_in_bytes();
        ensure!(bytes.len() % elem == 0, "storage {key} has a partial element");
        storages.insert(key, Tensor::from_data_size(&bytes, &[(bytes.len() / elem) as i64], kind));
    }
    resolve(views, |key| storages.get(key).map(Tensor::shallow_clone).context("missing"))
}

/// The (name, view) entries of a pickled state_dict, refusing anything else.
fn state_dict(value: Value) -> Result<Vec<(String, View)>> {
    let Value::Dict(entries) = value else { bail!("the file holds no dict (not a state_dict)") };
    entries
        .into_iter()
        .map(|(k, v)| match (k, v) {
            (Value::Str(k), Value::Tensor(t)) => Ok((k, t)),
            (Value::Str(k), _) => bail!("entry {k:?} is not a tensor (not a plain state_dict)"),
            (k, _) => bail!("key {k:?} is not a string (not a state_dict)"),
        })
        .collect()
}

/// Every view as a tensor of its storage (which `storage` gives by key).
fn resolve(
    views: Vec<(String, View)>,
    storage: impl Fn(&str) -> Result<Tensor>,
) -> Result<Vec<(String, Tensor)>> {
    views
        .into_iter()
        .map(|(name, view)| {
            let data = storage(&view.key).with_context(|| format!("{name}: no storage {}", view.key))?;
            ensure!(data.kind() == view.kind, "{name}: storage {} is read as two dtypes", view.key);
            Ok((name, view.of(&data)?))
        })
        .collect()
}

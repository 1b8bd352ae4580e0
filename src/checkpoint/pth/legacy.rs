//! The legacy `torch.save` container (PyTorch before 1.6, and `_use_new_zipfile_serialization=
//! False` since): five pickles in a row — a magic number, the protocol version 1001, the system
//! description (byte order, type sizes), the object, the list of storage keys — and then each
//! listed storage as an 8-byte little-endian element count followed by its raw bytes.

use std::collections::HashMap;

use anyhow::{bail, ensure, Context, Result};
use tch::{Kind, Tensor};

use super::pickle::{Machine, Value, View};
use super::state_dict;

/// The first pickle: protocol 2, LONG1 of 10 bytes, 0x1950a86a20f9469cfc6c, STOP.
const MAGIC: [u8; 15] =
    [0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19, b'.'];

/// The protocol version the legacy format carries.
const PROTOCOL_VERSION: i64 = 1001;

/// Whether a file starting with `head` (its first bytes) may be in this container.
pub(super) fn starts(head: &[u8]) -> bool {
    !head.is_empty() && MAGIC.starts_with(head)
}

/// A state_dict as the legacy file holds it: the views, and the storages they name by key.
pub(super) type Parsed = (Vec<(String, View)>, HashMap<String, Tensor>);

/// The state_dict's views and the storages they name, by key.
pub(super) fn parse(bytes: &[u8]) -> Result<Parsed> {
    ensure!(bytes.starts_with(&MAGIC), "not a legacy torch.save file (its magic number differs)");
    let mut pos = MAGIC.len();
    let mut next = |what: &str| -> Result<Value> {
        let mut machine = Machine::new(bytes, pos);
        let value = machine.run().with_context(|| format!("the legacy file's {what}"))?;
        pos = machine.end();
        Ok(value)
    };
    match next("protocol version")? {
        Value::Int(PROTOCOL_VERSION) => {}
        other => bail!("legacy protocol version {other:?}, expected {PROTOCOL_VERSION}"),
    }
    check_system(next("system description")?)?;
    let views = state_dict(next("state_dict")?)?;
    let Value::List(keys) = next("storage list")? else {
        bail!("the legacy file's storage list is not a list")
    };
    let kinds: HashMap<&str, Kind> = views.iter().map(|(_, v)| (v.key.as_str(), v.kind)).collect();
    let mut storages = HashMap::new();
    for key in keys {
        let Value::Str(key) = key else { bail!("a storage key in the legacy list is not a string") };
        let kind =
            *kinds.get(key.as_str()).with_context(|| format!("storage {key} is listed but never used"))?;
        let count = bytes.get(pos..pos + 8).with_context(|| format!("storage {key}: the file ends early"))?;
        let count = u64::from_le_bytes(count.try_into()?);
        let len = count
            .checked_mul(kind.elt_size_in_bytes() as u64)
            .filter(|&len| len <= (bytes.len() - pos - 8) as u64)
            .with_context(|| format!("storage {key} declares {count} elements, more than the file holds"))?
            as usize;
        let data = &bytes[pos + 8..pos + 8 + len];
        storages.insert(key, Tensor::from_data_size(data, &[count as i64], kind));
        pos += 8 + len;
    }
    Ok((views, storages))
}

/// The system description must say little-endian (the storages' byte order).
fn check_system(value: Value) -> Result<()> {
    let Value::Dict(entries) = value else { bail!("the legacy file's system description is not a dict") };
    let little = entries.iter().find_map(|(k, v)| match (k, v) {
        (Value::Str(k), Value::Bool(b)) if k == "little_endian" => Some(*b),
        _ => None,
    });
    ensure!(little != Some(false), "big-endian legacy files are not supported");
    Ok(())
}

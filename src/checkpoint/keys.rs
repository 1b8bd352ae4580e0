//! Parameter names and shapes: what a model configuration expects, what a VarStore holds, the
//! check of a file's tensors against them, and the copy of checked tensors into a VarStore.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Result};
use tch::{nn::VarStore, Device, Tensor};

use crate::config::ModelConfig;

/// Parameter name → shape.
pub type Shapes = BTreeMap<String, Vec<i64>>;

/// The names and shapes of a VarStore's variables.
pub fn shapes(vs: &VarStore) -> Shapes {
    vs.variables().into_iter().map(|(n, t)| (n, t.size())).collect()
}

/// The names and shapes of the model a config describes, without running anything.
pub fn expected_shapes(cfg: &ModelConfig) -> Shapes {
    let vs = VarStore::new(Device::Cpu);
    let _model = crate::model::Dit::new(&vs.root(), cfg);
    shapes(&vs)
}

/// Named tensors of a VarStore, sorted by name.
pub fn named_variables(vs: &VarStore) -> Vec<(String, Tensor)> {
    let mut named: Vec<_> = vs.variables().into_iter().collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    named
}

/// Compares a file's tensors with the model's variables; on any difference, an error that
/// lists the missing, unexpected and mis-shaped keys.
pub fn check_keys(path: &Path, expected: &Shapes, found: &[(String, Tensor)]) -> Result<()> {
    let found: BTreeMap<&str, Vec<i64>> = found.iter().map(|(n, t)| (n.as_str(), t.size())).collect();
    let missing: Vec<String> = expected.keys().filter(|k| !found.contains_key(k.as_str())).cloned().collect();
    let unexpected: Vec<String> =
        found.keys().filter(|k| !expected.contains_key(**k)).map(|k| k.to_string()).collect();
    let misshaped: Vec<String> = expected
        .iter()
        .filter_map(|(k, want)| match found.get(k.as_str()) {
            Some(got) if got != want => Some(format!("{k} (file {got:?}, model {want:?})")),
            _ => None,
        })
        .collect();
    let parts: Vec<String> = [("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped)]
        .into_iter()
        .filter(|(_, list)| !list.is_empty())
        .map(|(what, list)| format!("{} {what} ({})", list.len(), first_few(&list)))
        .collect();
    if parts.is_empty() {
        return Ok(());
    }
    bail!("{} does not match the model configuration: {}", path.display(), parts.join("; "))
}

/// The first few names of `list`, then how many more: one readable line even for a
/// checkpoint of another model, where every one of a hundred keys differs.
fn first_few(list: &[String]) -> String {
    const SHOWN: usize = 4;
    let mut text = list.iter().take(SHOWN).cloned().collect::<Vec<_>>().join(", ");
    if list.len() > SHOWN {
        text.push_str(&format!(", … {} more", list.len() - SHOWN));
    }
    text
}

/// Copies named tensors into the VarStore's variables of the same names (checked beforehand).
pub fn copy_into<'a>(vs: &VarStore, tensors: impl IntoIterator<Item = (&'a String, &'a Tensor)>) {
    let variables = vs.variables();
    tch::no_grad(|| {
        for (name, tensor) in tensors {
            variables[name].shallow_clone().copy_(tensor);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mismatch_lists_counts_and_the_first_few_names_on_one_short_line() {
        let expected: Shapes = (0..102).map(|i| (format!("blocks.{i}.weight"), vec![4])).collect();
        let found = vec![("other.weight".to_string(), Tensor::zeros([2], tch::kind::FLOAT_CPU))];
        let err = check_keys(Path::new("w.ot"), &expected, &found).unwrap_err().to_string();
        assert!(err.contains("102 missing (blocks.0.weight, blocks.1.weight,"), "{err}");
        assert!(err.contains("… 98 more") && err.contains("1 unexpected (other.weight)"), "{err}");
        assert!(err.len() < 300 && !err.contains('\n'), "{} characters: {err}", err.len());
    }
}

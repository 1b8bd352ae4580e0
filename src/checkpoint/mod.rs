//! Weight files in the three formats users exchange with PyTorch, chosen by extension:
//! `.ot` (TorchScript archive, tch's native format; Python reads it with
//! `torch.jit.load(p).state_dict()`, keys carry `|` for `.`), `.safetensors`, and `.pth`/`.pt`
//! (`torch.save` of a state_dict, the original's format). Loading checks every key and shape
//! against the model; saving is atomic (temporary file, fsync, rename).

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

mod pth;
pub mod state;
use tch::{nn::VarStore, Device, Tensor};

/// A weight-file format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Ot,
    Safetensors,
    Pth,
}

impl Format {
    pub fn from_path(path: &Path) -> Result<Self> {
        let ext = path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
        match ext.as_deref() {
            Some("ot") => Ok(Self::Ot),
            Some("safetensors") => Ok(Self::Safetensors),
            Some("pth" | "pt" | "bin") => Ok(Self::Pth),
            _ => bail!(
                "{}: unknown weight format; use a name ending in .ot, .safetensors, .pth or .pt",
                path.display()
            ),
        }
    }
}

/// libtorch's messages carry a C++ backtrace after the first line; users need only that line.
pub(crate) fn first_line(err: impl std::fmt::Display) -> String {
    err.to_string().lines().next().unwrap_or_default().to_string()
}

/// Reads every named tensor of a weight file onto the CPU.
pub fn read_tensors(path: &Path) -> Result<Vec<(String, Tensor)>> {
    let format = Format::from_path(path)?;
    if !path.is_file() {
        bail!("{}: no such file", path.display());
    }
    let result = match format {
        // tch turns the archive's `|` back into `.`.
        Format::Ot => Tensor::load_multi_with_device(path, Device::Cpu),
        Format::Safetensors => Tensor::read_safetensors(path),
        Format::Pth => {
            return pth::read(path)
                .with_context(|| format!("{}: not a readable .pth state_dict", path.display()))
        }
    };
    result.map_err(|e| {
        anyhow::anyhow!("{}: not a readable {format:?} weight file ({})", path.display(), first_line(e))
    })
}

/// Runs `write` on a temporary path beside `path`, fsyncs the result and renames it over
/// `path`: a crash at any moment leaves either the old file or the new one, never a mix.
pub fn write_atomic(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create folder {}", dir.display()))?;
    let file_name = path.file_name().with_context(|| format!("{}: not a file name", path.display()))?;
    // Keep the extension last: some writers pick their format from it. One fixed name per
    // target, so a write cut short by a crash is overwritten by the next one, not piled up.
    let tmp = dir.join(format!(".tmp-{}", file_name.to_string_lossy()));
    let result = write(&tmp).and_then(|()| {
        File::open(&tmp)?.sync_all()?;
        std::fs::rename(&tmp, path)?;
        // Make the rename itself durable.
        File::open(&dir)?.sync_all()?;
        Ok(())
    });
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("cannot write {}", path.display()));
    }
    Ok(())
}

/// Writes named tensors atomically, in the format `path`'s extension names.
pub fn write_tensors(path: &Path, named: &[(String, Tensor)]) -> Result<()> {
    let format = Format::from_path(path)?;
    let cpu: Vec<(String, Tensor)> =
        named.iter().map(|(n, t)| (n.clone(), t.detach().to_device(Device::Cpu).contiguous())).collect();
    write_atomic(path, |tmp| {
        match format {
            Format::Ot => Tensor::save_multi(&cpu, tmp).map_err(|e| anyhow::anyhow!(first_line(e)))?,
            Format::Safetensors => {
                Tensor::write_safetensors(&cpu, tmp).map_err(|e| anyhow::anyhow!(first_line(e)))?
            }
            Format::Pth => pth::write(tmp, &cpu)?,
        }
        Ok(())
    })
}

/// Named tensors of a VarStore, sorted by name.
pub fn named_variables(vs: &VarStore) -> Vec<(String, Tensor)> {
    let mut named: Vec<_> = vs.variables().into_iter().collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    named
}

/// Compares a file's tensors with the model's variables; on any difference, an error that
/// lists the missing, unexpected and mis-shaped keys.
pub fn check_keys(
    path: &Path,
    expected: &BTreeMap<String, Vec<i64>>,
    found: &[(String, Tensor)],
) -> Result<()> {
    let found: BTreeMap<&str, Vec<i64>> = found.iter().map(|(n, t)| (n.as_str(), t.size())).collect();
    let missing: Vec<&str> = expected.keys().map(String::as_str).filter(|k| !found.contains_key(k)).collect();
    let unexpected: Vec<&str> = found.keys().copied().filter(|k| !expected.contains_key(*k)).collect();
    let misshaped: Vec<String> = expected
        .iter()
        .filter_map(|(k, want)| match found.get(k.as_str()) {
            Some(got) if got != want => Some(format!("{k} (file {got:?}, model {want:?})")),
            _ => None,
        })
        .collect();
    if missing.is_empty() && unexpected.is_empty() && misshaped.is_empty() {
        return Ok(());
    }
    let mut parts = vec![];
    for (what, list) in [
        ("missing", missing.iter().map(|s| s.to_string()).collect::<Vec<_>>()),
        ("unexpected", unexpected.iter().map(|s| s.to_string()).collect()),
        ("mis-shaped", misshaped),
    ] {
        if !list.is_empty() {
            parts.push(format!("{} {what}: {}", list.len(), list.join(", ")));
        }
    }
    bail!("{} does not match the model configuration: {}", path.display(), parts.join("; "))
}

/// Loads a weight file of any format into `vs`, after checking every key and shape.
pub fn load_weights(vs: &mut VarStore, path: &Path) -> Result<()> {
    let found = read_tensors(path)?;
    let expected: BTreeMap<String, Vec<i64>> =
        vs.variables().into_iter().map(|(n, t)| (n, t.size())).collect();
    check_keys(path, &expected, &found)?;
    copy_into(vs, found.iter().map(|(n, t)| (n, t)));
    Ok(())
}

/// Saves the VarStore's variables atomically in the format `path`'s extension names.
pub fn save_weights(vs: &VarStore, path: &Path) -> Result<()> {
    write_tensors(path, &named_variables(vs))
}

/// The names and shapes of the model a config describes, without running anything.
pub fn expected_shapes(cfg: &crate::config::ModelConfig) -> BTreeMap<String, Vec<i64>> {
    let vs = VarStore::new(Device::Cpu);
    let _model = crate::model::Dit::new(&vs.root(), cfg);
    vs.variables().into_iter().map(|(n, t)| (n, t.size())).collect()
}

/// Converts a weight file between formats (by extension), checking it against the model first.
pub fn convert(input: &Path, output: &Path, cfg: &crate::config::ModelConfig) -> Result<usize> {
    Format::from_path(output)?;
    let tensors = read_tensors(input)?;
    check_keys(input, &expected_shapes(cfg), &tensors)?;
    write_tensors(output, &tensors)?;
    Ok(tensors.len())
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

/// A model ready for sampling, and where its weights came from.
pub struct Loaded {
    pub config: crate::Config,
    pub vs: VarStore,
    pub model: crate::Dit,
    /// Class names in label order (empty when the checkpoint does not record them).
    pub classes: Vec<String>,
    /// One line for the user, e.g. "EMA weights of step 4000 from checkpoints/x.ot.state.safetensors".
    pub description: String,
}

impl Loaded {
    /// `--label`'s value: a label number, or a class name looked up in the checkpoint's
    /// classes; with its display text ("1 (red_panda)").
    pub fn resolve_label(&self, arg: &str) -> Result<(i64, String)> {
        let label_num = self.config.model.label_num;
        let label = match arg.parse::<i64>() {
            Ok(n) => n,
            Err(_) => match self.classes.iter().position(|c| c == arg) {
                Some(i) => i as i64,
                None if self.classes.is_empty() => bail!(
                    "--label {arg:?}: not a number, and the checkpoint records no class names; give a label in 0..{label_num}"
                ),
                None => {
                    bail!("--label {arg:?}: no such class; the checkpoint's classes are {}", self.classes.join(", "))
                }
            },
        };
        anyhow::ensure!(
            (0..label_num).contains(&label),
            "--label {label}: out of range, the model has {label_num} label(s) (0..={})",
            label_num - 1
        );
        let text = match self.classes.get(label as usize) {
            Some(name) => format!("{label} ({name})"),
            None => label.to_string(),
        };
        Ok((label, text))
    }
}

/// Loads a model for inference from a weight file (`.ot`, `.safetensors`, `.pth`) or a
/// training-state file. When a training state sits beside the weight file (or is named), its
/// config is used and, with `ema`, its EMA weights; otherwise the config comes from `config`
/// (or `./config.json`, or the original's defaults).
pub fn load_for_inference(path: &Path, config: Option<&Path>, ema: bool, device: Device) -> Result<Loaded> {
    let is_state = path.to_string_lossy().ends_with(".state.safetensors");
    let state_file = if is_state {
        Some(path.to_path_buf())
    } else {
        Some(state::state_path(path)).filter(|p| p.is_file())
    };
    if !path.is_file() {
        bail!("{}: no such checkpoint", path.display());
    }
    let Some(state_file) = state_file else {
        let config = crate::Config::resolve(config)?;
        let mut vs = VarStore::new(device);
        let model = crate::Dit::new(&vs.root(), &config.model);
        load_weights(&mut vs, path)?;
        let description = format!("weights from {}", path.display());
        return Ok(Loaded { config, vs, model, classes: vec![], description });
    };
    let st = state::load(&state_file)?;
    let config = match config {
        Some(c) => crate::Config::load(c)?,
        None => st.meta.config.clone(),
    };
    let vs = VarStore::new(device);
    let model = crate::Dit::new(&vs.root(), &config.model);
    let expected: BTreeMap<String, Vec<i64>> =
        vs.variables().into_iter().map(|(n, t)| (n, t.size())).collect();
    state::check_against(&state_file, &st, &expected)?;
    let step = st.meta.step;
    let description = match (ema, st.group("ema")) {
        (true, Some(weights)) => {
            copy_into(&vs, weights);
            format!("EMA weights of step {step} from {}", state_file.display())
        }
        _ if is_state => {
            copy_into(&vs, st.group("model").expect("checked by state::load"));
            format!("raw weights of step {step} from {}", state_file.display())
        }
        _ => {
            let found = read_tensors(path)?;
            check_keys(path, &expected, &found)?;
            copy_into(&vs, found.iter().map(|(n, t)| (n, t)));
            format!("weights from {} (config from {})", path.display(), state_file.display())
        }
    };
    Ok(Loaded { config, vs, model, classes: st.meta.classes.clone(), description })
}

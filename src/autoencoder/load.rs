//! Loading a weight file into a freshly built network, strictly: every key present, none extra,
//! every shape right ([`crate::checkpoint::check_keys`]). `.pth` goes through the project's own
//! weights-only reader (`src/checkpoint/pth/`, which refuses any pickle that would call
//! something other than the tensor rebuilders); `.safetensors` and `.ot` load too. Every error
//! is one line naming the file.

use std::path::Path;

use anyhow::{anyhow, Result};
use tch::{nn, Device};

use super::Variant;
use crate::checkpoint::{check_keys, copy_into, read_tensors, shapes};

/// Builds a network with `build` on a new VarStore on `device`, fills it from `path` and
/// freezes it. `part` ("encoder", "decoder") only words the error.
pub(super) fn load<T>(
    path: &Path,
    variant: Variant,
    part: &str,
    device: Device,
    build: impl FnOnce(&nn::Path) -> T,
) -> Result<T> {
    let mut vs = nn::VarStore::new(device);
    let net = build(&vs.root());
    // The reader's causes joined into its one line ("x.pth: not a readable .pth state_dict: …").
    let found = read_tensors(path).map_err(|e| anyhow!("{e:#}"))?;
    check_keys(path, &shapes(&vs), &found).map_err(|e| anyhow!("{e} (expected the {variant} {part})"))?;
    copy_into(&vs, found.iter().map(|(name, t)| (name, t)));
    vs.freeze();
    Ok(net)
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use tch::{Kind, Tensor};

    use super::*;
    use crate::autoencoder::{Decoder, Encoder};
    use crate::checkpoint::save_weights;

    /// A random taesd encoder saved as `dir/enc.<ext>` for each extension; with its VarStore.
    fn saved_encoder(dir: &Path, variant: Variant, exts: &[&str]) -> (nn::VarStore, Encoder, Vec<PathBuf>) {
        let vs = nn::VarStore::new(Device::Cpu);
        let enc = Encoder::new(&vs.root(), variant);
        let paths: Vec<PathBuf> = exts.iter().map(|ext| dir.join(format!("enc.{ext}"))).collect();
        for path in &paths {
            save_weights(&vs, path).unwrap();
        }
        (vs, enc, paths)
    }

    #[test]
    fn pth_and_safetensors_copies_compute_what_the_saved_network_computes() {
        let dir = tempfile::tempdir().unwrap();
        let (_vs, enc, paths) = saved_encoder(dir.path(), Variant::Taesd, &["pth", "safetensors"]);
        let x = Tensor::rand([1, 3, 16, 16], (Kind::Float, Device::Cpu));
        let want = enc.encode(&x);
        assert!(want.abs().max().double_value(&[]) > 0.0, "a zero output would prove nothing");
        for path in &paths {
            let loaded = Encoder::load(path, Variant::Taesd, Device::Cpu).unwrap();
            assert!(loaded.encode(&x).equal(&want), "{}", path.display());
        }
    }

    #[test]
    fn a_truncated_pth_file_is_refused_on_one_line_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let (_vs, _enc, paths) = saved_encoder(dir.path(), Variant::Taesd, &["pth"]);
        let bytes = std::fs::read(&paths[0]).unwrap();
        for keep in [bytes.len() / 2, bytes.len() - 30, 10] {
            let cut = dir.path().join(format!("cut{keep}.pth"));
            std::fs::write(&cut, &bytes[..keep]).unwrap();
            let err = Encoder::load(&cut, Variant::Taesd, Device::Cpu).expect_err("a truncated file loaded");
            let err = err.to_string();
            assert!(err.starts_with(&format!("{}: not a readable .pth", cut.display())), "{err}");
            assert!(!err.contains('\n'), "{err}");
        }
    }

    #[test]
    fn weights_of_another_variant_are_refused_naming_the_file_and_the_first_bad_shape() {
        let dir = tempfile::tempdir().unwrap();
        let (_vs, _enc, paths) = saved_encoder(dir.path(), Variant::Taesd, &["pth"]);
        let err = Encoder::load(&paths[0], Variant::Taef1, Device::Cpu).expect_err("loaded as taef1");
        let err = err.to_string();
        assert!(err.starts_with(&paths[0].display().to_string()), "{err}");
        let shapes = "2 mis-shaped (14.bias (file [4], model [16]), 14.weight (file [4, 64, 3, 3], model [16, 64, 3, 3]))";
        assert!(err.contains(shapes), "{err}");
        assert!(err.ends_with("(expected the taef1 encoder)") && !err.contains('\n'), "{err}");

        // taef2 has the GroupNorm branch: its 12 extra tensors are missing from a taesd file.
        let err = Encoder::load(&paths[0], Variant::Taef2, Device::Cpu).unwrap_err().to_string();
        assert!(err.contains("12 missing (11.pool.0.weight, 11.pool.1.bias,"), "{err}");
        // An encoder file is no decoder.
        let err = Decoder::load(&paths[0], Variant::Taesd, Device::Cpu).unwrap_err().to_string();
        assert!(err.contains(" missing (") && err.contains(" unexpected (") && !err.contains('\n'), "{err}");
    }
}

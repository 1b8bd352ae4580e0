//! PyTorch's default initialisation, draw for draw (docs/ORIGINAL.md §2): after the same seed,
//! `Dit::new` on the CPU holds exactly what the Python reference's constructor holds. One test
//! in its own process, because the random generator is global and other tests would draw from
//! it concurrently.

mod common;

use common::*;
use dit::Dit;
use tch::{nn::VarStore, Device};

#[test]
fn a_new_model_holds_what_pytorch_initialises_after_the_same_seed() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let settings = [
        (r#"{"img_size": 16, "patch_size": 4, "dit_num": 2, "head": 2, "label_num": 3, "emb_size": 16}"#, 5),
        (r#"{"img_size": 32, "patch_size": 4, "dit_num": 3, "head": 6, "label_num": 1, "emb_size": 64}"#, 12),
    ];
    for (i, (model, seed)) in settings.into_iter().enumerate() {
        let cfg = write_config(d, model);
        let m = model_config(model);
        let pth = d.join(format!("init{i}.pth"));
        golden(&["init", "--config", p(&cfg), "--seed", &seed.to_string(), "--out", p(&pth)]);
        let mut torch = VarStore::new(Device::Cpu);
        let _layout = Dit::new(&torch.root(), &m);
        dit::checkpoint::load_weights(&mut torch, &pth).unwrap();

        tch::manual_seed(seed);
        let rust = VarStore::new(Device::Cpu);
        let _dit = Dit::new(&rust.root(), &m);
        let torch = torch.variables();
        let rust = rust.variables();
        assert_eq!(rust.len(), torch.len(), "{model}");
        for (name, t) in &rust {
            let want = &torch[name];
            assert!(t.equal(want), "{model}: {name} differs by up to {}", max_abs_diff(t, want));
        }
    }
}

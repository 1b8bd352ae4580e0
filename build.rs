//! Links the binaries against the libtorch that `scripts/setup` installed (LIBTORCH, set by
//! `.cargo/config.toml`): a run path so they start without LD_LIBRARY_PATH, `libtorch_cuda`
//! kept with `--no-as-needed` so CUDA is really usable (docs/ORIGINAL.md §6), and the small C++
//! shim that writes `.pth` files with libtorch's own serializer.

use std::env;
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    println!("cargo:rerun-if-changed=src/checkpoint/pth/writer.cpp");
    println!("cargo:rerun-if-changed=src/torch_flags.cpp");
    let libtorch = env::var("LIBTORCH").unwrap_or_else(|_| {
        panic!("LIBTORCH is not set: run scripts/setup (it links the venv's torch as .libtorch)")
    });
    // Resolve the checkout's .libtorch link so the run path survives a moved checkout.
    let libtorch = PathBuf::from(&libtorch)
        .canonicalize()
        .unwrap_or_else(|_| panic!("LIBTORCH={libtorch} does not exist: run scripts/setup"));
    let lib = libtorch.join("lib");

    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    if lib.join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-L{}", lib.display());
        println!("cargo:rustc-link-arg=-ltorch_cuda");
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
    }

    // The shared photo set, for tests that read it in place: present on this project's
    // machines beside the checkout; without it those tests are reported as ignored.
    println!("cargo::rustc-check-cfg=cfg(dit_photos)");
    println!("cargo:rerun-if-env-changed=DIT_PHOTOS");
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let photos = env::var("DIT_PHOTOS")
        .map(PathBuf::from)
        .into_iter()
        .chain([manifest.join("../shared/datasets/pandas"), PathBuf::from("/work/shared/datasets/pandas")]);
    if let Some(dir) = photos.into_iter().find(|p| p.is_dir()) {
        println!("cargo:rustc-cfg=dit_photos");
        println!("cargo:rustc-env=DIT_PHOTOS={}", dir.display());
    }

    cc::Build::new()
        .cpp(true)
        .pic(true)
        .warnings(false)
        .include(libtorch.join("include"))
        .include(libtorch.join("include/torch/csrc/api/include"))
        .flag("-std=c++17")
        .flag("-D_GLIBCXX_USE_CXX11_ABI=1")
        .flag("-DGLOG_USE_GLOG_EXPORT")
        .file("src/checkpoint/pth/writer.cpp")
        .file("src/torch_flags.cpp")
        .compile("dit_pth_writer");
}

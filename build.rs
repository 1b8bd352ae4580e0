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
    println!("cargo:rerun-if-changed=src/profile.cpp");
    println!("cargo:rerun-if-changed=src/optim.cpp");
    println!("cargo:rerun-if-changed=src/ffi_guard.h");
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

    // The published tiny-autoencoder code and taef2 weights, read in place the same way by
    // tests/autoencoder.rs; without them its PyTorch comparisons are reported as ignored.
    println!("cargo::rustc-check-cfg=cfg(dit_taef2)");
    println!("cargo:rerun-if-env-changed=DIT_TAEF2");
    let taef2 = env::var("DIT_TAEF2")
        .map(PathBuf::from)
        .into_iter()
        .chain([manifest.join("../shared/models/taef2"), PathBuf::from("/work/shared/models/taef2")]);
    if let Some(dir) = taef2.into_iter().find(|p| p.join("taesd.py").is_file()) {
        println!("cargo:rustc-cfg=dit_taef2");
        println!("cargo:rustc-env=DIT_TAEF2={}", dir.display());
    }

    // LightningDiT's published model and transport, read in place the same way by
    // tests/lightning.rs; without them its exchange tests are reported as ignored.
    println!("cargo::rustc-check-cfg=cfg(dit_lightningdit)");
    println!("cargo:rerun-if-env-changed=DIT_LIGHTNINGDIT");
    let lightningdit = env::var("DIT_LIGHTNINGDIT").map(PathBuf::from).into_iter().chain([
        manifest.join("../shared/models/lightningdit"),
        PathBuf::from("/work/shared/models/lightningdit"),
    ]);
    if let Some(dir) = lightningdit.into_iter().find(|p| p.join("models/lightningdit.py").is_file()) {
        println!("cargo:rustc-cfg=dit_lightningdit");
        println!("cargo:rustc-env=DIT_LIGHTNINGDIT={}", dir.display());
    }

    cpp(&libtorch)
        .file("src/checkpoint/pth/writer.cpp")
        .file("src/torch_flags.cpp")
        .file("src/profile.cpp")
        .file("src/optim.cpp")
        .compile("dit_pth_writer");

    distributed(&libtorch);
}

/// A C++17 build against libtorch's headers, with the ABI and glog settings of the wheel.
fn cpp(libtorch: &std::path::Path) -> cc::Build {
    let mut b = cc::Build::new();
    b.cpp(true)
        .pic(true)
        .warnings(false)
        .include(libtorch.join("include"))
        .include(libtorch.join("include/torch/csrc/api/include"))
        .include("src")
        .flag("-std=c++17")
        .flag("-D_GLIBCXX_USE_CXX11_ABI=1")
        .flag("-DGLOG_USE_GLOG_EXPORT");
    b
}

/// The c10d shim of src/distributed, plus its NCCL part when the wheel has CUDA and the CUDA
/// headers ProcessGroupNCCL.hpp needs are found (see `cuda` below). The NCCL part is first
/// compiled on its own: if that fails, the build goes on with Gloo only and says why.
fn distributed(libtorch: &std::path::Path) {
    for path in ["c10d_shim.cpp", "nccl_shim.cpp", "gloo_decls"] {
        println!("cargo:rerun-if-changed=src/distributed/{path}");
    }
    println!("cargo:rerun-if-env-changed=CUDA_HOME");
    let mut build = cpp(libtorch);
    build
        .include("src/distributed/gloo_decls")
        .define("USE_C10D_GLOO", None)
        .file("src/distributed/c10d_shim.cpp");

    // The CUDA headers: CUDA_HOME's if set; else the venv's pip layout, the release torch was
    // built with, where scripts/setup adds crt/ and nv/ beside the runtime's and cuSPARSE's
    // headers; else a system toolkit in /usr/local/cuda.
    let toolkit_dirs = env::var("CUDA_HOME")
        .map(|h| PathBuf::from(h).join("include"))
        .into_iter()
        .chain([libtorch.join("../nvidia/cu13/include"), PathBuf::from("/usr/local/cuda/include")]);
    let cuda = toolkit_dirs
        .into_iter()
        .find(|d| ["crt/host_config.h", "nv/target", "cusparse.h"].iter().all(|f| d.join(f).exists()));
    let nccl = cuda
        .iter()
        .cloned()
        .chain([libtorch.join("../nvidia/nccl/include")])
        .find(|d| d.join("nccl.h").exists());
    if let (true, Some(cuda), Some(nccl)) = (libtorch.join("lib/libtorch_cuda.so").exists(), cuda, nccl) {
        let mut probe = cpp(libtorch);
        probe
            .include(&cuda)
            .include(&nccl)
            .define("USE_C10D_NCCL", None)
            .file("src/distributed/nccl_shim.cpp")
            .cargo_metadata(false);
        match probe.try_compile("dit_nccl_probe") {
            Ok(()) => {
                build
                    .include(cuda)
                    .include(nccl)
                    .define("USE_C10D_NCCL", None)
                    .define("DIT_WITH_NCCL", None)
                    .file("src/distributed/nccl_shim.cpp");
                // ProcessGroupNCCL is in libtorch_cuda (linked above); c10::cuda in libc10_cuda.
                println!("cargo:rustc-link-search=native={}", libtorch.join("lib").display());
                println!("cargo:rustc-link-lib=dylib=c10_cuda");
            }
            Err(e) => {
                println!("cargo:warning=the NCCL backend is left out: nccl_shim.cpp does not compile: {e}")
            }
        }
    }
    build.compile("dit_c10d_shim");
}

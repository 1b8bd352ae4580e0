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

    distributed(&libtorch);
}

/// The c10d shim of src/distributed, plus its NCCL part when the wheel has CUDA and a CUDA
/// toolkit's headers are found (CUDA_HOME, else /usr/local/cuda; the pip wheels' own
/// `nvidia/*/include` folders lack headers that ProcessGroupNCCL.hpp needs). The NCCL part is
/// first compiled on its own: if that fails, the build goes on with Gloo only and says why.
fn distributed(libtorch: &std::path::Path) {
    for path in ["c10d_shim.cpp", "nccl_shim.cpp", "gloo_decls"] {
        println!("cargo:rerun-if-changed=src/distributed/{path}");
    }
    println!("cargo:rerun-if-env-changed=CUDA_HOME");
    let base = || {
        let mut b = cc::Build::new();
        b.cpp(true)
            .pic(true)
            .warnings(false)
            .include(libtorch.join("include"))
            .include(libtorch.join("include/torch/csrc/api/include"))
            .flag("-std=c++17")
            .flag("-D_GLIBCXX_USE_CXX11_ABI=1")
            .flag("-DGLOG_USE_GLOG_EXPORT");
        b
    };
    let mut build = base();
    build
        .include("src/distributed/gloo_decls")
        .define("USE_C10D_GLOO", None)
        .file("src/distributed/c10d_shim.cpp");

    let cuda = env::var("CUDA_HOME").map(PathBuf::from).unwrap_or_else(|_| PathBuf::from("/usr/local/cuda"));
    let nccl = [cuda.join("include"), libtorch.join("../nvidia/nccl/include")]
        .into_iter()
        .find(|d| d.join("nccl.h").exists());
    let toolkit = cuda.join("include/crt/host_config.h").exists() && cuda.join("include/nv/target").exists();
    if let (true, true, Some(nccl)) = (libtorch.join("lib/libtorch_cuda.so").exists(), toolkit, nccl) {
        let mut probe = base();
        probe
            .include(cuda.join("include"))
            .include(&nccl)
            .define("USE_C10D_NCCL", None)
            .file("src/distributed/nccl_shim.cpp")
            .cargo_metadata(false);
        match probe.try_compile("dit_nccl_probe") {
            Ok(()) => {
                build
                    .include(cuda.join("include"))
                    .include(nccl)
                    .define("USE_C10D_NCCL", None)
                    .define("DIT_WITH_NCCL", None)
                    .file("src/distributed/nccl_shim.cpp");
            }
            Err(e) => {
                println!("cargo:warning=the NCCL backend is left out: nccl_shim.cpp does not compile: {e}")
            }
        }
    }
    build.compile("dit_c10d_shim");
}

//! `cargo xtask cuda-check`: builds every crate with `--features cuda` on a machine without a
//! GPU, with the CUDA compiler and headers from the Python package registry.
//!
//! The NVIDIA wheels of CUDA 13 (`nvidia-cuda-nvcc`, `-cuda-runtime`, `-cuda-nvrtc`, `-cublas`,
//! `-curand`, `-cuda-crt`, `-nvvm`, `-cuda-cccl`) are installed into a virtual environment under
//! the cache folder (never the repository), and their `bin/`, `include/` and `lib/` folders are
//! linked into one toolkit folder. (The CUDA 12 wheels, `nvidia-cuda-nvcc-cu12` 12.1-12.9, ship
//! `ptxas` but no `nvcc`.) cudarc 0.19 knows CUDA up to 13.4, so its bindings are pinned there
//! (`CUDARC_CUDA_VERSION=13040`) whatever newer toolkit the wheels bring.
//! The libraries are built against it for the compute capability given (`CUDA_COMPUTE_CAP`,
//! default 90: an H100/H200). Libraries only: the binaries link `libcuda`, which comes with a
//! driver, not with the wheels.

use crate::{option, run_command};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

const WHEELS: [&str; 8] = [
    "nvidia-cuda-nvcc",
    "nvidia-cuda-runtime",
    "nvidia-cuda-nvrtc",
    "nvidia-cublas",
    "nvidia-curand",
    "nvidia-cuda-crt",
    "nvidia-nvvm",
    "nvidia-cuda-cccl",
];

/// The newest CUDA cudarc 0.19 has bindings for.
const CUDARC_VERSION: &str = "13040";

/// The crates with a `cuda` feature, each built as a library.
const CRATES: [&str; 7] = [
    "r38-ops",
    "r38-model",
    "r38-data",
    "r38-seg",
    "r38-train",
    "r38",
    "r38-bench",
];

pub fn run(args: &[String]) -> Result<()> {
    let cache = option(args, "--cache")
        .map(PathBuf::from)
        .unwrap_or_else(default_cache);
    let compute_cap = compute_capability(args);
    let toolkit = install_toolkit(&cache)?;
    run_command(Command::new(toolkit.join("bin/nvcc")).arg("--version"))?;
    let builds = CRATES
        .iter()
        .map(|krate| (*krate, "cuda"))
        .chain([("r38-train", "nccl")]);
    let cargo = |args: &[&str]| -> Result<()> {
        eprintln!(
            "== cargo {} (compute capability {compute_cap})",
            args.join(" ")
        );
        let mut cmd = Command::new(env!("CARGO"));
        cmd.args(args)
            .current_dir(crate::root())
            .env("CARGO_TARGET_DIR", cache.join("target"));
        with_toolkit(&mut cmd, &toolkit, &compute_cap);
        run_command(&mut cmd)
    };
    for (krate, feature) in builds {
        cargo(&["build", "--lib", "-p", krate, "--features", feature])?;
    }
    // Binaries link libcuda, which only a driver brings: type-checked, not linked.
    cargo(&["check", "--bins", "-p", "r38-cli", "--features", "nccl"])?;
    cargo(&[
        "check",
        "--bins",
        "-p",
        "r38-bench",
        "-p",
        "xtask",
        "--features",
        "cuda",
    ])?;
    println!(
        "cuda-check: every crate with a `cuda` feature builds, and r38-train with `nccl` \
         (libraries, sm_{compute_cap}); the r38, r38-bench, r38-device-check and xtask \
         binaries type-check with `cuda` (r38 with `nccl`)"
    );
    Ok(())
}

/// `--compute-cap`, else `CUDA_COMPUTE_CAP`, else 90 (H100/H200).
pub fn compute_capability(args: &[String]) -> String {
    option(args, "--compute-cap")
        .or_else(|| std::env::var("CUDA_COMPUTE_CAP").ok())
        .unwrap_or_else(|| "90".into())
}

/// The environment candle's kernel build and cudarc need to find a toolkit folder (`bin/nvcc`,
/// `include/`, `lib64/`).
pub fn with_toolkit(cmd: &mut Command, toolkit: &Path, compute_cap: &str) {
    let path = format!(
        "{}:{}",
        toolkit.join("bin").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let lib = toolkit.join("lib64");
    cmd.env("CUDA_COMPUTE_CAP", compute_cap)
        .env("CUDARC_CUDA_VERSION", CUDARC_VERSION)
        .env("CUDA_ROOT", toolkit)
        .env("CUDA_PATH", toolkit)
        .env("CUDA_TOOLKIT_ROOT_DIR", toolkit)
        .env("PATH", &path)
        // nvcc finds only its own wheel's headers; the runtime's and cuBLAS's are elsewhere.
        .env(
            "NVCC_PREPEND_FLAGS",
            format!("-I{}", toolkit.join("include").display()),
        )
        .env("CPATH", toolkit.join("include"))
        .env("LIBRARY_PATH", &lib)
        .env("LD_LIBRARY_PATH", &lib);
}

pub fn default_cache() -> PathBuf {
    r38::output::cache_root().join("cuda")
}

/// The wheels in a venv under `cache`, merged into `cache/toolkit`.
pub fn install_toolkit(cache: &Path) -> Result<PathBuf> {
    let venv = cache.join("venv");
    let python = venv.join("bin/python");
    if !python.exists() {
        std::fs::create_dir_all(cache)
            .with_context(|| format!("{}: cannot create", cache.display()))?;
        run_command(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
    }
    run_command(
        Command::new(&python)
            .args(["-m", "pip", "install", "-q"])
            .args(WHEELS),
    )?;
    let site = Command::new(&python)
        .args([
            "-c",
            "import nvidia, os; print(os.path.dirname(nvidia.__path__[0]))",
        ])
        .output()
        .context("python")?;
    if !site.status.success() {
        bail!("the NVIDIA wheels installed no `nvidia` package");
    }
    let nvidia = PathBuf::from(String::from_utf8_lossy(&site.stdout).trim()).join("nvidia");
    let toolkit = cache.join("toolkit");
    let _ = std::fs::remove_dir_all(&toolkit);
    for (from, to) in [
        ("bin", "bin"),
        ("include", "include"),
        ("lib", "lib64"),
        ("nvvm", "nvvm"),
    ] {
        std::fs::create_dir_all(toolkit.join(to))?;
        for package in std::fs::read_dir(&nvidia)? {
            let dir = package?.path().join(from);
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries {
                let entry = entry?;
                let link = toolkit.join(to).join(entry.file_name());
                if !link.exists() {
                    std::os::unix::fs::symlink(entry.path(), &link)?;
                }
            }
        }
    }
    // The wheels ship `libfoo.so.12` only; the linker and cudarc look for `libfoo.so`.
    for entry in std::fs::read_dir(toolkit.join("lib64"))? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if let Some((stem, _)) = name.split_once(".so.") {
            let plain = toolkit.join("lib64").join(format!("{stem}.so"));
            if !plain.exists() {
                std::os::unix::fs::symlink(toolkit.join("lib64").join(&name), plain)?;
            }
        }
    }
    Ok(toolkit)
}

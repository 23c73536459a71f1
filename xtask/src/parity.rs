//! Full-size parity: MXNet computes the real-width networks from seeded weights, `r38 forward`
//! recomputes them from the same `.params` files, and the outputs are compared.

use crate::{option, reference, root, run_command, target_dir};
use anyhow::{bail, Context, Result};
use std::path::Path;
use std::process::Command;
use std::time::Instant;

const CASES: &[&str] = &["a1_cls224", "a1_s8_seg"];
/// Looser than the fixtures' 1e-5: MXNet's own fused and unfused paths differ by 6e-6 here.
const TOLERANCE: f32 = 1e-4;

pub fn run(args: &[String]) -> Result<()> {
    let python = reference::python(args)?;
    let out = option(args, "--out")
        .map(Into::into)
        .unwrap_or_else(|| target_dir().join("parity"));
    let only = option(args, "--only").unwrap_or_else(|| CASES.join(","));
    std::fs::create_dir_all(&out)?;

    run_command(
        Command::new("cargo")
            .args(["build", "--release", "-p", "r38-cli"])
            .current_dir(root()),
    )?;
    let r38 = target_dir().join("release/r38");

    let started = Instant::now();
    run_command(
        Command::new(&python)
            .arg(root().join("tools/mxnet_reference.py"))
            .args(["full", "--only", &only, "--out"])
            .arg(&out),
    )?;
    eprintln!(
        "MXNet references written in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let mut failures = Vec::new();
    for case in only.split(',') {
        let dir = out.join(case);
        run_command(
            Command::new(&r38)
                .arg("inspect")
                .arg(dir.join("weights.params")),
        )?;
        let started = Instant::now();
        let output = dir.join("r38_output.npy");
        run_command(
            Command::new(&r38)
                .arg("forward")
                .arg("--weights")
                .arg(dir.join("weights.params"))
                .arg("--input")
                .arg(dir.join("input.npy"))
                .arg("--output")
                .arg(&output)
                .arg("--overwrite"),
        )?;
        let seconds = started.elapsed().as_secs_f64();
        let (rel, abs, dims) = compare(&output, &dir.join("output.npy"))?;
        println!(
            "parity {case}: output {dims:?}, max |r38 - mxnet| = {abs:.3e}, relative to max |mxnet| = {rel:.3e} (tolerance {TOLERANCE:.0e}); r38 forward incl. loading {seconds:.1} s"
        );
        if rel.is_nan() || rel > TOLERANCE {
            failures.push(case.to_string());
        }
    }
    if !failures.is_empty() {
        bail!("full-size parity failed for {}", failures.join(", "));
    }
    Ok(())
}

fn compare(actual: &Path, expected: &Path) -> Result<(f32, f32, Vec<usize>)> {
    let read = |p: &Path| r38_data::npy::read_npy(p).with_context(|| format!("{}", p.display()));
    let (a, e) = (read(actual)?, read(expected)?);
    if a.dims() != e.dims() {
        bail!("shape {:?} differs from MXNet's {:?}", a.dims(), e.dims());
    }
    let abs: f32 = (&a - &e)?.abs()?.max_all()?.to_scalar()?;
    let scale: f32 = e.abs()?.max_all()?.to_scalar()?;
    Ok((abs / scale, abs, e.dims().to_vec()))
}

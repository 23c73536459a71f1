//! `cargo xtask bench`: the speed and memory benchmark (crates/r38-bench), built in release
//! (with the backend `--device` names); every option (`--vs-torch`, `--vs-ort`, `--engine
//! fast-kept`, ..) is passed to it as given.

use crate::{option, root, run_command, target_dir};
use anyhow::Result;
use std::process::Command;

pub fn run(args: &[String]) -> Result<()> {
    let mut build = Command::new("cargo");
    build
        .args(["build", "--release", "-p", "r38-bench"])
        .current_dir(root());
    match option(args, "--device").as_deref() {
        Some(d) if d.starts_with("cuda") => {
            build.args(["--features", "cuda"]);
        }
        Some("metal") => {
            build.args(["--features", "metal"]);
        }
        _ => {}
    }
    run_command(&mut build)?;
    run_command(Command::new(target_dir().join("release/r38-bench")).args(args))
}

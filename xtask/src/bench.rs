//! `cargo xtask bench`: the speed and memory benchmark (crates/r38-bench), built in release; every
//! option (`--vs-torch`, `--vs-ort`, `--engine fast-kept`, ..) is passed to it as given.

use crate::{root, run_command, target_dir};
use anyhow::Result;
use std::process::Command;

pub fn run(args: &[String]) -> Result<()> {
    run_command(
        Command::new("cargo")
            .args(["build", "--release", "-p", "r38-bench"])
            .current_dir(root()),
    )?;
    run_command(Command::new(target_dir().join("release/r38-bench")).args(args))
}

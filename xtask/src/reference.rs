//! The reference framework: the authors' MXNet, in a Python venv of its own.

use crate::{option, root, run_command};
use anyhow::{bail, Result};
use std::path::PathBuf;
use std::process::Command;

/// Where the reference interpreter is looked for: `--python`, `$R38_MXNET_PYTHON`, `.venv-ref`.
pub fn python(args: &[String]) -> Result<PathBuf> {
    if let Some(p) = option(args, "--python").or_else(|| std::env::var("R38_MXNET_PYTHON").ok()) {
        return Ok(PathBuf::from(p));
    }
    let venv = root().join(".venv-ref/bin/python");
    if venv.exists() {
        return Ok(venv);
    }
    bail!(
        "no MXNet interpreter: run `cargo xtask setup-reference`, or pass --python / set \
         R38_MXNET_PYTHON to a Python with mxnet==1.9.1 and numpy==1.23.5"
    )
}

pub fn setup(args: &[String]) -> Result<()> {
    let venv = option(args, "--venv")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join(".venv-ref"));
    run_command(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
    let pip = venv.join("bin/pip");
    // numpy must come second: mxnet 1.9.1 still uses np.bool, removed in numpy 1.24.
    run_command(Command::new(&pip).args(["install", "-q", "mxnet==1.9.1"]))?;
    run_command(Command::new(&pip).args(["install", "-q", "numpy==1.23.5", "pillow"]))?;
    run_command(
        Command::new(venv.join("bin/python"))
            .args(["-c", "import mxnet; print('mxnet', mxnet.__version__)"]),
    )?;
    Ok(())
}

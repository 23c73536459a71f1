//! Interleaved timing across processes.
//!
//! Every engine of a case (r38's, PyTorch, onnxruntime) runs in a process of its own, so that
//! its peak RSS is its own, but their repetitions alternate: each worker builds its network,
//! warms up and says `READY`; the parent then asks every worker in turn for one repetition
//! (`rep` on its stdin, a `REP {json}` line back) until each has done all of them, and finally
//! sends `end`, on which the worker writes its output and prints its result line
//! (`tools/bench_worker.py` is the same protocol in Python). A change in
//! the machine's load (the host is shared) thus hits every engine alike instead of whichever
//! ran at the time. Only one worker computes at any moment; the others wait on their stdin.

use anyhow::{bail, Context, Result};
use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

pub const READY: &str = "READY";
pub const REP_TAG: &str = "REP ";

/// The worker side: after `READY`, one `run()` per `rep` line (its result sent back as the
/// `REP` payload); returns on `end`.
pub fn serve(mut run: impl FnMut() -> Result<Value>) -> Result<()> {
    println!("{READY}");
    std::io::stdout().flush()?;
    let stdin = std::io::stdin();
    for line in stdin.lock().lines() {
        match line?.trim() {
            "rep" => {
                let r = run()?;
                println!("{REP_TAG}{r}");
                std::io::stdout().flush()?;
            }
            "end" => return Ok(()),
            other => bail!("worker: unexpected command {other:?}"),
        }
    }
    bail!("worker: stdin closed before `end`")
}

/// The parent side of one worker process.
pub struct Worker {
    pub label: String,
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Worker {
    /// Start `cmd` and wait until it has built and warmed up (so set-ups never overlap).
    pub fn start(label: &str, mut cmd: Command) -> Result<Worker> {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting {cmd:?}"))?;
        let stdin = child.stdin.take().context("worker stdin")?;
        let stdout = BufReader::new(child.stdout.take().context("worker stdout")?);
        let mut w = Worker {
            label: label.to_string(),
            child,
            stdin,
            stdout,
        };
        w.read_until(|l| (l == READY).then_some(()))?;
        Ok(w)
    }

    /// One timed repetition; its `REP` payload.
    pub fn rep(&mut self) -> Result<Value> {
        writeln!(self.stdin, "rep")?;
        self.stdin.flush()?;
        let line = self.read_until(|l| l.strip_prefix(REP_TAG).map(str::to_string))?;
        Ok(serde_json::from_str(&line)?)
    }

    /// Ask the worker to finish; the JSON after `tag` on its last lines.
    pub fn finish(mut self, tag: &str) -> Result<Value> {
        writeln!(self.stdin, "end")?;
        self.stdin.flush()?;
        let line = self.read_until(|l| l.strip_prefix(tag).map(str::to_string))?;
        let status = self.child.wait()?;
        if !status.success() {
            bail!("{} exited with {status}", self.label);
        }
        Ok(serde_json::from_str(&line)?)
    }

    fn read_until<T>(&mut self, mut pick: impl FnMut(&str) -> Option<T>) -> Result<T> {
        let mut line = String::new();
        loop {
            line.clear();
            if self.stdout.read_line(&mut line)? == 0 {
                let status = self.child.wait()?;
                bail!("{} ended early ({status})", self.label);
            }
            if let Some(v) = pick(line.trim_end()) {
                return Ok(v);
            }
            // Anything else the worker prints goes to our stderr.
            eprint!("   [{}] {line}", self.label);
        }
    }
}

/// Every worker's repetitions, in rounds: in round `r` the workers start at `r mod count`, so
/// none always runs right after the same other one.
pub fn interleave(workers: &mut [Worker], reps: usize) -> Result<Vec<Vec<Value>>> {
    let n = workers.len();
    let mut out = vec![Vec::new(); n];
    for r in 0..reps.max(1) {
        for k in 0..n {
            let i = (r + k) % n;
            out[i].push(workers[i].rep()?);
        }
    }
    Ok(out)
}

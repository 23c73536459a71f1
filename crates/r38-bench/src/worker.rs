//! Interleaved timing across processes.
//!
//! Every engine of a case (r38's, PyTorch, onnxruntime) runs in a process of its own, so that
//! its peak RSS is its own, but their repetitions alternate: each worker builds its network,
//! warms up and says `READY`; the parent then asks every worker in turn for one repetition
//! (`rep` on its stdin, a `REP {json}` line back) until each has done all of them, and finally
//! sends `end`, on which the worker writes its output and prints its result line
//! (`tools/bench_worker.py` is the same protocol in Python). A change in
//! the machine's load (the host is shared) thus hits every engine alike instead of whichever
//! ran at the time. Only one worker computes at any moment; the others wait on their stdin,
//! and the next repetition waits until the last worker's threads have gone idle.

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

    /// One timed repetition; its `REP` payload. Returns once the worker has gone idle.
    pub fn rep(&mut self) -> Result<Value> {
        writeln!(self.stdin, "rep")?;
        self.stdin.flush()?;
        let line = self.read_until(|l| l.strip_prefix(REP_TAG).map(str::to_string))?;
        self.wait_until_idle();
        Ok(serde_json::from_str(&line)?)
    }

    /// Wait (at most a second) until the worker's threads stop using the CPU. A runtime's
    /// threads may spin on after its answer (onnxruntime's intra-op pool does by default), and
    /// would take a core from the next worker's first layers: r38's stem took 7.6-8.8 ms
    /// right after onnxruntime's repetitions against 2.4-2.8 ms after another r38 process.
    fn wait_until_idle(&self) {
        let Some(mut last) = cpu_ticks(self.child.id()) else {
            return;
        };
        let mut quiet = 0;
        for _ in 0..100 {
            std::thread::sleep(std::time::Duration::from_millis(10));
            let Some(now) = cpu_ticks(self.child.id()) else {
                return;
            };
            quiet = if now == last { quiet + 1 } else { 0 };
            // Three polls in a row without a clock tick (10 ms each) of CPU time.
            if quiet == 3 {
                return;
            }
            last = now;
        }
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

/// User plus system CPU time of every thread of process `pid`, in clock ticks (Linux).
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces), from field 3 on.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let (utime, stime) = (fields.get(11)?, fields.get(12)?);
    Some(utime.parse::<u64>().ok()? + stime.parse::<u64>().ok()?)
}

/// Every worker's repetitions, in rounds whose orders form a Williams design (below): every
/// worker runs right after every other one equally often, so that none keeps inheriting the
/// same predecessor's after-effects (in plain rotations r38's first engine ran right after
/// onnxruntime in three rounds of four).
pub fn interleave(workers: &mut [Worker], reps: usize) -> Result<Vec<Vec<Value>>> {
    let n = workers.len();
    let mut out = vec![Vec::new(); n];
    for r in 0..reps.max(1) {
        for i in round_order(r, n) {
            out[i].push(workers[i].rep()?);
        }
    }
    Ok(out)
}

/// The workers' order in round `r` of [`interleave`]: the rows of a Williams design, where
/// within every `n` rounds (`2n` for odd `n`) each ordered pair of workers is adjacent
/// equally often. Row `r` adds `r` to `0, 1, n-1, 2, n-2, ..`; for odd `n` the second `n`
/// rows are the first `n` reversed.
fn round_order(r: usize, n: usize) -> Vec<usize> {
    let base = (0..n).map(|k| {
        if k % 2 == 1 {
            k.div_ceil(2)
        } else {
            (n - k / 2) % n
        }
    });
    let mut order: Vec<usize> = base.map(|b| (b + r) % n).collect();
    if n % 2 == 1 && (r / n) % 2 == 1 {
        order.reverse();
    }
    order
}

#[cfg(test)]
mod tests {
    use super::round_order;

    #[test]
    fn every_worker_follows_every_other_equally_often() {
        for n in 1..=6 {
            let rounds = if n % 2 == 0 { n } else { 2 * n };
            let mut after = vec![vec![0; n]; n];
            for r in 0..rounds {
                let order = round_order(r, n);
                let mut sorted = order.clone();
                sorted.sort_unstable();
                assert_eq!(
                    sorted,
                    (0..n).collect::<Vec<_>>(),
                    "each worker once a round"
                );
                for w in order.windows(2) {
                    after[w[1]][w[0]] += 1;
                }
            }
            // n - 1 adjacent pairs a round, n (n - 1) ordered pairs.
            let times = rounds / n;
            for (b, row) in after.iter().enumerate() {
                for (a, &count) in row.iter().enumerate() {
                    let expected = if a == b { 0 } else { times };
                    assert_eq!(count, expected, "{n} workers: {b} after {a}");
                }
            }
        }
    }
}

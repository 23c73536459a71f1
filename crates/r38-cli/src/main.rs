//! `r38`: classify, inspect, convert and run ResNet-38 weight files without Python or MXNet.

mod commands;
mod network;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "r38",
    version,
    about = "ResNet-38 (\"Wider or Deeper\") in Rust"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Classify and segment the shipped samples with the shipped small models.
    Demo(commands::demo::Args),
    Inspect(commands::inspect::Args),
    Convert(commands::convert::Args),
    /// Print a Hugging Face model card (README.md) for a file written by `r38 convert`.
    Card(commands::card::Args),
    Forward(commands::forward::Args),
    Classify(commands::classify::Args),
    Segment(commands::segment::Args),
    Eval(commands::eval::Args),
    /// Fine-tune a segmentation net with the authors' recipe.
    TrainSeg(commands::train_seg::Args),
    /// Train a classifier with the authors' ImageNet recipe.
    TrainCls(commands::train_cls::Args),
}

fn main() -> std::process::ExitCode {
    // Like other Unix tools, end quietly when the reader of our output goes away (`| head`).
    #[cfg(unix)]
    // SAFETY: restoring the default disposition of SIGPIPE before any thread is started.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        // Past the file-size limit, fail the write (EFBIG) so its temporary is removed,
        // instead of dying with a `.partial` file left behind.
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }
    r38_ops::engine::allocator::keep_freed_memory();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Demo(a) => commands::demo::run(a),
        Command::Inspect(a) => commands::inspect::run(a),
        Command::Convert(a) => commands::convert::run(a),
        Command::Card(a) => commands::card::run(a),
        Command::Forward(a) => commands::forward::run(a),
        Command::Classify(a) => commands::classify::run(a),
        Command::Segment(a) => commands::segment::run(a),
        Command::Eval(a) => commands::eval::run(a),
        Command::TrainSeg(a) => commands::train_seg::run(a),
        Command::TrainCls(a) => commands::train_cls::run(a),
    };
    if std::env::var_os("R38_REPORT_PEAK_RSS").is_some() {
        report_peak_rss();
    }
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // Messages quote names from the files read; show their control characters.
            let message = format!("{e:#}");
            let lines: Vec<_> = message
                .lines()
                .map(r38_model::escape_for_terminal)
                .collect();
            eprintln!("error: {}", lines.join("\n"));
            std::process::ExitCode::FAILURE
        }
    }
}

/// For benchmarks: the process's peak resident set size, as the kernel counts it.
fn report_peak_rss() {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    if let Some(line) = status.lines().find(|l| l.starts_with("VmHWM:")) {
        eprintln!("r38: peak RSS {}", line.trim_start_matches("VmHWM:").trim());
    }
}

//! `r38`: classify, inspect, convert and run ResNet-38 weight files without Python or MXNet.

// The doc comments of the argument structs are `--help` text, written for a terminal
// (`hf://OWNER/REPO/FILE`, `cuda[:N]`, `linear<C>`), not rustdoc markup.
#![allow(rustdoc::invalid_html_tags, rustdoc::broken_intra_doc_links)]

mod assets;
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
    /// More log output on stderr: -v info, -vv debug, -vvv trace (RUST_LOG overrides).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
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
    /// Class activation maps of a psa-style classifier with psa's protocol.
    Cam(commands::cam::Args),
    Eval(commands::eval::Args),
    /// Merge the --json reports of `r38 eval --shard I/N` runs into the whole split's.
    EvalMerge(commands::eval_merge::Args),
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
    init_logging(cli.verbose);
    let result = match cli.command {
        Command::Demo(a) => commands::demo::run(a),
        Command::Inspect(a) => commands::inspect::run(a),
        Command::Convert(a) => commands::convert::run(a),
        Command::Card(a) => commands::card::run(a),
        Command::Forward(a) => commands::forward::run(a),
        Command::Classify(a) => commands::classify::run(a),
        Command::Segment(a) => commands::segment::run(a),
        Command::Cam(a) => commands::cam::run(a),
        Command::Eval(a) => commands::eval::run(a),
        Command::EvalMerge(a) => commands::eval_merge::run(a),
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

/// Log spans and events of the libraries (weight loading, protocol passes, training steps,
/// evaluation) to stderr; warnings only unless `-v` or `RUST_LOG` ask for more.
fn init_logging(verbose: u8) {
    use tracing_subscriber::EnvFilter;
    let level = match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}

/// For benchmarks: the process's peak resident set size, as the kernel counts it.
fn report_peak_rss() {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    if let Some(line) = status.lines().find(|l| l.starts_with("VmHWM:")) {
        eprintln!("r38: peak RSS {}", line.trim_start_matches("VmHWM:").trim());
    }
}

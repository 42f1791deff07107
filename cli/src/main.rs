//! `statestream`: the demo node and the offline tools that read, verify and
//! replay the block files a file streamer writes.
//!
//! Every subcommand lives in its own module; this file parses the command
//! line, sets up logging and turns every error into one line on stderr and a
//! non-zero exit code (see [`EXIT_CODES`]). A panic, too, becomes one line
//! and exit 1 (see `install_panic_hook`).

mod admin;
mod bench;
mod blocks;
mod config_cmd;
mod cosmos;
mod credentials;
mod cursors;
mod dump;
mod ingest_files;
mod init;
mod logging;
mod node;
mod relay;
mod replay;
mod replica;
mod signals;
mod stats;
mod subscribe;
mod subscriptions;
mod tail;
mod verify;
mod workload;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{CommandFactory, Parser, Subcommand};

/// The exit codes, as `--help` and the man page show them.
const EXIT_CODES: &str = "\
Exit codes:
  0    success (verify: every check passed)
  1    a failure: bad configuration, missing or corrupt block files, ...
       (verify: the blocks are not whole, or some cannot be shown whole;
       the first bad file is named)
  2    a usage error (unknown flag, missing argument, bad value);
       verify: the check could not be made (missing directory, no block
       files, unreadable file)
  130  node: stopped at once by a second SIGINT or SIGTERM";

/// Streams the state changes of a key/value store, block by block; reads,
/// verifies and replays the block files.
#[derive(Debug, Parser)]
#[command(
    name = "statestream",
    version,
    propagate_version = true,
    after_help = EXIT_CODES
)]
struct Cli {
    /// Only log errors and print no progress bar or human summary
    /// (RUST_LOG, when set, decides the log level).
    #[arg(long, short, global = true, conflicts_with = "verbose")]
    quiet: bool,

    /// Log more: -v one level more (node: debug; other commands: info),
    /// -vv two (RUST_LOG, when set, decides the log level).
    #[arg(long, short, global = true, action = clap::ArgAction::Count)]
    verbose: u8,

    /// The format of the log lines on stderr. Colours only on a terminal,
    /// and never when NO_COLOR is set.
    #[arg(
        long,
        global = true,
        value_enum,
        value_name = "FORMAT",
        default_value_t
    )]
    log_format: logging::LogFormat,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the demo node: a deterministic workload on the real store,
    /// streamed per app.toml. SIGINT or SIGTERM stop it after the current
    /// block.
    Node(node::NodeArgs),
    /// Manages the node's credentials (scoped access to its serve
    /// streamers), through its admin API or offline on its store.
    Credentials(credentials::CredentialsArgs),
    /// Manages run-time webhook subscriptions through the node's admin API
    /// (see docs/subscriptions.md).
    Subscriptions(subscriptions::SubscriptionsArgs),
    /// A Cosmos SDK (v0.50+) ABCI listener plugin, launched by the chain's
    /// node (COSMOS_SDK_ABCI): streams the chain's blocks per
    /// HOME/config/app.toml. See docs/cosmos.md.
    CosmosPlugin(cosmos::CosmosPluginArgs),
    /// Follow a Cosmos SDK (v0.46/v0.47) file streamer's directory
    /// (block-N-data, block-N-meta) into a replica under HOME, streamed
    /// per HOME/config/app.toml. SIGINT or SIGTERM stop it after the
    /// current block. See docs/cosmos.md.
    IngestFiles(ingest_files::IngestFilesArgs),
    /// Follow another statestream's `serve` (a node or a relay), check
    /// every block against its hashes and serve it again, per
    /// HOME/config/app.toml ([relay] upstreams). See docs/relay.md.
    Relay(relay::RelayArgs),
    /// Write a commented default HOME/config/app.toml.
    Init(init::InitArgs),
    /// Check an app.toml without starting anything (`config check`).
    Config(config_cmd::ConfigArgs),
    /// Print the records of block files.
    Dump(dump::DumpArgs),
    /// Check block files: contiguous heights, complete files, records,
    /// CRCs and per-store hash chains.
    Verify(verify::VerifyArgs),
    /// Rebuild the state from block files into a new store.
    Replay(replay::ReplayArgs),
    /// Print one line per block, optionally waiting for new ones.
    Tail(tail::TailArgs),
    /// Per-store counts and a per-block size histogram.
    Stats(stats::StatsArgs),
    /// List the streamers' cursors a node's store holds; delete one.
    Cursors(cursors::CursorsArgs),
    /// Follow a `serve` streamer over gRPC: one line per change and per
    /// block end; resumes by height.
    Subscribe(subscribe::SubscribeArgs),
    /// Measure how fast the demo node commits and streams, and how fast
    /// the blocks read back.
    Bench(bench::BenchArgs),
    /// Print a shell completion script on stdout, e.g.
    /// `statestream completions bash > /etc/bash_completion.d/statestream`.
    Completions(CompletionsArgs),
    /// Write man pages (statestream.1 and one per subcommand) to a
    /// directory.
    Man(ManArgs),
}

#[derive(Debug, clap::Args)]
struct CompletionsArgs {
    /// The shell.
    #[arg(value_enum)]
    shell: clap_complete::Shell,
}

#[derive(Debug, clap::Args)]
struct ManArgs {
    /// Where to write the pages (created when missing).
    #[arg(long, value_name = "DIR", default_value = ".")]
    out_dir: PathBuf,
}

fn main() -> ExitCode {
    install_panic_hook();
    match run() {
        Ok(code) => code,
        // A closed pipe (`statestream dump DIR | head`) is not a failure.
        Err(error) if is_broken_pipe(&error) => ExitCode::SUCCESS,
        Err(error) => {
            report(&chain(&error));
            ExitCode::FAILURE
        }
    }
}

/// A panic is a bug (ours, or of a library such as redb on a corrupt
/// database file), but the user still gets one line on stderr and exit 1, not
/// a backtrace. The process exits from the hook, whichever thread panicked:
/// everything committed is in the store, which is crash safe, so stopping
/// here is no worse than a crash (a restart resumes from the cursors).
fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let payload = info.payload();
        let message = payload
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
            .unwrap_or("a panic without a message");
        let location = info
            .location()
            .map(|l| format!(" (at {}:{})", l.file(), l.line()))
            .unwrap_or_default();
        report(&format!("internal error: {message}{location}"));
        std::process::exit(1);
    }));
}

fn run() -> anyhow::Result<ExitCode> {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return Ok(usage_error(e)),
    };
    let default_level = match cli.command {
        Command::Node(_)
        | Command::CosmosPlugin(_)
        | Command::IngestFiles(_)
        | Command::Relay(_) => "info",
        _ => "warn",
    };
    logging::init(
        logging::level(default_level, cli.quiet, cli.verbose),
        cli.log_format,
    );
    match cli.command {
        Command::Node(args) => node::run(args, cli.quiet),
        Command::Credentials(args) => credentials::run(args),
        Command::Subscriptions(args) => subscriptions::run(args),
        Command::CosmosPlugin(args) => cosmos::run(args),
        Command::IngestFiles(args) => ingest_files::run(args),
        Command::Relay(args) => relay::run(args),
        Command::Init(args) => init::run(args, cli.quiet),
        Command::Config(args) => config_cmd::run(args, cli.quiet),
        Command::Completions(args) => {
            let mut out = std::io::stdout().lock();
            clap_complete::generate(args.shell, &mut Cli::command(), "statestream", &mut out);
            out.flush()?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Man(args) => man(&args, cli.quiet),
        Command::Dump(args) => dump::run(args),
        Command::Verify(args) => verify::run(args, cli.quiet),
        Command::Replay(args) => replay::run(args, cli.quiet),
        Command::Tail(args) => tail::run(args),
        Command::Stats(args) => stats::run(args),
        Command::Cursors(args) => cursors::run(args),
        Command::Subscribe(args) => subscribe::run(args),
        Command::Bench(args) => bench::run(args, cli.quiet),
    }
}

/// Writes the man pages generated from the clap definition.
fn man(args: &ManArgs, quiet: bool) -> anyhow::Result<ExitCode> {
    std::fs::create_dir_all(&args.out_dir)
        .with_context(|| format!("cannot create {}", args.out_dir.display()))?;
    clap_mangen::generate_to(Cli::command(), &args.out_dir)
        .with_context(|| format!("cannot write the man pages to {}", args.out_dir.display()))?;
    if !quiet {
        println!(
            "wrote {} (and statestream-SUBCOMMAND.1 for each subcommand)",
            args.out_dir.join("statestream.1").display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// The error and its causes joined by ": ", leaving out a cause whose text
/// its parent already shows (several library errors print their source).
fn chain(error: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if !out.contains(&text) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&text);
        }
    }
    out
}

fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error.chain().any(|e| {
        e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// Prints one error line on stderr. Messages that span lines (a few library
/// errors do) are folded into one.
fn report(message: &str) {
    let line = message.split_whitespace().collect::<Vec<_>>().join(" ");
    let _ = writeln!(std::io::stderr().lock(), "statestream: error: {line}");
}

/// Help and version go to stdout with exit 0; a usage error becomes one line
/// on stderr and exit 2.
fn usage_error(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(
        e.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        let _ = e.print();
        return if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
            ExitCode::from(2)
        } else {
            ExitCode::SUCCESS
        };
    }
    // clap renders "error: ...", then indented details, then a usage block:
    // keep what comes before the usage, on one line.
    let rendered = e.render().to_string();
    let message = rendered
        .lines()
        .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    let message = message.strip_prefix("error: ").unwrap_or(&message);
    report(&format!("{message} (see `statestream --help`)"));
    ExitCode::from(2)
}

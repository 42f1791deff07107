//! `statestream config check`: parses and validates an app.toml as the node
//! would, without starting anything.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use statestream::{Registry, StreamerContext};
use statestream_config::StreamerSpec;
use statestream_file::{FILE_TYPE, FileStreamerConfig};
use statestream_nats::{NATS_TYPE, NatsStreamerConfig};
use statestream_store::StoreKey;

use crate::node::{ConfigSource, registry};
use crate::workload::STORE_NAMES;

#[derive(Debug, clap::Args)]
pub struct ConfigArgs {
    #[command(subcommand)]
    command: ConfigCommand,
}

#[derive(Debug, clap::Subcommand)]
enum ConfigCommand {
    /// Parse and validate an app.toml as `statestream node` would, without
    /// starting anything: exit 0, or 1 with the errors on stderr.
    Check(CheckArgs),
}

#[derive(Debug, clap::Args)]
struct CheckArgs {
    /// Check the configuration the node of this home runs on:
    /// HOME/config/app.toml, or the built-in default when it is missing.
    /// Relative paths of the configuration are under HOME.
    #[arg(long, value_name = "DIR", conflicts_with = "file")]
    home: Option<PathBuf>,

    /// The app.toml to check. Relative paths in it are taken as under the
    /// directory above its `config/` directory (a node's home), else under
    /// the current directory. Without FILE or --home: the built-in default.
    #[arg(value_name = "FILE")]
    file: Option<PathBuf>,
}

pub fn run(args: ConfigArgs, quiet: bool) -> Result<ExitCode> {
    match args.command {
        ConfigCommand::Check(args) => check(args, quiet),
    }
}

fn check(args: CheckArgs, quiet: bool) -> Result<ExitCode> {
    let (source, home) = match (&args.file, &args.home) {
        (Some(file), _) => (ConfigSource::Flag(file.clone()), home_of(file)?),
        (None, Some(home)) => (ConfigSource::locate(None, home), home.clone()),
        (None, None) => (
            ConfigSource::BuiltIn,
            std::env::current_dir().context("cannot read the current directory")?,
        ),
    };
    let config = source.load()?;
    let specs = config.resolve(&STORE_NAMES)?;
    let registry = registry();
    let scratch = tempfile::tempdir().context("cannot create a temporary directory")?;
    let errors: Vec<String> = specs
        .iter()
        .filter_map(|spec| check_streamer(spec, &registry, &home, scratch.path()).err())
        .collect();
    if !errors.is_empty() {
        for error in &errors {
            crate::report(error);
        }
        return Ok(ExitCode::FAILURE);
    }
    if !quiet {
        let names: Vec<&str> = specs.iter().map(|spec| spec.name.as_str()).collect();
        let mut line = format!(
            "ok: {}: {} streamers run ({})",
            source.origin().display(),
            specs.len(),
            if names.is_empty() {
                "none".to_owned()
            } else {
                names.join(", ")
            }
        );
        if let Some(telemetry) = config.telemetry() {
            line.push_str(&format!("; telemetry on {}", telemetry.address));
        }
        if !config.warnings().is_empty() {
            line.push_str(&format!("; {} warnings", config.warnings().len()));
        }
        println!("{line}");
    }
    Ok(ExitCode::SUCCESS)
}

/// The home a config file belongs to: `HOME` for `HOME/config/app.toml`,
/// else the current directory.
fn home_of(file: &Path) -> Result<PathBuf> {
    let parent = file.parent().filter(|p| !p.as_os_str().is_empty());
    match parent {
        Some(dir) if dir.file_name().is_some_and(|name| name == "config") => {
            Ok(dir.parent().unwrap_or(Path::new(".")).to_path_buf())
        }
        _ => std::env::current_dir().context("cannot read the current directory"),
    }
}

/// Checks one streamer's options as its type does when the node builds it,
/// with no effect outside `scratch`: a file streamer is built on a scratch
/// directory (its `write_dir` is only checked to be a directory when it
/// exists), a NATS streamer's options are checked without connecting, and
/// every other type is built (a `process` streamer starts its program only
/// with the first block).
fn check_streamer(
    spec: &StreamerSpec,
    registry: &Registry,
    home: &Path,
    scratch: &Path,
) -> Result<(), String> {
    let stores = spec
        .stores
        .iter()
        .map(|name| StoreKey::new(name))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    let ctx = StreamerContext {
        name: &spec.name,
        stores: &stores,
        all_stores: &stores,
        home,
        reader: None,
        shutdown: &statestream_core::Shutdown::default(),
        push: None,
    };
    let built = |type_name: &str| {
        registry
            .build(type_name, &ctx, &spec.options)
            .map(drop)
            .map_err(|e| crate::chain(&anyhow::Error::new(e)))
    };
    match spec.type_name.as_str() {
        FILE_TYPE if registry.contains(FILE_TYPE) => {
            let mut config: FileStreamerConfig = spec.options.parse().map_err(|e| e.to_string())?;
            let write_dir = home.join(&config.write_dir);
            if write_dir.exists() && !write_dir.is_dir() {
                return Err(spec
                    .options
                    .error(
                        "write_dir",
                        format!("{} is not a directory", write_dir.display()),
                    )
                    .to_string());
            }
            config.write_dir = scratch.join(&spec.name);
            config
                .build(&ctx, &spec.options)
                .map(drop)
                .map_err(|e| crate::chain(&anyhow::Error::new(e)))
        }
        NATS_TYPE if registry.contains(NATS_TYPE) => {
            let config: NatsStreamerConfig = spec.options.parse().map_err(|e| e.to_string())?;
            config
                .check()
                .map_err(|(key, message)| spec.options.error(key, message).to_string())
        }
        other => built(other),
    }
}

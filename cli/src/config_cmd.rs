//! `statestream config check`: parses and validates an app.toml as the node
//! would, without starting anything: only the registry's validators run,
//! which bind no port, create nothing and start no program.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use statestream::TelemetryOptions;
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
    let all_stores = STORE_NAMES
        .iter()
        .map(|name| StoreKey::new(name))
        .collect::<Result<Vec<_>, _>>()?;
    let mut errors: Vec<String> = registry()
        .validate(&specs, &all_stores, &home)
        .into_iter()
        .map(|e| crate::chain(&anyhow::Error::new(e)))
        .collect();
    // `[admin]`'s TLS files: read as the server will at start.
    if let Some(tls) = config.admin().and_then(|admin| admin.tls.as_ref())
        && let Err((file, error)) = crate::admin::tls_files(tls, &home).check()
    {
        errors.push(format!(
            "{}: [admin]: {}: {error}",
            source.origin().display(),
            file.key()
        ));
    }
    // `[telemetry]`'s TLS files: read as the server will at start.
    if let Some(telemetry) = config.telemetry()
        && let Err(e) = TelemetryOptions::from_config_in(telemetry, &home).check_tls()
    {
        errors.push(crate::chain(
            &anyhow::Error::new(e).context(format!("{}: [telemetry]", source.origin().display())),
        ));
    }
    // [relay.nats] and the JetStream upstreams, by the nats streamer's rules.
    if let Some(relay) = config.relay()
        && let Err(e) = crate::relay::nats::check(relay)
    {
        errors.push(format!("{}: {e}", source.origin().display()));
    }
    // `[admin] token_file`: read as the node will at start (never shown).
    if let Some(admin) = config.admin()
        && let Err(e) = statestream_admin::read_token_file(&home.join(&admin.token_file))
    {
        errors.push(crate::chain(&anyhow::Error::new(e).context(format!(
            "{}: [admin] key `token_file`",
            source.origin().display()
        ))));
    }
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
        if let Some(relay) = config.relay() {
            line.push_str(&format!("; relay of {} upstream(s)", relay.upstreams.len()));
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

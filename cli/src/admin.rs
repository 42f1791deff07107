//! The admin API of a process that runs streamers: started from
//! `[admin]` once the delivery manager has opened the credentials.

use std::path::Path;

use anyhow::{Context, Result};
use statestream::DeliveryManager;
use statestream_admin::{AdminOptions, AdminServer, read_token_file};
use statestream_config::{AppConfig, ListenerTls};
use statestream_net::TlsFiles;

/// Starts the admin API when `[admin] address` is set (the token read
/// from `token_file`, relative paths under `home`); errors name the file,
/// key and line.
pub fn start_admin(
    config: &AppConfig,
    home: &Path,
    manager: &DeliveryManager,
) -> Result<Option<AdminServer>> {
    let Some(admin) = config.admin() else {
        return Ok(None);
    };
    let at = || {
        let line = admin.line.map_or(String::new(), |l| format!(" (line {l})"));
        format!("{}: [admin]{line}", config.origin().display())
    };
    let Some(credentials) = manager.credentials() else {
        return Ok(None);
    };
    let token_file = home.join(&admin.token_file);
    let token =
        read_token_file(&token_file).with_context(|| format!("{} key `token_file`", at()))?;
    let mut options = AdminOptions::new(admin.address, &token);
    options.allowed_hosts = admin.allowed_hosts.clone();
    options.tls = admin.tls.as_ref().map(|tls| tls_files(tls, home));
    options.check_tls().with_context(at)?;
    let server = AdminServer::start(options, credentials, Vec::new())
        .with_context(|| format!("{} key `address`", at()))?;
    Ok(Some(server))
}

/// A listener's TLS files from app.toml, relative paths under `home`.
pub fn tls_files(tls: &ListenerTls, home: &Path) -> TlsFiles {
    let files = TlsFiles::new(home.join(&tls.cert_file), home.join(&tls.key_file));
    match &tls.client_ca_file {
        Some(ca) => files.client_ca_file(home.join(ca)),
        None => files,
    }
}

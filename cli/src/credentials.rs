//! `statestream credentials`: the node's credentials, through its admin
//! API (`--admin URL`) or offline on a stopped node's store (`--home`).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, anyhow, bail};
use clap::{Args, Subcommand};
use serde_json::{Value, json};
use statestream_access::{
    CredentialPatch, NewCredential, Registry, Rotation, Scope, TABLE, now, prefix_from_text,
};
use statestream_store::{MultiStore, StoreOptions};

use crate::node::STORE_PATH;

#[derive(Debug, Args)]
pub struct CredentialsArgs {
    #[command(subcommand)]
    action: Action,

    /// The node's admin API, such as http://127.0.0.1:9300 ([admin]
    /// address).
    #[arg(long, global = true, value_name = "URL", conflicts_with = "home")]
    admin: Option<String>,

    /// The file holding the admin token (else STATESTREAM_ADMIN_TOKEN).
    #[arg(long, global = true, value_name = "FILE")]
    admin_token_file: Option<PathBuf>,

    /// https:// admin APIs: the PEM certificates of the CA that signed the
    /// admin listener's certificate (default: the public web's CAs).
    #[arg(long, global = true, value_name = "FILE")]
    ca_file: Option<PathBuf>,

    /// https:// admin APIs requiring client certificates: the PEM client
    /// certificate, with --key-file.
    #[arg(long, global = true, value_name = "FILE", requires = "key_file")]
    cert_file: Option<PathBuf>,

    /// The PEM private key of --cert-file.
    #[arg(long, global = true, value_name = "FILE", requires = "cert_file")]
    key_file: Option<PathBuf>,

    /// Work offline on the store of a stopped node with this home.
    #[arg(long, global = true, value_name = "DIR")]
    home: Option<PathBuf>,

    /// Print the answer as JSON.
    #[arg(long, global = true)]
    json: bool,
}

/// What a scope option holds: `STORE` (the whole store), `STORE=PREFIX`
/// or `STORE=P1,P2`; `*` for every streamed store.
fn parse_scope(text: &str) -> Result<Scope, String> {
    let (store, prefixes) = match text.split_once('=') {
        None => (text, Vec::new()),
        Some((store, list)) => (
            store,
            list.split(',')
                .map(prefix_from_text)
                .collect::<Result<Vec<_>, _>>()?,
        ),
    };
    if store.is_empty() {
        return Err(format!("{text:?}: expected STORE, STORE=PREFIX or '*'"));
    }
    Ok(Scope {
        store: store.to_string(),
        prefixes,
    })
}

/// An optional value that `none` clears.
fn parse_clearable(text: &str) -> Result<Option<String>, String> {
    Ok((text != "none").then(|| text.to_string()))
}

#[derive(Debug, Subcommand)]
enum Action {
    /// Creates a credential and prints its secret (shown this once).
    Create {
        id: String,
        /// A scope: STORE, STORE=PREFIX[,PREFIX...] (UTF-8, or 0x and hex),
        /// or '*' (every streamed store); repeat for several.
        #[arg(long = "scope", required = true, value_parser = parse_scope)]
        scopes: Vec<Scope>,
        /// May call PushUpdate (on keys inside its scopes).
        #[arg(long)]
        push: bool,
        /// May create run-time webhook subscriptions of its own.
        #[arg(long)]
        subscribe_webhooks: bool,
        /// Streams open at once with this credential.
        #[arg(long)]
        max_streams: Option<u32>,
        /// When it stops being accepted (RFC 3339).
        #[arg(long)]
        expires_at: Option<String>,
        #[arg(long, default_value = "")]
        description: String,
    },
    /// Lists the credentials (never a secret).
    List,
    /// Shows one credential.
    Show { id: String },
    /// Changes a credential; takes effect at once.
    Update {
        id: String,
        /// Replaces the scopes (repeat for several).
        #[arg(long = "scope", value_parser = parse_scope)]
        scopes: Vec<Scope>,
        #[arg(long)]
        push: Option<bool>,
        #[arg(long)]
        subscribe_webhooks: Option<bool>,
        /// A number, or `none` for no limit of its own.
        #[arg(long, value_parser = parse_clearable)]
        max_streams: Option<Option<String>>,
        /// RFC 3339, or `none`.
        #[arg(long, value_parser = parse_clearable)]
        expires_at: Option<Option<String>>,
        #[arg(long)]
        description: Option<String>,
    },
    /// A new secret; the old one stays valid for --grace-seconds.
    Rotate {
        id: String,
        #[arg(long, default_value_t = 0)]
        grace_seconds: u64,
    },
    /// Revokes a credential: its open streams end within a second.
    Revoke { id: String },
}

/// Where the calls go.
enum Target {
    Api {
        url: String,
        token: String,
        tls: ureq::tls::TlsConfig,
    },
    Offline {
        registry: Registry,
    },
}

/// The TLS of `https://` admin calls: the CA file's certificates as the
/// only roots, a client certificate when given.
fn tls_config(args: &CredentialsArgs) -> Result<ureq::tls::TlsConfig> {
    use ureq::tls::{Certificate, ClientCert, PemItem, PrivateKey, RootCerts, TlsConfig};
    let read = |path: &std::path::Path| {
        std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
    };
    let certificates = |path: &std::path::Path| -> Result<Vec<Certificate<'static>>> {
        let pem = read(path)?;
        let mut certs = Vec::new();
        for item in ureq::tls::parse_pem(&pem) {
            if let PemItem::Certificate(cert) =
                item.with_context(|| format!("{} is not PEM", path.display()))?
            {
                certs.push(cert);
            }
        }
        if certs.is_empty() {
            bail!("{} holds no PEM certificate", path.display());
        }
        Ok(certs)
    };
    let mut builder = TlsConfig::builder();
    if let Some(ca) = &args.ca_file {
        builder = builder.root_certs(RootCerts::new_with_certs(&certificates(ca)?));
    }
    if let (Some(cert), Some(key)) = (&args.cert_file, &args.key_file) {
        let key = PrivateKey::from_pem(&read(key)?)
            .with_context(|| format!("{} holds no usable PEM private key", key.display()))?;
        builder = builder.client_cert(Some(ClientCert::new_with_certs(&certificates(cert)?, key)));
    }
    Ok(builder.build())
}

pub fn run(args: CredentialsArgs) -> Result<ExitCode> {
    let target = match (&args.admin, &args.home) {
        (Some(url), _) => Target::Api {
            url: url.trim_end_matches('/').to_string(),
            token: admin_token(args.admin_token_file.as_deref())?,
            tls: tls_config(&args)?,
        },
        (None, Some(home)) => Target::Offline {
            registry: open_offline(home)?,
        },
        (None, None) => bail!(
            "say where the credentials are: --admin URL (a running node's admin API) or --home DIR (a stopped node)"
        ),
    };
    let answer = perform(&target, args.action)?;
    print(&answer, args.json)?;
    Ok(ExitCode::SUCCESS)
}

fn admin_token(file: Option<&std::path::Path>) -> Result<String> {
    if let Some(file) = file {
        return Ok(statestream_admin::read_token_file(file)?);
    }
    match std::env::var("STATESTREAM_ADMIN_TOKEN") {
        Ok(t) if !t.trim().is_empty() => Ok(t.trim().to_string()),
        _ => bail!("no admin token: give --admin-token-file FILE or set STATESTREAM_ADMIN_TOKEN"),
    }
}

fn open_offline(home: &std::path::Path) -> Result<Registry> {
    let path = home.join(STORE_PATH);
    if !path.is_file() {
        bail!("{}: no store (is --home a node's home?)", path.display());
    }
    let store = match MultiStore::open_existing(&path, StoreOptions::default()) {
        Ok(store) => store,
        Err(statestream_store::Error::InUse { .. }) => bail!(
            "{}: the node is running (it holds its store): use --admin URL, its admin API, while it runs",
            path.display()
        ),
        Err(e) => return Err(e).with_context(|| format!("cannot open {}", path.display())),
    };
    // The registry keeps the database open; the store handle itself is not
    // needed once the records are.
    Ok(Registry::open(store.records(TABLE))?)
}

fn patch(
    scopes: Vec<Scope>,
    push: Option<bool>,
    subscribe_webhooks: Option<bool>,
    max_streams: Option<Option<String>>,
    expires_at: Option<Option<String>>,
    description: Option<String>,
) -> Result<CredentialPatch> {
    let max_streams = max_streams
        .map(|m| {
            m.map(|n| {
                n.parse::<u32>()
                    .map_err(|_| anyhow!("--max-streams {n:?}: a number or `none`"))
            })
            .transpose()
        })
        .transpose()?;
    Ok(CredentialPatch {
        scopes: (!scopes.is_empty()).then_some(scopes),
        push,
        subscribe_webhooks,
        max_streams,
        expires_at,
        description,
    })
}

fn perform(target: &Target, action: Action) -> Result<Value> {
    match action {
        Action::Create {
            id,
            scopes,
            push,
            subscribe_webhooks,
            max_streams,
            expires_at,
            description,
        } => {
            let new = NewCredential {
                id,
                scopes,
                push,
                subscribe_webhooks,
                max_streams,
                expires_at,
                description,
            };
            match target {
                Target::Api { .. } => call(target, "POST", "/v1/credentials", Some(json!(new))),
                Target::Offline { registry } => {
                    let (c, secret) = registry.create(new)?;
                    Ok(with_secret(c.to_json(now()), secret.expose()))
                }
            }
        }
        Action::List => match target {
            Target::Api { .. } => call(target, "GET", "/v1/credentials", None),
            Target::Offline { registry } => {
                let now = now();
                let all: Vec<Value> = registry.list().iter().map(|c| c.to_json(now)).collect();
                Ok(json!({ "credentials": all }))
            }
        },
        Action::Show { id } => match target {
            Target::Api { .. } => call(target, "GET", &format!("/v1/credentials/{id}"), None),
            Target::Offline { registry } => registry
                .get(&id)
                .map(|c| c.to_json(now()))
                .ok_or_else(|| anyhow!("no credential {id:?}")),
        },
        Action::Update {
            id,
            scopes,
            push,
            subscribe_webhooks,
            max_streams,
            expires_at,
            description,
        } => {
            let p = patch(
                scopes,
                push,
                subscribe_webhooks,
                max_streams,
                expires_at,
                description,
            )?;
            match target {
                Target::Api { .. } => call(
                    target,
                    "PATCH",
                    &format!("/v1/credentials/{id}"),
                    Some(json!(p)),
                ),
                Target::Offline { registry } => Ok(registry.update(&id, p)?.to_json(now())),
            }
        }
        Action::Rotate { id, grace_seconds } => {
            let r = Rotation { grace_seconds };
            match target {
                Target::Api { .. } => call(
                    target,
                    "POST",
                    &format!("/v1/credentials/{id}/rotate"),
                    Some(json!(r)),
                ),
                Target::Offline { registry } => {
                    let (c, secret) = registry.rotate(&id, r)?;
                    Ok(with_secret(c.to_json(now()), secret.expose()))
                }
            }
        }
        Action::Revoke { id } => match target {
            Target::Api { .. } => call(target, "DELETE", &format!("/v1/credentials/{id}"), None),
            Target::Offline { registry } => Ok(registry.revoke(&id)?.to_json(now())),
        },
    }
}

fn with_secret(mut credential: Value, secret: &str) -> Value {
    if let Value::Object(map) = &mut credential {
        map.insert("secret".into(), Value::String(secret.to_string()));
    }
    credential
}

/// One admin API call; an error answer becomes an error naming its code
/// and message.
fn call(target: &Target, method: &str, path: &str, body: Option<Value>) -> Result<Value> {
    let Target::Api { url, token, tls } = target else {
        bail!("not an admin API target");
    };
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .tls_config(tls.clone())
        .http_status_as_error(false)
        .timeout_global(Some(std::time::Duration::from_secs(30)))
        .build()
        .into();
    let request = ureq::http::Request::builder()
        .method(method)
        .uri(format!("{url}{path}"))
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .body(body.map(|b| b.to_string()).unwrap_or_default().into_bytes())?;
    let mut response = agent
        .run(request)
        .with_context(|| format!("cannot reach the admin API at {url}"))?;
    let status = response.status().as_u16();
    let text = response.body_mut().read_to_string()?;
    let value: Value = serde_json::from_str(&text)
        .with_context(|| format!("{method} {url}{path}: answer {status} is not JSON: {text}"))?;
    if status >= 400 {
        let code = value["error"]["code"].as_str().unwrap_or("error");
        let message = value["error"]["message"].as_str().unwrap_or(&text);
        bail!("{method} {path}: {status} {code}: {message}");
    }
    Ok(value)
}

fn print(answer: &Value, json: bool) -> Result<()> {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(out, "{answer}")?;
        return Ok(());
    }
    let line = |c: &Value| {
        let scopes: Vec<String> = c["scopes"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|s| {
                        let store = s["store"].as_str().unwrap_or("?");
                        match s["prefixes"].as_array() {
                            Some(p) if !p.is_empty() => {
                                let p: Vec<&str> = p.iter().filter_map(Value::as_str).collect();
                                format!("{store}={}", p.join(","))
                            }
                            _ => store.to_string(),
                        }
                    })
                    .collect()
            })
            .unwrap_or_default();
        format!(
            "{}\t{}\tscopes {}\tpush {}\tmax_streams {}\texpires {}",
            c["id"].as_str().unwrap_or("?"),
            c["status"].as_str().unwrap_or("?"),
            scopes.join(" "),
            c["push"],
            c["max_streams"],
            c["expires_at"].as_str().unwrap_or("never"),
        )
    };
    if let Some(all) = answer["credentials"].as_array() {
        for c in all {
            writeln!(out, "{}", line(c))?;
        }
        return Ok(());
    }
    writeln!(out, "{}", line(answer))?;
    if let Some(secret) = answer["secret"].as_str() {
        writeln!(out, "secret: {secret}")?;
        writeln!(out, "(shown this once: only its hash is kept)")?;
    }
    Ok(())
}

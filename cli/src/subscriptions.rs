//! `statestream subscriptions`: run-time webhook subscriptions, through a
//! running node's admin API (`--admin URL`), with the admin token or a
//! credential's secret.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use serde_json::{Value, json};

#[derive(Debug, Args)]
pub struct SubscriptionsArgs {
    #[command(subcommand)]
    action: Action,

    /// The node's admin API, such as http://127.0.0.1:9300 ([admin]
    /// address).
    #[arg(long, global = true, value_name = "URL")]
    admin: Option<String>,

    /// The file holding the admin token (else STATESTREAM_ADMIN_TOKEN).
    #[arg(
        long,
        global = true,
        value_name = "FILE",
        conflicts_with = "secret_file"
    )]
    admin_token_file: Option<PathBuf>,

    /// Act as a credential: the file holding its secret (else
    /// STATESTREAM_SECRET, when no admin token is given).
    #[arg(long, global = true, value_name = "FILE")]
    secret_file: Option<PathBuf>,

    /// Print the answer as JSON.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Debug, Subcommand)]
enum Action {
    /// Creates a subscription from a JSON document (see
    /// docs/subscriptions.md) and prints it with its signing secret (shown
    /// this once).
    Create {
        /// The subscription as JSON: a file, or `-` for standard input.
        #[arg(long, value_name = "FILE")]
        file: Option<PathBuf>,
        /// Shortcut for `{"endpoint": {"url": URL}}` (merged into --file's
        /// document when both are given).
        #[arg(long, value_name = "URL")]
        url: Option<String>,
    },
    /// Lists the subscriptions the caller may see.
    List,
    /// Shows one subscription.
    Show { id: String },
    /// Pauses delivery (the node keeps what it has not delivered).
    Pause { id: String },
    /// Resumes a paused or disabled subscription from its cursor.
    Resume { id: String },
    /// Delivers heights FROM..=TO again, with the same webhook-ids.
    Replay {
        id: String,
        #[arg(long = "from", value_name = "HEIGHT")]
        from_height: u64,
        #[arg(long = "to", value_name = "HEIGHT")]
        to_height: u64,
    },
    /// The recent attempts, newest first.
    Attempts {
        id: String,
        /// Only the failed ones.
        #[arg(long)]
        failed: bool,
        /// At most this many.
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// Deletes a subscription (its cursor goes with it).
    Delete { id: String },
}

pub fn run(args: SubscriptionsArgs) -> Result<ExitCode> {
    let Some(url) = args.admin.as_deref() else {
        bail!("say where the node is: --admin URL (its admin API)");
    };
    let url = url.trim_end_matches('/').to_owned();
    let token = token(
        args.admin_token_file.as_deref(),
        args.secret_file.as_deref(),
    )?;
    let answer = perform(&url, &token, args.action)?;
    print(&answer, args.json)?;
    Ok(ExitCode::SUCCESS)
}

/// The bearer token: the admin token (file, else STATESTREAM_ADMIN_TOKEN)
/// or a credential's secret (file, else STATESTREAM_SECRET).
fn token(admin_file: Option<&Path>, secret_file: Option<&Path>) -> Result<String> {
    let read = |file: &Path, what: &str| -> Result<String> {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("cannot read the {what} file {}", file.display()))?;
        let t = text.trim();
        if t.is_empty() {
            bail!("the {what} file {} is empty", file.display());
        }
        Ok(t.to_owned())
    };
    if let Some(f) = admin_file {
        return read(f, "admin token");
    }
    if let Some(f) = secret_file {
        return read(f, "secret");
    }
    for var in ["STATESTREAM_ADMIN_TOKEN", "STATESTREAM_SECRET"] {
        if let Ok(t) = std::env::var(var)
            && !t.trim().is_empty()
        {
            return Ok(t.trim().to_owned());
        }
    }
    bail!(
        "no token: give --admin-token-file FILE or --secret-file FILE, or set \
         STATESTREAM_ADMIN_TOKEN or STATESTREAM_SECRET"
    )
}

fn perform(url: &str, token: &str, action: Action) -> Result<Value> {
    let call = |method: &str, path: &str, body: Option<Value>| call(url, token, method, path, body);
    match action {
        Action::Create { file, url: target } => {
            let mut doc = match &file {
                Some(f) if f.as_os_str() == "-" => {
                    let mut text = String::new();
                    std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)
                        .context("cannot read the subscription from standard input")?;
                    parse_doc(&text, "standard input")?
                }
                Some(f) => {
                    let text = std::fs::read_to_string(f)
                        .with_context(|| format!("cannot read {}", f.display()))?;
                    parse_doc(&text, &f.display().to_string())?
                }
                None => json!({}),
            };
            if let Some(u) = target {
                doc["endpoint"]["url"] = Value::String(u);
            }
            if doc.get("endpoint").is_none() {
                bail!("give the subscription with --file FILE, or at least --url URL");
            }
            call("POST", "/v1/subscriptions", Some(doc))
        }
        Action::List => call("GET", "/v1/subscriptions", None),
        Action::Show { id } => call("GET", &format!("/v1/subscriptions/{id}"), None),
        Action::Pause { id } => call("POST", &format!("/v1/subscriptions/{id}/pause"), None),
        Action::Resume { id } => call("POST", &format!("/v1/subscriptions/{id}/resume"), None),
        Action::Replay {
            id,
            from_height,
            to_height,
        } => call(
            "POST",
            &format!("/v1/subscriptions/{id}/replay"),
            Some(json!({"from_height": from_height, "to_height": to_height})),
        ),
        Action::Attempts { id, failed, limit } => {
            let status = if failed { "failed" } else { "all" };
            call(
                "GET",
                &format!("/v1/subscriptions/{id}/attempts?status={status}&limit={limit}"),
                None,
            )
        }
        Action::Delete { id } => {
            call("DELETE", &format!("/v1/subscriptions/{id}"), None)?;
            Ok(json!({"deleted": id}))
        }
    }
}

fn parse_doc(text: &str, from: &str) -> Result<Value> {
    let doc: Value =
        serde_json::from_str(text).with_context(|| format!("{from}: not a JSON document"))?;
    if !doc.is_object() {
        bail!("{from}: the subscription must be a JSON object");
    }
    Ok(doc)
}

fn call(url: &str, token: &str, method: &str, path: &str, body: Option<Value>) -> Result<Value> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        // A replay waits for its deliveries.
        .timeout_global(Some(std::time::Duration::from_secs(600)))
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
    let value: Value = if text.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text)
            .with_context(|| format!("{method} {path}: the answer is not JSON (status {status})"))?
    };
    if !(200..300).contains(&status) {
        let message = value["error"]["message"]
            .as_str()
            .map_or_else(|| text.clone(), str::to_owned);
        bail!("{method} {path}: {status}: {message}");
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
    let line = |s: &Value| {
        format!(
            "{}\t{}\tcursor {}\t{}{}",
            s["id"].as_str().unwrap_or("?"),
            s["state"].as_str().unwrap_or("?"),
            s["cursor"],
            s["endpoint"]["url"].as_str().unwrap_or("?"),
            s["disabled"]["reason"]
                .as_str()
                .map_or(String::new(), |r| format!(
                    "\tdisabled at {}: {r}",
                    s["disabled"]["height"]
                )),
        )
    };
    if let Some(all) = answer["subscriptions"].as_array() {
        for s in all {
            writeln!(out, "{}", line(s))?;
        }
    } else if let Some(all) = answer["attempts"].as_array() {
        for a in all {
            writeln!(
                out,
                "{}\t{}\theight {}\t{}\t{}\t{} ms\t{}",
                a["time"].as_str().unwrap_or("?"),
                a["webhook_id"].as_str().unwrap_or("?"),
                a["height"],
                a["outcome"].as_str().unwrap_or("?"),
                a["status"].as_u64().map_or_else(
                    || a["error"].as_str().unwrap_or("?").to_owned(),
                    |s| s.to_string()
                ),
                a["latency_ms"],
                a["url"].as_str().unwrap_or("?"),
            )?;
        }
    } else if answer.get("requests").is_some() {
        writeln!(
            out,
            "replayed {}..={}: {} requests, {} delivered, {} discarded, {} failed",
            answer["from_height"],
            answer["to_height"],
            answer["requests"],
            answer["delivered"],
            answer["discarded"],
            answer["failed"]
        )?;
    } else if let Some(id) = answer["deleted"].as_str() {
        writeln!(out, "deleted {id}")?;
    } else {
        writeln!(out, "{}", line(answer))?;
        if let Some(secret) = answer["secret"].as_str() {
            writeln!(out, "secret: {secret}")?;
            writeln!(out, "(shown this once: verify webhook-signature with it)")?;
        }
    }
    Ok(())
}

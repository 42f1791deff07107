//! The admin API over real HTTP (ureq): the routes against the OpenAPI
//! document, bad input refused with the right status and nothing changed.

use std::path::PathBuf;

use serde_json::{Value, json};
use statestream_access::Registry;
use statestream_admin::{AdminOptions, AdminServer, MAX_BODY_BYTES, ROUTES};

const TOKEN: &str = "admin-secret";

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace")
        .to_path_buf()
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(std::time::Duration::from_secs(10)))
        .build()
        .into()
}

/// A call: (status, JSON body).
fn call(
    server: &AdminServer,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> anyhow::Result<(u16, Value)> {
    let url = format!("http://{}{path}", server.local_addr());
    let request = http_request(method, &url, token, body)?;
    let mut response = agent().run(request)?;
    let status = response.status().as_u16();
    let text = response.body_mut().read_to_string()?;
    let value = serde_json::from_str(&text).map_err(|e| {
        anyhow::anyhow!("{method} {path}: answer {status} is not JSON ({e}): {text}")
    })?;
    Ok((status, value))
}

fn http_request(
    method: &str,
    url: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> anyhow::Result<ureq::http::Request<Vec<u8>>> {
    let mut b = ureq::http::Request::builder()
        .method(method)
        .uri(url)
        .header("content-type", "application/json");
    if let Some(t) = token {
        b = b.header("authorization", format!("Bearer {t}"));
    }
    Ok(b.body(body.unwrap_or("").as_bytes().to_vec())?)
}

fn start() -> anyhow::Result<(AdminServer, Registry)> {
    let registry = Registry::in_memory();
    let server = AdminServer::start(
        AdminOptions::new("127.0.0.1:0".parse()?, TOKEN),
        registry.clone(),
        Vec::new(),
    )?;
    Ok((server, registry))
}

#[test]
fn admin_openapi_document_lists_exactly_the_routes() -> anyhow::Result<()> {
    let text = std::fs::read_to_string(repo_root().join("docs/admin-api.json"))?;
    let doc: Value = serde_json::from_str(&text)?;
    let mut documented = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths").iter() {
        // The run-time subscriptions' routes are mounted by their crate,
        // which checks them against this document itself.
        if path.starts_with("/v1/subscriptions") {
            continue;
        }
        for (method, _) in item.as_object().expect("a path item").iter() {
            if method != "parameters" {
                documented.push((method.to_uppercase(), path.clone()));
            }
        }
    }
    documented.sort();
    let mut served: Vec<(String, String)> = ROUTES
        .iter()
        .map(|(m, p)| ((*m).to_string(), (*p).to_string()))
        .collect();
    served.sort();
    assert_eq!(documented, served, "docs/admin-api.json against the router");
    // And each documented route is answered (401 without a token, not 404
    // or 405).
    let (server, _) = start()?;
    for (method, path) in &served {
        let path = path.replace("{id}", "x");
        let (status, body) = call(&server, method, &path, None, Some("{}"))?;
        assert_eq!(status, 401, "{method} {path}: {body}");
    }
    Ok(())
}

#[test]
fn admin_bad_input_is_refused_and_changes_nothing() -> anyhow::Result<()> {
    let (server, registry) = start()?;
    let good = json!({"id": "wallet", "scopes": [{"store": "bank", "prefixes": ["balances/"]}]});
    let good = good.to_string();
    let cases: Vec<(&str, Option<&str>, String, u16, &str)> = vec![
        ("no token", None, good.clone(), 401, "unauthenticated"),
        (
            "wrong token",
            Some("nope"),
            good.clone(),
            401,
            "unauthenticated",
        ),
        (
            "malformed JSON",
            Some(TOKEN),
            "{\"id\": ".into(),
            400,
            "invalid_argument",
        ),
        (
            "unknown field",
            Some(TOKEN),
            json!({"id": "wallet", "scopes": [{"store": "bank"}], "admin": true}).to_string(),
            400,
            "invalid_argument",
        ),
        (
            "unknown field in a scope",
            Some(TOKEN),
            json!({"id": "wallet", "scopes": [{"store": "bank", "keys": []}]}).to_string(),
            400,
            "invalid_argument",
        ),
        (
            "bad hex prefix",
            Some(TOKEN),
            json!({"id": "wallet", "scopes": [{"store": "bank", "prefixes": ["0xzz"]}]})
                .to_string(),
            400,
            "invalid_argument",
        ),
        (
            "bad id",
            Some(TOKEN),
            json!({"id": "a_b", "scopes": [{"store": "bank"}]}).to_string(),
            400,
            "invalid_argument",
        ),
        (
            "bad time",
            Some(TOKEN),
            json!({"id": "wallet", "scopes": [{"store": "*"}], "expires_at": "tomorrow"})
                .to_string(),
            400,
            "invalid_argument",
        ),
        (
            "oversized body",
            Some(TOKEN),
            format!(
                "{{\"id\": \"wallet\", \"scopes\": [{{\"store\": \"bank\"}}], \"description\": \"{}\"}}",
                "x".repeat(MAX_BODY_BYTES)
            ),
            413,
            "payload_too_large",
        ),
    ];
    for (what, token, body, status, code) in cases {
        let (got, answer) = call(&server, "POST", "/v1/credentials", token, Some(&body))?;
        assert_eq!(got, status, "{what}: {answer}");
        assert_eq!(answer["error"]["code"], code, "{what}: {answer}");
        assert!(
            answer["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{what}: {answer}"
        );
        assert!(registry.list().is_empty(), "{what} changed nothing");
    }

    let (status, created) = call(&server, "POST", "/v1/credentials", Some(TOKEN), Some(&good))?;
    assert_eq!(status, 201, "{created}");
    let secret = created["secret"].as_str().expect("a secret").to_string();
    assert!(secret.starts_with("ss_wallet_"), "{secret}");
    let (status, again) = call(&server, "POST", "/v1/credentials", Some(TOKEN), Some(&good))?;
    assert_eq!(
        (status, again["error"]["code"].as_str()),
        (409, Some("already_exists"))
    );

    let (status, listed) = call(&server, "GET", "/v1/credentials", Some(TOKEN), None)?;
    assert_eq!(status, 200);
    assert!(
        !listed.to_string().contains(&secret),
        "no secret in a listing"
    );
    let before = registry.get("wallet").expect("created");
    for (method, path, body, want) in [
        ("PATCH", "/v1/credentials/wallet", "{\"scopes\": []}", 400),
        ("PATCH", "/v1/credentials/wallet", "{\"owner\": 1}", 400),
        ("PATCH", "/v1/credentials/nobody", "{\"push\": true}", 404),
        (
            "POST",
            "/v1/credentials/wallet/rotate",
            "{\"grace\": 5}",
            400,
        ),
        ("GET", "/v1/credentials/nobody", "", 404),
        ("PUT", "/v1/credentials/wallet", "{}", 405),
        ("GET", "/v1/nothing", "", 404),
    ] {
        let (status, answer) = call(&server, method, path, Some(TOKEN), Some(body))?;
        assert_eq!(status, want, "{method} {path} {body}: {answer}");
        assert!(answer["error"]["code"].is_string(), "{answer}");
    }
    assert_eq!(
        registry.get("wallet").expect("kept"),
        before,
        "nothing changed"
    );

    let (status, patched) = call(
        &server,
        "PATCH",
        "/v1/credentials/wallet",
        Some(TOKEN),
        Some("{\"push\": true, \"max_streams\": 3, \"expires_at\": \"2099-01-01T00:00:00Z\"}"),
    )?;
    assert_eq!(status, 200, "{patched}");
    assert_eq!(patched["max_streams"], 3);
    assert_eq!(patched["expires_at"], "2099-01-01T00:00:00Z");
    let (status, rotated) = call(
        &server,
        "POST",
        "/v1/credentials/wallet/rotate",
        Some(TOKEN),
        Some("{\"grace_seconds\": 60}"),
    )?;
    assert_eq!(status, 200, "{rotated}");
    assert_ne!(rotated["secret"].as_str(), Some(secret.as_str()));
    assert!(
        rotated["previous_secret_valid_until"].is_string(),
        "{rotated}"
    );
    let (status, revoked) = call(
        &server,
        "DELETE",
        "/v1/credentials/wallet",
        Some(TOKEN),
        None,
    )?;
    assert_eq!((status, revoked["status"].as_str()), (200, Some("revoked")));
    server.stop();
    Ok(())
}

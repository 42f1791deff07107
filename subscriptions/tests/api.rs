//! The `/v1/subscriptions` routes over real HTTP, with a real engine, a
//! real receiver and a stand-in for the admin listener's authentication:
//! create, list, show, patch, pause, resume, rotate-secret, attempts,
//! replay, test, delete; scopes (403), others' subscriptions (404), bad
//! input (400, nothing created).

#[path = "../../streaming-webhook/tests/it/receiver.rs"]
#[allow(dead_code)]
mod receiver;

use std::sync::Arc;

use axum::http::HeaderMap;
use receiver::Receiver;
use serde_json::{Value, json};
use statestream::store::{KvStore, MultiStore, StoreKey};
use statestream::{BlockMeta, DeliveryManager};
use statestream_subscriptions::api::{
    ApiFailure, Authenticator, Principal, ROUTES, ReadScope, router,
};
use statestream_subscriptions::{Engine, EngineOptions, SUBSCRIPTIONS_TABLE};
use statestream_test_support::wait_for;

/// Bearer `admin`: the admin token; `wallet`: a credential reading
/// `bank` under `balance/`, allowed to subscribe; `other`: the same scopes,
/// another credential; `reader`: no `subscribe_webhooks`.
struct Tokens;

impl Authenticator for Tokens {
    fn principal(&self, headers: &HeaderMap) -> Result<Principal, ApiFailure> {
        let token = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or_default();
        let credential = |id: &str, subscribe_webhooks| Principal::Credential {
            id: id.to_owned(),
            subscribe_webhooks,
            scopes: vec![ReadScope {
                store: "bank".into(),
                prefixes: vec![b"balance/".to_vec()],
            }],
        };
        match token {
            "admin" => Ok(Principal::Admin),
            "wallet" => Ok(credential("wallet", true)),
            "other" => Ok(credential("other", true)),
            "reader" => Ok(credential("reader", false)),
            _ => Err(ApiFailure::new(
                axum::http::StatusCode::UNAUTHORIZED,
                "unauthenticated",
                "who are you",
            )),
        }
    }
}

fn serve(engine: Engine) -> String {
    let app = router(engine, Arc::new(Tokens));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.set_nonblocking(true).expect("nonblocking");
    let addr = listener.local_addr().expect("address");
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
            axum::serve(listener, app).await.expect("serve");
        });
    });
    format!("http://{addr}")
}

struct Client {
    base: String,
    agent: ureq::Agent,
}

impl Client {
    fn call(&self, token: &str, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let url = format!("{}{path}", self.base);
        let req = ureq::http::Request::builder()
            .method(method)
            .uri(&url)
            .header("authorization", format!("Bearer {token}"))
            .header("content-type", "application/json")
            .body(body.map(|b| b.to_string()).unwrap_or_default())
            .expect("request");
        let mut resp = self.agent.run(req).expect("response");
        let status = resp.status().as_u16();
        let text = resp.body_mut().read_to_string().unwrap_or_default();
        let json = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        (status, json)
    }
}

#[test]
fn subscriptions_api_over_http() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bank = StoreKey::new("bank").expect("name");
    let users = StoreKey::new("users").expect("name");
    let mut store = MultiStore::open(
        &dir.path().join("node.redb"),
        &[bank.clone(), users],
        Default::default(),
    )
    .expect("store");
    let mut manager = DeliveryManager::builder().start(&mut store).expect("start");
    let engine = Engine::start(
        store.records(SUBSCRIPTIONS_TABLE),
        manager.runtime(),
        EngineOptions::default().allow_private_endpoints(true),
    )
    .expect("engine");
    let c = Client {
        base: serve(engine.clone()),
        // A connection per call: a refusal answered before the request's
        // body was read (401) makes hyper close the connection, and a
        // pooled one reused in that moment fails with "Peer disconnected"
        // (seen once under CI load).
        agent: ureq::Agent::config_builder()
            .max_idle_connections(0)
            .http_status_as_error(false)
            .build()
            .into(),
    };
    let r = Receiver::ok();
    let mine = json!({
        "endpoint": {"url": format!("{}/wallet", r.url())},
        "filter": {"stores": ["bank"], "prefixes": ["balance/"]},
    });

    // Bad input: 400 and nothing created.
    for (body, words) in [
        (
            json!({"endpoint": {"url": "ftp://x.example/"}}),
            "only http and https",
        ),
        (
            json!({"endpoint": {"url": "http://x.example/{nope"}}),
            "endpoint.url",
        ),
        (
            json!({"endpoint": {"url": "http://x.example/"}, "colour": 1}),
            "colour",
        ),
    ] {
        let (status, err) = c.call("admin", "POST", "/v1/subscriptions", Some(body));
        assert_eq!(status, 400, "{err}");
        assert_eq!(err["error"]["code"], "invalid_argument");
        assert!(
            err["error"]["message"]
                .as_str()
                .unwrap_or("")
                .contains(words),
            "{err}"
        );
    }
    let (status, list) = c.call("admin", "GET", "/v1/subscriptions", None);
    assert_eq!(
        (status, list["subscriptions"].as_array().map(Vec::len)),
        (200, Some(0))
    );

    // Scopes and permission.
    let (status, err) = c.call(
        "wallet",
        "POST",
        "/v1/subscriptions",
        Some(json!({"endpoint": {"url": r.url()}, "filter": {"stores": ["users"]}})),
    );
    assert_eq!(status, 403, "{err}");
    let (status, err) = c.call(
        "wallet",
        "POST",
        "/v1/subscriptions",
        Some(json!({"endpoint": {"url": r.url()}, "filter": {"stores": ["bank"], "prefixes": ["audit/"]}})),
    );
    assert_eq!(status, 403, "{err}");
    let (status, _) = c.call("reader", "POST", "/v1/subscriptions", Some(mine.clone()));
    assert_eq!(status, 403, "no subscribe_webhooks");
    let (status, _) = c.call("nobody", "GET", "/v1/subscriptions", None);
    assert_eq!(status, 401);

    // Create within scopes: 201 with the secret.
    let (status, sub) = c.call("wallet", "POST", "/v1/subscriptions", Some(mine));
    assert_eq!(status, 201, "{sub}");
    let id = sub["id"].as_str().expect("id").to_owned();
    assert_eq!(sub["state"], "active");
    assert_eq!(sub["owner"], "wallet");
    assert!(
        sub["secret"]
            .as_str()
            .is_some_and(|s| s.starts_with("whsec_"))
    );
    assert_eq!(sub["filter"]["prefixes"], json!(["balance/"]));
    let (status, shown) = c.call("wallet", "GET", &format!("/v1/subscriptions/{id}"), None);
    assert_eq!(status, 200);
    assert!(
        shown.get("secret").is_none(),
        "the secret is shown only once"
    );
    // Another credential: not found, not in its list.
    let (status, _) = c.call("other", "GET", &format!("/v1/subscriptions/{id}"), None);
    assert_eq!(status, 404);
    let (status, _) = c.call("other", "DELETE", &format!("/v1/subscriptions/{id}"), None);
    assert_eq!(status, 404);
    let (_, list) = c.call("other", "GET", "/v1/subscriptions", None);
    assert_eq!(list["subscriptions"], json!([]));
    // A PATCH may not leave the scopes.
    let (status, _) = c.call(
        "wallet",
        "PATCH",
        &format!("/v1/subscriptions/{id}"),
        Some(json!({"filter": {"prefixes": ["audit/"]}})),
    );
    assert_eq!(status, 403);

    // Delivery, attempts, replay, test.
    let mut commit = |key: &str| {
        store.set(&bank, key.as_bytes(), b"1").expect("set");
        manager
            .commit(&mut store, BlockMeta::default())
            .expect("commit")
            .version
    };
    commit("audit/1");
    let h = commit("balance/alice");
    wait_for("the delivery", || r.requests().len() == 1);
    let (_, shown) = c.call("wallet", "GET", &format!("/v1/subscriptions/{id}"), None);
    assert_eq!(shown["cursor"], h);
    let (status, list) = c.call(
        "wallet",
        "GET",
        &format!("/v1/subscriptions/{id}/attempts?limit=5"),
        None,
    );
    assert_eq!(status, 200);
    let attempts = list["attempts"].as_array().expect("attempts");
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0]["status"], 200);
    assert_eq!(attempts[0]["height"], h);
    let (_, failed) = c.call(
        "wallet",
        "GET",
        &format!("/v1/subscriptions/{id}/attempts?status=failed"),
        None,
    );
    assert_eq!(failed["attempts"], json!([]));
    let (status, _) = c.call(
        "wallet",
        "GET",
        &format!("/v1/subscriptions/{id}/attempts?status=nope"),
        None,
    );
    assert_eq!(status, 400);
    let (status, paused) = c.call(
        "wallet",
        "POST",
        &format!("/v1/subscriptions/{id}/pause"),
        None,
    );
    assert_eq!((status, paused["state"].as_str()), (200, Some("paused")));
    let (status, summary) = c.call(
        "wallet",
        "POST",
        &format!("/v1/subscriptions/{id}/replay"),
        Some(json!({"from_height": h, "to_height": h})),
    );
    assert_eq!(status, 200, "{summary}");
    assert_eq!(summary["delivered"], 1);
    let got = r.wait_for(2);
    assert_eq!(got[1].id(), got[0].id(), "the same webhook-id");
    assert_eq!(got[1].body, got[0].body, "the same bytes");
    let (status, err) = c.call(
        "wallet",
        "POST",
        &format!("/v1/subscriptions/{id}/replay"),
        Some(json!({"from_height": h, "to_height": h + 3})),
    );
    assert_eq!(status, 400, "{err}");
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("not delivered yet"),
        "{err}"
    );
    let (status, attempt) = c.call(
        "wallet",
        "POST",
        &format!("/v1/subscriptions/{id}/test"),
        None,
    );
    assert_eq!((status, attempt["status"].as_u64()), (200, Some(200)));
    let (status, resumed) = c.call(
        "wallet",
        "POST",
        &format!("/v1/subscriptions/{id}/resume"),
        None,
    );
    assert_eq!((status, resumed["state"].as_str()), (200, Some("active")));
    let (status, rotated) = c.call(
        "wallet",
        "POST",
        &format!("/v1/subscriptions/{id}/rotate-secret"),
        None,
    );
    assert_eq!(status, 200);
    assert_ne!(rotated["secret"], sub["secret"]);
    let (status, patched) = c.call(
        "wallet",
        "PATCH",
        &format!("/v1/subscriptions/{id}"),
        Some(json!({"rate_limit_per_s": 5})),
    );
    assert_eq!(
        (status, patched["rate_limit_per_s"].as_f64()),
        (200, Some(5.0))
    );
    // The operator sees it; then it is deleted.
    let (_, all) = c.call("admin", "GET", "/v1/subscriptions", None);
    assert_eq!(all["subscriptions"].as_array().map(Vec::len), Some(1));
    let (status, _) = c.call("wallet", "DELETE", &format!("/v1/subscriptions/{id}"), None);
    assert_eq!(status, 204);
    let (status, _) = c.call("wallet", "GET", &format!("/v1/subscriptions/{id}"), None);
    assert_eq!(status, 404);
    engine.close();
    manager.close(&mut store).expect("close");
}

#[test]
fn subscriptions_openapi_document_lists_exactly_the_routes() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/admin-api.json");
    let doc: Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("read")).expect("JSON");
    let mut documented = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        if !path.starts_with("/v1/subscriptions") {
            continue;
        }
        for (method, _) in item.as_object().expect("a path item") {
            if method != "parameters" {
                documented.push((method.to_uppercase(), path.clone()));
            }
        }
    }
    documented.sort();
    let mut served: Vec<(String, String)> = ROUTES
        .iter()
        .map(|(m, p)| ((*m).to_owned(), (*p).to_owned()))
        .collect();
    served.sort();
    assert_eq!(documented, served, "docs/admin-api.json against the routes");
    // Each is answered: 401 without a valid token, not 404 or 405.
    let dir = tempfile::tempdir().expect("tempdir");
    let bank = StoreKey::new("bank").expect("name");
    let mut store =
        MultiStore::open(&dir.path().join("s.redb"), &[bank], Default::default()).expect("store");
    let manager = DeliveryManager::builder().start(&mut store).expect("start");
    let engine = Engine::start(
        store.records(SUBSCRIPTIONS_TABLE),
        manager.runtime(),
        EngineOptions::default(),
    )
    .expect("engine");
    let c = Client {
        base: serve(engine.clone()),
        // A connection per call: a refusal answered before the request's
        // body was read (401) makes hyper close the connection, and a
        // pooled one reused in that moment fails with "Peer disconnected"
        // (seen once under CI load).
        agent: ureq::Agent::config_builder()
            .max_idle_connections(0)
            .http_status_as_error(false)
            .build()
            .into(),
    };
    for (method, path) in &served {
        let (status, body) = c.call("wrong", method, &path.replace("{id}", "x"), Some(json!({})));
        assert_eq!(status, 401, "{method} {path}: {body}");
    }
    engine.close();
    manager.close(&mut store).expect("close");
}

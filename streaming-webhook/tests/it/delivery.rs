//! The delivery policy, end to end.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::receiver::{Receiver, Reply};
use crate::*;

/// (height, store, key, action) of an envelope.
fn change_of(v: &serde_json::Value) -> (u64, String, String, String) {
    (
        v["height"].as_u64().unwrap(),
        v["store"].as_str().unwrap().to_string(),
        v["key"].as_str().unwrap().to_string(),
        v["action"].as_str().unwrap().to_string(),
    )
}

#[test]
fn delivery_every_change_in_order_signed() -> anyhow::Result<()> {
    let rx = Receiver::ok();
    let toml = app_toml(
        &rx.url(),
        &format!("delivery = \"sync\"\nsecret = \"{SECRET}\""),
    );
    let mut store = memory_store();
    let mut m = manager(&mut store, &toml)?;
    for b in 1..=3 {
        commit(&mut m, &mut store, |s, k| write_block(s, k, b))?;
    }
    m.close(&mut store)?;

    let got = rx.requests();
    let want = expected_changes(3);
    assert_eq!(got.len(), want.len());
    let seen: Vec<_> = got.iter().map(|r| change_of(&r.json())).collect();
    assert_eq!(seen, want);
    let mut index_in_block = 0;
    let mut last_height = 0;
    for r in &got {
        r.verify(SECRET).map_err(anyhow::Error::msg)?;
        let v = r.json();
        let h = v["height"].as_u64().unwrap();
        if h != last_height {
            index_in_block = 0;
            last_height = h;
        }
        assert_eq!(r.method, "POST");
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert_eq!(r.id(), format!("hook-{h}-{index_in_block}"));
        assert_eq!(v["id"], r.id());
        assert!(!r.id().contains('.'));
        assert_eq!(v["time"], format!("2023-11-14T22:13:{}Z", 20 + h));
        assert!(
            r.header("webhook-timestamp")
                .unwrap()
                .parse::<u64>()
                .is_ok()
        );
        let key = v["key"].as_str().unwrap();
        match (v["store"].as_str().unwrap(), v["action"].as_str().unwrap()) {
            (_, "delete") => assert!(v.get("document").is_none()),
            ("bank", _) if key == "total" => assert_eq!(v["document"], h),
            ("bank", _) => assert_eq!(v["document"], serde_json::json!({ "amount": h })),
            _ => assert_eq!(v["document"], "plain text"),
        }
        // The JSON value is carried byte for byte.
        if key.starts_with("balance/") {
            let body = String::from_utf8(r.body.clone())?;
            assert!(
                body.contains(&format!("\"document\":{{\"amount\": {h}}}")),
                "{body}"
            );
        }
        index_in_block += 1;
    }
    Ok(())
}

#[test]
fn delivery_retries_keep_the_id_and_the_body() -> anyhow::Result<()> {
    // First attempt 500, second times out, third 302 (not followed),
    // fourth 200.
    let rx = Receiver::start(|_, n| match n {
        0 => Reply::status(500),
        1 => Reply::status(200).delay(Duration::from_millis(1500)),
        2 => Reply::status(302).header("location", "http://127.0.0.1:9/elsewhere"),
        _ => Reply::status(200),
    });
    let toml = app_toml(
        &format!("{}/hook", rx.url()),
        &format!(
            "delivery = \"sync\"\nsecret = \"{SECRET}\"\nkey_pattern = \"total\"\n\
             retry_schedule_ms = [0, 1, 1, 1, 1]\ntimeout_ms = 300"
        ),
    );
    let mut store = memory_store();
    let mut m = manager(&mut store, &toml)?;
    commit(&mut m, &mut store, |s, k| write_block(s, k, 1))?;
    m.close(&mut store)?;

    let got = rx.requests();
    assert_eq!(got.len(), 4, "{got:#?}");
    assert!(
        got.iter().all(|r| r.path == "/hook"),
        "the redirect is not followed"
    );
    for r in &got {
        assert_eq!(r.id(), got[0].id());
        assert_eq!(r.body, got[0].body);
        r.verify(SECRET).map_err(anyhow::Error::msg)?;
    }
    Ok(())
}

#[test]
fn delivery_discard_is_not_retried() -> anyhow::Result<()> {
    let rx = Receiver::start(|_, _| Reply::status(422));
    let toml = app_toml(
        &rx.url(),
        "delivery = \"sync\"\ndiscard = [422]\nretry_schedule_ms = [0, 1, 1]",
    );
    let mut store = memory_store();
    let mut m = manager(&mut store, &toml)?;
    for b in 1..=2 {
        commit(&mut m, &mut store, |s, k| write_block(s, k, b))?;
    }
    let stats = m.stats();
    m.close(&mut store)?;
    assert_eq!(rx.requests().len(), expected_changes(2).len());
    assert_eq!(stats[0].delivered_height, 2);
    assert_eq!(stats[0].errors, 0);
    Ok(())
}

#[test]
fn delivery_retry_after_is_honoured() -> anyhow::Result<()> {
    let rx = Receiver::start(|_, n| match n {
        0 => Reply::status(429).header("retry-after", "1"),
        _ => Reply::status(200),
    });
    // The schedule itself never waits: only Retry-After can space the
    // attempts.
    let toml = app_toml(
        &rx.url(),
        "delivery = \"sync\"\nkey_pattern = \"total\"\nretry_schedule_ms = [0, 0]",
    );
    let mut store = memory_store();
    let mut m = manager(&mut store, &toml)?;
    commit(&mut m, &mut store, |s, k| write_block(s, k, 1))?;
    m.close(&mut store)?;
    let got = rx.requests();
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].id(), got[1].id());
    // A lower bound only: the second attempt cannot come before the
    // second the receiver asked for.
    assert!(got[1].at.duration_since(got[0].at) >= Duration::from_millis(900));
    Ok(())
}

#[test]
fn delivery_410_stops_the_streamer() -> anyhow::Result<()> {
    let rx = Receiver::start(|_, _| Reply::status(410));
    let toml = app_toml(
        &rx.url(),
        "delivery = \"sync\"\nstop-node-on-error = true\nretry_schedule_ms = [0, 1, 1]",
    );
    let mut store = memory_store();
    let mut m = manager(&mut store, &toml)?;
    let err = commit(&mut m, &mut store, |s, k| write_block(s, k, 1)).unwrap_err();
    let text = format!("{err:#}");
    assert!(text.contains("asked to be removed"), "{text}");
    assert!(text.contains("410"), "{text}");
    assert_eq!(rx.requests().len(), 1, "a 410 is not retried");
    let _ = m.close(&mut store);
    Ok(())
}

#[test]
fn delivery_dead_letters_are_written_and_delivery_goes_on() -> anyhow::Result<()> {
    let home = tempfile::tempdir()?;
    let rx = Receiver::start(|r, _| {
        if r.path.contains("total") {
            Reply::status(500)
        } else {
            Reply::status(200)
        }
    });
    let toml = app_toml(
        &format!("{}/{{store}}/{{key}}", rx.url()),
        &format!(
            "delivery = \"sync\"\nsecret = \"{SECRET}\"\non_exhausted = \"dead-letter\"\n\
             retry_schedule_ms = [0, 1]"
        ),
    );
    let mut store = memory_store();
    let mut m = manager_in(&mut store, &toml, home.path())?;
    for b in 1..=2 {
        commit(&mut m, &mut store, |s, k| write_block(s, k, b))?;
    }
    let stats = m.stats();
    m.close(&mut store)?;
    assert_eq!(stats[0].delivered_height, 2);

    let dir = home.path().join("data/webhook-dead");
    let mut files: Vec<String> = std::fs::read_dir(&dir)?
        .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_, _>>()?;
    files.sort();
    // "total" is the last change of each block.
    assert_eq!(files, ["hook-1-2.http", "hook-2-3.http"]);
    let text = std::fs::read(dir.join("hook-1-2.http"))?;
    let text = String::from_utf8(text)?;
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("POST http://127.0.0.1:"), "{head}");
    assert!(head.contains("/bank/total HTTP/1.1"), "{head}");
    assert!(head.contains("webhook-id: hook-1-2\r\n"), "{head}");
    // The signature is a credential: a dead letter names it, redacted
    // (tests/it/secrets.rs checks the rest of the redaction).
    assert!(head.contains("webhook-signature: ***\r\n"), "{head}");
    assert!(head.contains("statestream-attempts: 2"), "{head}");
    let attempted = rx
        .requests()
        .into_iter()
        .find(|r| r.id() == "hook-1-2")
        .unwrap();
    assert_eq!(
        body.as_bytes(),
        attempted.body,
        "the dead letter holds the body sent"
    );
    Ok(())
}

#[test]
fn delivery_per_action_overrides() -> anyhow::Result<()> {
    let rx = Receiver::ok();
    let toml = format!(
        "{}\n[streamers.hook.actions.delete]\nmethod = \"delete\"\nurl = \"{}/gone/{{store}}/{{key}}\"\nheaders = {{ x-why = \"{{action}}\" }}\n",
        app_toml(
            &format!("{}/changes/{{store}}", rx.url()),
            "delivery = \"sync\"\nheaders = { x-service = \"bank\", x-why = \"change\" }"
        ),
        rx.url()
    );
    let mut store = memory_store();
    let mut m = manager(&mut store, &toml)?;
    for b in 1..=2 {
        commit(&mut m, &mut store, |s, k| write_block(s, k, b))?;
    }
    m.close(&mut store)?;
    let got = rx.requests();
    let deletes: Vec<_> = got.iter().filter(|r| r.method == "DELETE").collect();
    assert_eq!(deletes.len(), 1);
    assert_eq!(deletes[0].path, "/gone/acc/a1");
    assert_eq!(deletes[0].header("x-why"), Some("delete"));
    assert_eq!(deletes[0].header("x-service"), Some("bank"));
    assert_eq!(deletes[0].json()["action"], "delete");
    for r in got.iter().filter(|r| r.method == "POST") {
        assert!(r.path.starts_with("/changes/"), "{}", r.path);
        assert_eq!(r.header("x-why"), Some("change"));
    }
    Ok(())
}

#[test]
fn delivery_key_pattern_and_templates() -> anyhow::Result<()> {
    let rx = Receiver::ok();
    let toml = app_toml(
        &format!("{}/users/{{id}}?h={{height}}&s={{store}}", rx.url()),
        "delivery = \"sync\"\nkey_pattern = \"balance/{id}\"\n\
         headers = { x-user = \"{id}\", x-key = \"{key}\" }\n\
         data = { service = \"bank\", id = \"{id}\", tags = [\"{action}\", 7] }",
    );
    let mut store = memory_store();
    let mut m = manager(&mut store, &toml)?;
    for b in 1..=2 {
        commit(&mut m, &mut store, |s, k| write_block(s, k, b))?;
    }
    m.close(&mut store)?;
    let got = rx.requests();
    assert_eq!(got.len(), 2, "only balance/* keys match");
    for (i, r) in got.iter().enumerate() {
        let b = i + 1;
        assert_eq!(r.path, format!("/users/u{b}?h={b}&s=bank"));
        assert_eq!(r.header("x-user"), Some(format!("u{b}").as_str()));
        assert_eq!(r.header("x-key"), Some(format!("balance/u{b}").as_str()));
        assert_eq!(
            r.json()["data"],
            serde_json::json!({ "service": "bank", "id": format!("u{b}"), "tags": ["create", 7] })
        );
        // The id counts every change of the block, matched or not.
        assert_eq!(r.id(), format!("hook-{b}-{}", if b == 1 { 1 } else { 2 }));
    }
    Ok(())
}

#[test]
fn delivery_raw_value_without_envelope() -> anyhow::Result<()> {
    let rx = Receiver::ok();
    let toml = app_toml(
        &format!("{}/{{store}}/{{key}}", rx.url()),
        "delivery = \"sync\"\nenvelope = false",
    );
    let mut store = memory_store();
    let mut m = manager(&mut store, &toml)?;
    for b in 1..=2 {
        commit(&mut m, &mut store, |s, k| write_block(s, k, b))?;
    }
    m.close(&mut store)?;
    let got = rx.requests();
    let a2 = got.iter().find(|r| r.path == "/acc/a2").unwrap();
    assert_eq!(a2.body, b"plain text");
    assert_eq!(a2.header("content-type"), Some("application/octet-stream"));
    let a1_deleted = got.iter().filter(|r| r.path == "/acc/a1").nth(1).unwrap();
    assert!(a1_deleted.body.is_empty());
    Ok(())
}

#[test]
fn delivery_batch_block() -> anyhow::Result<()> {
    let rx = Receiver::ok();
    let toml = app_toml(
        &format!("{}/blocks/{{height}}", rx.url()),
        &format!(
            "delivery = \"sync\"\nbatch = \"block\"\nsecrets = [\"{SECRET}\", \"whsec_c2VjcmV0\"]"
        ),
    );
    let mut store = memory_store();
    let mut m = manager(&mut store, &toml)?;
    for b in 1..=2 {
        commit(&mut m, &mut store, |s, k| write_block(s, k, b))?;
    }
    // A block without changes sends nothing.
    commit(&mut m, &mut store, |_, _| {})?;
    m.close(&mut store)?;
    let got = rx.requests();
    assert_eq!(got.len(), 2);
    let want = expected_changes(2);
    let mut i = 0;
    for (n, r) in got.iter().enumerate() {
        let h = n as u64 + 1;
        r.verify(SECRET).map_err(anyhow::Error::msg)?;
        r.verify("whsec_c2VjcmV0").map_err(anyhow::Error::msg)?;
        assert_eq!(r.header("webhook-signature").unwrap().split(' ').count(), 2);
        assert_eq!(r.id(), format!("hook-{h}"));
        assert_eq!(r.path, format!("/blocks/{h}"));
        let v = r.json();
        assert_eq!(v["height"], h);
        assert_eq!(v["time"], format!("2023-11-14T22:13:{}Z", 20 + h));
        for (j, c) in v["changes"].as_array().unwrap().iter().enumerate() {
            assert!(c.get("height").is_none() && c.get("time").is_none());
            assert_eq!(c["id"], format!("hook-{h}-{j}"));
            let (wh, ws, wk, wa) = &want[i];
            assert_eq!(
                (
                    h,
                    c["store"].as_str().unwrap(),
                    c["key"].as_str().unwrap(),
                    c["action"].as_str().unwrap()
                ),
                (*wh, ws.as_str(), wk.as_str(), wa.as_str())
            );
            i += 1;
        }
    }
    assert_eq!(i, want.len());
    Ok(())
}

#[test]
fn delivery_async_node_keeps_committing_while_the_receiver_is_down() -> anyhow::Result<()> {
    let up = Arc::new(AtomicBool::new(false));
    let rx = {
        let up = Arc::clone(&up);
        Receiver::start(move |_, _| {
            if up.load(Ordering::SeqCst) {
                Reply::status(200)
            } else {
                Reply::status(503)
            }
        })
    };
    // stop-node-on-error = false: an exhausted schedule is attempted again
    // later, so nothing depends on how fast this machine is.
    let toml = app_toml(
        &rx.url(),
        "delivery = \"async\"\nqueue = 2\nstop-node-on-error = false\nretry_schedule_ms = [0, 20, 20, 20]",
    );
    let mut store = memory_store();
    let mut m = manager(&mut store, &toml)?;
    let blocks = 20;
    for b in 1..=blocks {
        commit(&mut m, &mut store, |s, k| write_block(s, k, b))?;
    }
    assert_eq!(
        store.version(),
        blocks,
        "every block committed while the receiver is down"
    );
    let stats = m.stats();
    assert!(stats[0].delivered_height < blocks);
    up.store(true, Ordering::SeqCst);
    m.close(&mut store)?;

    // After deduplication by webhook-id: every change once, in order.
    let mut seen = BTreeSet::new();
    let delivered: Vec<_> = rx
        .requests()
        .into_iter()
        .filter(|r| seen.insert(r.id().to_string()))
        .map(|r| change_of(&r.json()))
        .collect();
    assert_eq!(delivered, expected_changes(blocks));
    Ok(())
}

#[test]
fn delivery_shutdown_mid_retry_then_restart_loses_nothing() -> anyhow::Result<()> {
    let up = Arc::new(AtomicBool::new(false));
    let rx = {
        let up = Arc::clone(&up);
        Receiver::start(move |_, _| {
            if up.load(Ordering::SeqCst) {
                Reply::status(200)
            } else {
                Reply::status(500)
            }
        })
    };
    // The second attempt would wait an hour: shutdown must not.
    let toml = app_toml(
        &rx.url(),
        "delivery = \"async\"\nstop-node-on-error = false\nretry_schedule_ms = [0, 3600000]",
    );
    let mut store = memory_store();
    let mut m = manager_in(&mut store, &toml, std::path::Path::new("."))?;
    for b in 1..=2 {
        commit(&mut m, &mut store, |s, k| write_block(s, k, b))?;
    }
    let first = rx.wait_for(1);
    assert_eq!(first.len(), 1);
    // close() triggers the shutdown signal: the hour-long wait ends.
    m.close(&mut store)?;
    let cursor = store.cursors()?.into_iter().find(|(n, _)| n == "hook");
    assert!(cursor.as_ref().is_none_or(|(_, h)| *h == 0), "{cursor:?}");

    // Restart: the blocks come again from the change log, same ids and
    // bytes.
    up.store(true, Ordering::SeqCst);
    let m = manager(&mut store, &toml)?;
    m.close(&mut store)?;
    let got = rx.requests();
    let again = got
        .iter()
        .skip(1)
        .find(|r| r.id() == first[0].id())
        .expect("the interrupted change is delivered again");
    assert_eq!(again.body, first[0].body);
    let mut seen = BTreeSet::new();
    let delivered: Vec<_> = got
        .iter()
        .filter(|r| r.header("webhook-id").is_some() && seen.insert(r.id().to_string()))
        .map(|r| change_of(&r.json()))
        .collect();
    assert_eq!(delivered, expected_changes(2));
    Ok(())
}

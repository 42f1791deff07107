//! Secrets stay secret: dead letters are private files with their
//! credentials redacted, and a URL or header value with a secret in it is
//! redacted wherever it is shown (log lines, the manager's status, config
//! errors).

use std::io::Write;
use std::sync::{Arc, Mutex};

use crate::receiver::{Receiver, Reply};
use crate::*;

/// The log lines written while `f` runs on this thread (sync delivery runs
/// the streamer on the committing thread).
fn capture_logs<T>(f: impl FnOnce() -> T) -> (T, String) {
    #[derive(Clone)]
    struct Sink(Arc<Mutex<Vec<u8>>>);
    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let sink = Sink(Arc::new(Mutex::new(Vec::new())));
    let writer = sink.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::TRACE)
        .finish();
    let out = tracing::subscriber::with_default(subscriber, f);
    let text = String::from_utf8_lossy(&sink.0.lock().unwrap()).into_owned();
    (out, text)
}

/// Asserts that `text` (`what`) shows the host but none of `secrets`.
fn assert_redacted(what: &str, text: &str, host: &str, secrets: &[&str]) {
    assert!(
        text.contains(host),
        "{what} does not show the host {host}: {text}"
    );
    for s in secrets {
        assert!(!text.contains(s), "{what} shows the secret {s:?}: {text}");
    }
}

/// URLs with a secret in the user information, the path (Slack-style) and
/// the query; `{base}` is the receiver's `127.0.0.1:<port>`.
fn secret_urls(base: &str) -> Vec<(String, Vec<&'static str>)> {
    vec![
        (
            format!("http://alice:hunter2-pw@{base}/hooks"),
            vec!["alice", "hunter2-pw"],
        ),
        (
            format!("http://{base}/services/T000/B000/XXXX"),
            vec!["T000", "B000", "XXXX"],
        ),
        (
            format!("http://{base}/hook?apikey=k3y-secret&token=t0k-secret"),
            vec!["k3y-secret", "t0k-secret"],
        ),
    ]
}

#[test]
fn secrets_dead_letters_are_private_and_redacted() -> anyhow::Result<()> {
    let home = tempfile::tempdir()?;
    let rx = Receiver::start(|_, _| Reply::status(500));
    let base = rx.url().trim_start_matches("http://").to_string();
    let url = format!("http://alice:hunter2-pw@{base}/services/T000/B000/XXXX?apikey=k3y-secret");
    let toml = app_toml(
        &url,
        &format!(
            "delivery = \"sync\"\nsecret = \"{SECRET}\"\non_exhausted = \"dead-letter\"\n\
             retry_schedule_ms = [0]\nkey_pattern = \"total\"\n\
             headers = {{ Authorization = \"Bearer s3cr3t-bearer\", x-api-key = \"s3cr3t-apikey\", \
             x-service = \"bank\" }}"
        ),
    );
    let mut store = memory_store();
    let mut m = manager_in(&mut store, &toml, home.path())?;
    commit(&mut m, &mut store, |s, k| write_block(s, k, 1))?;
    m.close(&mut store)?;

    let sent = rx.wait_for(1);
    assert_eq!(sent.len(), 1, "one attempt");
    let signature = sent[0]
        .header("webhook-signature")
        .expect("the attempt was signed")
        .to_string();
    let dir = home.path().join("data/webhook-dead");
    let path = dir.join("hook-1-2.http");
    let text = String::from_utf8(std::fs::read(&path)?)?;
    let (head, body) = text.split_once("\r\n\r\n").expect("a head and a body");
    assert_redacted(
        "the dead letter",
        head,
        &base,
        &[
            "alice",
            "hunter2",
            "T000",
            "B000",
            "XXXX",
            "k3y-secret",
            "s3cr3t",
            signature.trim_start_matches("v1,"),
        ],
    );
    assert!(
        head.starts_with(&format!(
            "POST http://***@{base}/services/***/***/***?apikey=*** HTTP/1.1\r\n"
        )),
        "{head}"
    );
    assert!(head.contains("authorization: ***\r\n"), "{head}");
    assert!(head.contains("x-api-key: ***\r\n"), "{head}");
    assert!(head.contains("webhook-signature: ***\r\n"), "{head}");
    // What is not a credential stays, so the letter still says what failed.
    assert!(head.contains("x-service: bank\r\n"), "{head}");
    assert!(head.contains("webhook-id: hook-1-2\r\n"), "{head}");
    assert!(
        head.contains("statestream-last-error: status 500"),
        "{head}"
    );
    assert_eq!(body.as_bytes(), sent[0].body, "the body is kept as sent");

    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &std::path::Path| -> anyhow::Result<u32> {
            Ok(std::fs::metadata(p)?.permissions().mode() & 0o777)
        };
        assert_eq!(mode(&path)?, 0o600, "dead letter mode");
        assert_eq!(mode(&dir)?, 0o700, "dead-letter directory mode");
    }
    Ok(())
}

/// A dead-letter directory that exists with group and other access (made
/// by an older version, or by hand) loses that access at start.
#[cfg(unix)]
#[test]
fn secrets_dead_letter_directory_is_made_private() -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let home = tempfile::tempdir()?;
    let dir = home.path().join("dead");
    std::fs::create_dir(&dir)?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))?;
    let toml = app_toml(
        "http://127.0.0.1:9/",
        "on_exhausted = \"dead-letter\"\ndead_letter_dir = \"dead\"",
    );
    let mut store = memory_store();
    let m = manager_in(&mut store, &toml, home.path())?;
    m.close(&mut store)?;
    let mode = std::fs::metadata(&dir)?.permissions().mode() & 0o777;
    assert_eq!(mode, 0o700);
    Ok(())
}

#[test]
fn secrets_redacted_in_logs_and_status() -> anyhow::Result<()> {
    // Block 1's request is discarded (a warning names the URL), block 2's
    // fails (the delivery error names it).
    let rx = Receiver::start(|r, _| {
        Reply::status(if r.id().starts_with("hook-1-") {
            422
        } else {
            500
        })
    });
    let base = rx.url().trim_start_matches("http://").to_string();
    for (url, secrets) in secret_urls(&base) {
        let before = rx.requests().len();
        let toml = app_toml(
            &url,
            "delivery = \"sync\"\nstop-node-on-error = false\nkey_pattern = \"total\"\n\
             discard = [422]\nretry_schedule_ms = [0, 1]",
        );
        let (result, logs) = capture_logs(|| -> anyhow::Result<Option<String>> {
            let mut store = memory_store();
            let mut m = manager(&mut store, &toml)?;
            let observer = m.observer();
            for b in 1..=2 {
                commit(&mut m, &mut store, |s, k| write_block(s, k, b))?;
            }
            let status = observer.status();
            let _ = m.close(&mut store);
            Ok(status.streamers[0].last_error.clone())
        });
        let last_error = result?.expect("the failed delivery is on the status");
        assert!(
            rx.requests().len() > before,
            "{url}: the receiver was reached"
        );
        assert_redacted("the status' last_error", &last_error, &base, &secrets);
        assert!(
            logs.contains("webhook discarded"),
            "the discard is logged: {logs}"
        );
        assert!(
            logs.contains("delivery failed"),
            "the failure is logged: {logs}"
        );
        assert_redacted("the log", &logs, &base, &secrets);
    }
    Ok(())
}

#[test]
fn secrets_redacted_in_config_errors() {
    let cases: Vec<(String, &str, Vec<&str>)> = vec![
        (
            "url = \"http://alice:hunter2-pw@hooks.example/{nope}\"".into(),
            "{nope}",
            vec!["alice", "hunter2-pw"],
        ),
        (
            "url = \"ftp://alice:hunter2-pw@hooks.example/\"".into(),
            "only http and https",
            vec!["alice", "hunter2-pw"],
        ),
        (
            "url = \"https://hooks.example/services/T000/B000/XXXX/{nope}\"".into(),
            "{nope}",
            vec!["T000", "B000", "XXXX"],
        ),
        (
            "url = \"https://hooks.example/hook?apikey=k3y-secret&token=t0k-secret&h={nope}\""
                .into(),
            "{nope}",
            vec!["k3y-secret", "t0k-secret"],
        ),
        (
            "url = \"https://hooks.example/\"\n[streamers.hook.actions.delete]\n\
             url = \"https://alice:hunter2-pw@hooks.example/{key\""
                .into(),
            "unclosed",
            vec!["alice", "hunter2-pw"],
        ),
        (
            "url = \"https://hooks.example/\"\n\
             headers = { Authorization = \"Bearer s3cr3t-bearer {nope}\" }"
                .into(),
            "header \"Authorization\"",
            vec!["s3cr3t"],
        ),
        (
            "url = \"https://hooks.example/\"\nheaders = { x-api-key = \"s3cr3t-key{\" }".into(),
            "header \"x-api-key\"",
            vec!["s3cr3t"],
        ),
    ];
    for (table, want, secrets) in cases {
        let text = format!(
            "[store]\nstreamers = [\"hook\"]\n\n[streamers.hook]\ntype = \"webhook\"\n\
             keys = [\"*\"]\n{table}\n"
        );
        let mut store = memory_store();
        let err = match manager(&mut store, &text) {
            Ok(_) => panic!("{table} should be refused"),
            Err(e) => format!("{e:#}"),
        };
        assert!(err.contains(want), "{table}: {err}");
        assert!(err.contains("[streamers.hook]"), "{table}: {err}");
        for s in secrets {
            assert!(!err.contains(s), "{table}: the error shows {s:?}: {err}");
        }
    }
}

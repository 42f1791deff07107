//! Templates cannot steer a request: variables never reach the scheme or
//! the host, and a value never forms a `.` or `..` path segment.

use crate::receiver::Receiver;
use crate::*;

#[test]
fn templates_variables_in_scheme_or_host_are_refused() {
    let cases = [
        "url = \"https://{key}/\"",
        "url = \"http://{store}.example.com/hooks\"",
        "url = \"http://hooks.example:{height}/\"",
        "url = \"http://{key}@hooks.example/\"",
        "url = \"{store}://hooks.example/\"",
        "url = \"http://hooks.example/\"\n[streamers.hook.actions.delete]\nurl = \"http://{key}/x\"",
    ];
    for table in cases {
        let text = format!(
            "[store]\nstreamers = [\"hook\"]\n\n[streamers.hook]\ntype = \"webhook\"\n\
             keys = [\"*\"]\n{table}\n"
        );
        let mut store = memory_store();
        let err = match manager(&mut store, &text) {
            Ok(_) => panic!("{table} should be refused"),
            Err(e) => format!("{e:#}"),
        };
        assert!(err.contains("scheme or host"), "{table}: {err}");
    }
    // In the path and the query they are fine.
    let ok = app_toml("http://hooks.example/{store}/{key}?h={height}", "");
    let mut store = memory_store();
    let m = manager(&mut store, &ok);
    assert!(m.is_ok(), "{:#}", m.err().unwrap());
}

#[test]
fn templates_dot_segments_written_in_the_url_are_refused() {
    for url in [
        "http://hooks.example/hooks/../notify",
        "http://hooks.example/./x/{key}",
    ] {
        let mut store = memory_store();
        let err = match manager(&mut store, &app_toml(url, "")) {
            Ok(_) => panic!("{url} should be refused"),
            Err(e) => format!("{e:#}"),
        };
        assert!(err.contains("\"..\" segment"), "{url}: {err}");
    }
}

#[test]
fn templates_values_never_form_a_dot_segment() -> anyhow::Result<()> {
    let rx = Receiver::ok();
    // `zz..` makes the wildcard `..`, `zz.` makes it `.`.
    let toml = app_toml(
        &format!("{}/hooks/{{id}}/notify", rx.url()),
        "delivery = \"sync\"\nkey_pattern = \"zz{id}\"",
    );
    let mut store = memory_store();
    let mut m = manager(&mut store, &toml)?;
    commit(&mut m, &mut store, |s, k| {
        for key in ["zz..", "zz.", "zza..b", "zz..."] {
            s.set(&k[1], key.as_bytes(), b"1").unwrap();
        }
    })?;
    // The whole key too.
    let toml_key = app_toml(
        &format!("{}/hooks/{{key}}/.{{key}}/notify", rx.url()),
        "delivery = \"sync\"",
    );
    m.close(&mut store)?;
    let mut m = manager(&mut store, &toml_key)?;
    commit(&mut m, &mut store, |s, k| s.set(&k[1], b".", b"1").unwrap())?;
    m.close(&mut store)?;

    let mut paths: Vec<String> = rx.requests().into_iter().map(|r| r.path).collect();
    paths.sort();
    assert_eq!(
        paths,
        [
            "/hooks/%2E%2E/notify",
            "/hooks/%2E/.%2E/notify",
            "/hooks/%2E/notify",
            "/hooks/.../notify",
            "/hooks/a..b/notify",
        ]
    );
    Ok(())
}

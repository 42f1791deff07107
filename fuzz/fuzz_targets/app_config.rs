//! Arbitrary UTF-8 as an `app.toml`: parsed, resolved against a few store
//! names, and each streamer's options parsed as a file streamer's
//! (`FileStreamerConfig`) and rendered, as `statestream node` would. Every
//! outcome must be a value or an error, never a panic; every error must
//! render to text.
//!
//! `RUSTC_BOOTSTRAP=1 cargo fuzz run app_config` (or `cargo +nightly fuzz
//! run app_config`).

#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use statestream_config::AppConfig;
use statestream_file::FileStreamerConfig;

/// Store-name sets to resolve against: the demo node's, one store, none.
const STORES: [&[&str]; 3] = [&["acc", "bank", "params", "tmp"], &["s"], &[]];

fuzz_target!(|text: &str| {
    let config = match AppConfig::parse(text, Path::new("fuzz/app.toml")) {
        Ok(c) => c,
        Err(e) => {
            let _ = e.to_string();
            return;
        }
    };
    for stores in STORES {
        let specs = match config.resolve(stores) {
            Ok(s) => s,
            Err(e) => {
                let _ = e.to_string();
                continue;
            }
        };
        for spec in &specs {
            assert!(!spec.name.is_empty());
            assert!(spec.queue >= 1);
            match spec.options.parse::<FileStreamerConfig>() {
                Ok(file) => {
                    let _ = format!("{file:?}");
                }
                Err(e) => {
                    let _ = e.to_string();
                }
            }
            let _ = spec.options.error("prefix", "fuzz").to_string();
        }
    }
});

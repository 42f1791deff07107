//! Where `statestream node` puts things and with which permissions: the
//! store file and block files (modes), `write_dir` outside the home and
//! through a symlink.

use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::Path;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_statestream");

fn p(path: &Path) -> &str {
    path.to_str().expect("temp paths are UTF-8")
}

fn node(home: &Path, config: &Path, blocks: &str) {
    let out = Command::new(BIN)
        .args([
            "node",
            "--home",
            p(home),
            "--config",
            p(config),
            "--blocks",
            blocks,
            "-q",
        ])
        .output()
        .expect("run the node");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

/// The umask of this process, which the node inherits (read from /proc:
/// umask(2) would change it for the tests running alongside).
fn umask() -> u32 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Umask:"))
                .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
        })
        .unwrap_or(0o022)
}

fn data_heights(dir: &Path) -> Vec<u64> {
    let mut v: Vec<u64> = std::fs::read_dir(dir)
        .expect("read dir")
        .filter_map(|e| {
            let name = e.expect("entry").file_name().into_string().ok()?;
            name.strip_prefix("block-")?
                .strip_suffix("-data")?
                .parse()
                .ok()
        })
        .collect();
    v.sort();
    v
}

#[test]
fn paths_write_dir_outside_the_home_and_file_modes() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let config = tmp.path().join("app.toml");
    std::fs::write(
        &config,
        "[store]\nstreamers = [\"file\"]\n[streamers.file]\nkeys = [\"*\"]\nwrite_dir = \"../outside\"\n",
    )
    .unwrap();
    node(&home, &config, "2");
    let outside = tmp.path().join("outside");
    assert_eq!(data_heights(&outside), [1, 2]);
    assert!(!home.join("data/streaming").exists());

    let mask = umask();
    assert_eq!(mode(&outside.join("block-1-data")), 0o644 & !mask);
    assert_eq!(mode(&outside.join("block-1-meta")), 0o644 & !mask);
    assert_eq!(mode(&outside), 0o777 & !mask);
    assert_eq!(mode(&home.join("data/store.redb")), 0o666 & !mask);
}

#[test]
fn paths_write_dir_symlink_is_followed_and_may_be_retargeted_between_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    std::fs::create_dir(&a).unwrap();
    std::fs::create_dir(&b).unwrap();
    std::fs::create_dir_all(home.join("data")).unwrap();
    let link = home.join("data/streaming");
    symlink(&a, &link).unwrap();
    let config = tmp.path().join("app.toml");
    std::fs::write(
        &config,
        "[store]\nstreamers = [\"file\"]\n[streamers.file]\nkeys = [\"*\"]\nwrite_dir = \"data/streaming\"\n",
    )
    .unwrap();
    node(&home, &config, "2");
    std::fs::remove_file(&link).unwrap();
    symlink(&b, &link).unwrap();
    node(&home, &config, "2");
    assert_eq!(data_heights(&a), [1, 2]);
    assert_eq!(data_heights(&b), [3, 4]);
    // The link itself is still a link: nothing replaced it.
    assert!(link.symlink_metadata().unwrap().file_type().is_symlink());
}

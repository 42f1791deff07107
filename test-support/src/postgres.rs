//! A real PostgreSQL server for tests (Debian's `postgresql` package):
//! `initdb` into a temporary directory, `postgres` on a free loopback port,
//! stopped and removed on drop (also when a test fails). PostgreSQL refuses
//! to run as root, so under root the server runs as `nobody` (through
//! `setpriv`), its directory handed over to that user.
//!
//! Logins over TCP need the password [`PASSWORD`] of the superuser
//! [`USER`] (scram-sha-256), so tests can also try a wrong one.

use std::fs::File;
use std::net::TcpListener;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The superuser `initdb` creates.
pub const USER: &str = "statestream";

/// Its password.
pub const PASSWORD: &str = "statestream-test-pw";

/// The directory holding `initdb` and `postgres`: `$PG_BIN_DIR`, else the
/// newest `/usr/lib/postgresql/<version>/bin` (Debian), else the directory
/// of an `initdb` on `PATH`.
pub fn bin_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("PG_BIN_DIR") {
        let dir = PathBuf::from(dir);
        return dir.join("initdb").is_file().then_some(dir);
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((v, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Some(bin);
    }
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .find(|d| d.join("initdb").is_file())
}

/// A server, or `None` after [`crate::require`] reported PostgreSQL
/// missing (the test is then skipped, or fails under `CI`).
pub fn start(test: &str) -> Option<PgServer> {
    let bin = bin_dir();
    if !crate::require(
        test,
        "PostgreSQL (initdb)",
        bin.is_some(),
        "apt-get install -y postgresql",
    ) {
        return None;
    }
    let bin = bin?;
    let root = temp_dir();
    std::fs::create_dir_all(&root).expect("create the server's temp dir");
    // The owner of a directory we just made is our effective user.
    let me = std::fs::metadata(&root).expect("stat the temp dir").uid();
    let run_as = (me == 0).then(nobody);
    if let Some((uid, gid)) = run_as {
        std::os::unix::fs::chown(&root, Some(uid), Some(gid)).expect("chown the temp dir");
    }
    let pwfile = root.join("pw");
    std::fs::write(&pwfile, PASSWORD).expect("write the password file");
    if let Some((uid, gid)) = run_as {
        std::os::unix::fs::chown(&pwfile, Some(uid), Some(gid)).expect("chown the password file");
    }
    let data = root.join("data");
    let log = root.join("initdb.log");
    let status = command(run_as, &bin.join("initdb"))
        .arg("-D")
        .arg(&data)
        .args([
            "-U",
            USER,
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
        ])
        .arg(format!("--pwfile={}", pwfile.display()))
        .args(["--no-locale", "-E", "UTF8", "--no-sync"])
        .stdin(Stdio::null())
        .stdout(File::create(&log).expect("create the initdb log"))
        .stderr(File::create(root.join("initdb.err")).expect("create the initdb log"))
        .status()
        .expect("run initdb");
    if !status.success() {
        let err = std::fs::read_to_string(root.join("initdb.err")).unwrap_or_default();
        let _ = std::fs::remove_dir_all(&root);
        panic!("initdb failed ({status}): {err}");
    }
    let mut server = PgServer {
        bin,
        root,
        data,
        port: free_port(),
        run_as,
        child: None,
    };
    server.start();
    Some(server)
}

/// A running (or stopped) test server.
pub struct PgServer {
    bin: PathBuf,
    root: PathBuf,
    data: PathBuf,
    port: u16,
    run_as: Option<(u32, u32)>,
    child: Option<Child>,
}

impl PgServer {
    /// The port it listens on (on 127.0.0.1), the same across restarts.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A URL for database `db` as the superuser, with the password.
    pub fn url(&self, db: &str) -> String {
        format!(
            "postgresql://{USER}:{PASSWORD}@127.0.0.1:{}/{db}",
            self.port
        )
    }

    /// Whether the server process runs.
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// The server's log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.root.join("postgres.log")).unwrap_or_default()
    }

    /// Starts the server (again) and waits until it accepts connections.
    pub fn start(&mut self) {
        if self.child.is_some() {
            return;
        }
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.root.join("postgres.log"))
            .expect("open the server log");
        let child = command(self.run_as, &self.bin.join("postgres"))
            .arg("-D")
            .arg(&self.data)
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .arg("-k")
            .arg(&self.root)
            // The tests crash the node, not the server: durability of the
            // server's own files is not what they test.
            .args(["-c", "fsync=off", "-c", "full_page_writes=off"])
            .args(["-c", "max_connections=40", "-c", "shared_buffers=32MB"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start postgres");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                panic!("postgres exited at start ({status}): {}", self.log());
            }
            let ready = Command::new(self.bin.join("pg_isready"))
                .args(["-q", "-h", "127.0.0.1", "-p", &self.port.to_string()])
                .stdin(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ready {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "postgres not ready after 60 s: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Turns TLS on (`ssl = on`) with the certificate chain `cert_pem` and
    /// its key `key_pem` (PEM text), and restarts the server. The files go
    /// into the data directory as `server.crt` and `server.key` (the
    /// defaults of `ssl_cert_file` and `ssl_key_file`), owned by the
    /// server's user with mode 0600, which PostgreSQL requires of a key.
    /// Plain connections are still accepted (`host` lines of `pg_hba.conf`
    /// match both).
    pub fn enable_tls(&mut self, cert_pem: &str, key_pem: &str) {
        use std::io::Write as _;
        use std::os::unix::fs::PermissionsExt;
        for (name, text) in [("server.crt", cert_pem), ("server.key", key_pem)] {
            let path = self.data.join(name);
            std::fs::write(&path, text).expect("write a TLS file into the data directory");
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                .expect("chmod a TLS file");
            if let Some((uid, gid)) = self.run_as {
                std::os::unix::fs::chown(&path, Some(uid), Some(gid)).expect("chown a TLS file");
            }
        }
        let mut conf = File::options()
            .append(true)
            .open(self.data.join("postgresql.conf"))
            .expect("open postgresql.conf");
        writeln!(conf, "ssl = on").expect("write postgresql.conf");
        self.stop();
        self.start();
    }

    /// Stops the server with a fast shutdown (SIGINT: clients are
    /// disconnected, open transactions roll back) and waits for it.
    pub fn stop(&mut self) {
        self.signal("-INT");
    }

    /// Stops the server with an immediate shutdown (SIGQUIT: like a crash,
    /// recovery at the next start).
    pub fn crash(&mut self) {
        self.signal("-QUIT");
    }

    fn signal(&mut self, signal: &str) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args([signal, &child.id().to_string()])
                .status();
            let _ = child.wait();
        }
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        self.crash();
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// `program`, run as `run_as` (uid, gid) through `setpriv` when given.
fn command(run_as: Option<(u32, u32)>, program: &Path) -> Command {
    match run_as {
        Some((uid, gid)) => {
            let mut c = Command::new("setpriv");
            c.args([
                "--reuid",
                &uid.to_string(),
                "--regid",
                &gid.to_string(),
                "--clear-groups",
                "--",
            ])
            .arg(program)
            // `nobody` has no home; initdb and postgres need none.
            .env("HOME", "/");
            c
        }
        None => Command::new(program),
    }
}

/// The uid and gid of `nobody`, from `/etc/passwd`.
fn nobody() -> (u32, u32) {
    let passwd = std::fs::read_to_string("/etc/passwd").expect("read /etc/passwd");
    passwd
        .lines()
        .find_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            (f.first() == Some(&"nobody") && f.len() > 3)
                .then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))
                .flatten()
        })
        .expect("a user nobody in /etc/passwd (PostgreSQL does not run as root)")
}

/// A fresh directory name under the system's temporary directory.
fn temp_dir() -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    std::env::temp_dir().join(format!(
        "statestream-pg-{}-{}-{nanos}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ))
}

/// A port no one listens on now. PostgreSQL takes a port number, not a
/// socket, so the port is chosen by the OS and then released: another
/// process could take it in between, which the start reports.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind a free loopback port")
}

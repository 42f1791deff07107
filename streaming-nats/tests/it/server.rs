//! A real `nats-server -js` for the tests: started on a free loopback port
//! with its JetStream store in a temporary directory, killed and reaped on
//! drop (also when a test fails).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use statestream_nats::{Client, ConnectOptions};

/// Where `nats-server` is: `$NATS_SERVER`, then `PATH`, then the Debian
/// package's location.
pub fn nats_server_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("NATS_SERVER") {
        let p = PathBuf::from(p);
        return p.is_file().then_some(p);
    }
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.extend(["/usr/sbin", "/usr/bin", "/usr/local/bin"].map(PathBuf::from));
    dirs.into_iter()
        .map(|d| d.join("nats-server"))
        .find(|p| p.is_file())
}

/// The server, or `None` after printing a notice when `nats-server` is not
/// installed (the test is then skipped).
pub fn start(test: &str) -> Option<NatsServer> {
    start_with(test, None)
}

/// Like [`start`], with a `max_payload` in the server's configuration.
pub fn start_with(test: &str, max_payload: Option<usize>) -> Option<NatsServer> {
    let extra = max_payload.map(|m| format!("max_payload: {m}\n"));
    start_conf(test, &extra.unwrap_or_default(), None)
}

/// Like [`start`], with `extra` lines in the server's configuration, and
/// the credentials the harness connects with.
pub fn start_conf(test: &str, extra: &str, auth: Option<Auth>) -> Option<NatsServer> {
    let binary = nats_server_binary();
    if !statestream_test_support::require(
        test,
        "nats-server",
        binary.is_some(),
        "apt-get install -y nats-server",
    ) {
        return None;
    }
    let binary = binary?;
    let dir = tempfile::tempdir().expect("temp dir");
    let port = free_port();
    let conf = dir.path().join("nats.conf");
    let store_dir = dir.path().join("js");
    let mut text = format!(
        "listen: \"127.0.0.1:{port}\"\njetstream {{\n  store_dir: \"{}\"\n}}\n",
        store_dir.display()
    );
    text.push_str(extra);
    std::fs::write(&conf, text).expect("write nats.conf");
    let mut server = NatsServer {
        binary,
        child: None,
        port,
        conf,
        dir,
        auth,
    };
    server.launch();
    Some(server)
}

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().expect("local addr").port()
}

pub struct NatsServer {
    binary: PathBuf,
    child: Option<Child>,
    port: u16,
    conf: PathBuf,
    dir: tempfile::TempDir,
    auth: Option<Auth>,
}

/// How the harness authenticates.
#[derive(Debug, Clone)]
pub enum Auth {
    Token(String),
    User(String, String),
}

impl NatsServer {
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("nats.log")
    }

    fn launch(&mut self) {
        assert!(self.child.is_none(), "the server is already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("open the server log");
        let child = Command::new(&self.binary)
            .arg("-js")
            .arg("-c")
            .arg(&self.conf)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.binary.display()));
        self.child = Some(child);
        self.wait_ready();
    }

    /// Waits until JetStream answers API calls.
    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut last = String::new();
        while Instant::now() < deadline {
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                panic!("nats-server exited with {status}; its log:\n{}", self.log());
            }
            let mut opts = self.options();
            opts.connect_timeout = Duration::from_secs(1);
            opts.request_timeout = Duration::from_secs(2);
            match Client::connect(&opts).and_then(|mut c| c.stream_info("readiness-probe")) {
                Ok(_) => return,
                Err(e) => last = e.to_string(),
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "nats-server is not ready after 30 s ({last}); its log:\n{}",
            self.log()
        );
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Kills the server (SIGKILL: a crash) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again, same port and store directory.
    pub fn restart(&mut self) {
        self.kill();
        self.launch();
    }

    fn options(&self) -> ConnectOptions {
        let mut opts = ConnectOptions::new(&self.url());
        match &self.auth {
            Some(Auth::Token(t)) => opts.token = Some(t.clone()),
            Some(Auth::User(u, p)) => {
                opts.user = Some(u.clone());
                opts.password = Some(p.clone());
            }
            None => {}
        }
        opts
    }

    pub fn client(&self) -> Client {
        Client::connect(&self.options()).expect("connect to the test server")
    }

    #[allow(dead_code)]
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

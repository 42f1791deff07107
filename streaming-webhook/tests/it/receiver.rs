//! A real HTTP/1.1 receiver on a loopback port chosen by the OS: it records
//! every request (before answering, so attempts that time out are seen
//! too) and answers what a script says.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One request as received.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    pub path: String,
    /// Names lowercase.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub at: Instant,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn id(&self) -> &str {
        self.header("webhook-id")
            .expect("every request has a webhook-id")
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("the body is JSON")
    }

    /// Checks the Standard Webhooks signature with the `standardwebhooks`
    /// crate (an independent implementation).
    pub fn verify(&self, secret: &str) -> Result<(), String> {
        let mut map = ureq::http::HeaderMap::new();
        for (n, v) in &self.headers {
            let name =
                ureq::http::HeaderName::from_bytes(n.as_bytes()).map_err(|e| e.to_string())?;
            let value = ureq::http::HeaderValue::from_str(v).map_err(|e| e.to_string())?;
            map.append(name, value);
        }
        let wh = standardwebhooks::Webhook::new(secret).map_err(|e| format!("{e:?}"))?;
        wh.verify(&self.body, &map).map_err(|e| format!("{e:?}"))
    }
}

/// What to answer.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    /// Wait this long before answering (longer than the streamer's
    /// timeout: the attempt times out).
    pub delay: Duration,
}

impl Reply {
    pub fn status(status: u16) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            delay: Duration::ZERO,
        }
    }

    pub fn header(mut self, name: &str, value: &str) -> Reply {
        self.headers.push((name.into(), value.into()));
        self
    }

    pub fn delay(mut self, d: Duration) -> Reply {
        self.delay = d;
        self
    }
}

type Script = Box<dyn FnMut(&Received, usize) -> Reply + Send>;

pub struct Receiver {
    port: u16,
    log: Arc<Mutex<Vec<Received>>>,
}

impl Receiver {
    /// Answers 200 to everything.
    pub fn ok() -> Receiver {
        Receiver::start(|_, _| Reply::status(200))
    }

    /// `script(request, n)` answers the `n`th request (from 0).
    pub fn start(script: impl FnMut(&Received, usize) -> Reply + Send + 'static) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
        let port = listener.local_addr().expect("bound address").port();
        let log = Arc::new(Mutex::new(Vec::new()));
        let script: Arc<Mutex<Script>> = Arc::new(Mutex::new(Box::new(script)));
        {
            let log = Arc::clone(&log);
            std::thread::spawn(move || {
                for conn in listener.incoming() {
                    let Ok(conn) = conn else { continue };
                    let log = Arc::clone(&log);
                    let script = Arc::clone(&script);
                    std::thread::spawn(move || serve(conn, &log, &script));
                }
            });
        }
        Receiver { port, log }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn requests(&self) -> Vec<Received> {
        self.log.lock().unwrap().clone()
    }

    /// Waits (up to a minute) until `n` requests have arrived.
    pub fn wait_for(&self, n: usize) -> Vec<Received> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let got = self.requests();
            if got.len() >= n || Instant::now() > deadline {
                return got;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

fn serve(conn: TcpStream, log: &Mutex<Vec<Received>>, script: &Mutex<Script>) {
    let mut writer = match conn.try_clone() {
        Ok(w) => w,
        Err(_) => return,
    };
    let mut reader = BufReader::new(conn);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut parts = line.split_whitespace();
        let method = parts.next().unwrap_or_default().to_string();
        let path = parts.next().unwrap_or_default().to_string();
        let mut headers = Vec::new();
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((n, v)) = h.split_once(':') {
                headers.push((n.trim().to_ascii_lowercase(), v.trim().to_string()));
            }
        }
        let len: usize = headers
            .iter()
            .find(|(n, _)| n == "content-length")
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0; len];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let req = Received {
            method,
            path,
            headers,
            body,
            at: Instant::now(),
        };
        let reply = {
            let mut log = log.lock().unwrap();
            let n = log.len();
            log.push(req.clone());
            (script.lock().unwrap())(&req, n)
        };
        std::thread::sleep(reply.delay);
        let mut out = format!("HTTP/1.1 {} Status\r\ncontent-length: 0\r\n", reply.status);
        for (n, v) in &reply.headers {
            out.push_str(&format!("{n}: {v}\r\n"));
        }
        out.push_str("\r\n");
        if writer.write_all(out.as_bytes()).is_err() {
            return;
        }
    }
}

//! A keep-alive HTTP/1.1 server on a loopback port that answers every
//! request `200` at once, for benchmarks that measure a client (the
//! webhook streamer, subscriptions) and not the server: one thread per
//! connection, the request head read line by line, the body by its
//! `content-length`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;

/// Starts the server; `on_body` is called with each request's body after
/// its answer is written. Returns `http://127.0.0.1:PORT`.
///
/// # Panics
///
/// When no loopback port can be bound.
pub fn start(on_body: impl Fn(Vec<u8>) + Send + Sync + 'static) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    let addr = listener.local_addr().expect("its address");
    let on_body = Arc::new(on_body);
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let on_body = Arc::clone(&on_body);
            std::thread::spawn(move || serve(conn, &*on_body));
        }
    });
    format!("http://{addr}")
}

fn serve(conn: TcpStream, on_body: &dyn Fn(Vec<u8>)) {
    let Ok(mut writer) = conn.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(conn);
    let mut line = String::new();
    loop {
        let mut len = 0usize;
        line.clear();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        loop {
            line.clear();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let h = line.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((n, v)) = h.split_once(':')
                && n.eq_ignore_ascii_case("content-length")
            {
                len = v.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0; len];
        if reader.read_exact(&mut body).is_err()
            || writer
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                .is_err()
        {
            return;
        }
        on_body(body);
    }
}

//! The Host check: a request must name the server by a name it is for.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{Either, Full};

/// The body of a [`HostCheckService`]'s responses: the inner service's, or
/// the `421` error.
pub type HostCheckBody<B> = Either<B, Full<Bytes>>;

/// A tower layer that answers `421 Misdirected Request` (with a one-line
/// JSON body) to any request whose host is not one the listener is for.
///
/// The host is HTTP/2's `:authority`, else the `Host` header; its port,
/// when written, is ignored, and names compare without case. Accepted:
/// `localhost`, `127.0.0.1` and `[::1]`; the address the listener is bound
/// to, unless a wildcard (`0.0.0.0`, `[::]`); and each entry of
/// `allowed_hosts` (a host name or an IP address; `*` accepts any host,
/// turning the check off). A request with no host at all is refused too.
///
/// It guards against DNS rebinding: a web page served from an attacker's
/// name that later resolves to 127.0.0.1 reaches a loopback server with
/// the attacker's name in `Host`.
#[derive(Debug, Clone)]
pub struct HostCheck {
    allowed: Arc<Allowed>,
}

#[derive(Debug)]
struct Allowed {
    any: bool,
    names: Vec<String>,
}

impl HostCheck {
    /// The check for a listener bound to `bound`, accepting also
    /// `allowed_hosts`.
    pub fn for_listener<I, H>(bound: SocketAddr, allowed_hosts: I) -> HostCheck
    where
        I: IntoIterator<Item = H>,
        H: AsRef<str>,
    {
        let mut names: Vec<String> = ["localhost", "127.0.0.1", "[::1]"]
            .into_iter()
            .map(str::to_owned)
            .collect();
        if !bound.ip().is_unspecified() {
            names.push(match bound.ip() {
                IpAddr::V4(ip) => ip.to_string(),
                IpAddr::V6(ip) => format!("[{ip}]"),
            });
        }
        let mut any = false;
        for host in allowed_hosts {
            let host = host.as_ref().trim();
            if host == "*" {
                any = true;
            } else if let Ok(ip) = host.trim_matches(['[', ']']).parse::<IpAddr>() {
                names.push(match ip {
                    IpAddr::V4(ip) => ip.to_string(),
                    IpAddr::V6(ip) => format!("[{ip}]"),
                });
            } else {
                names.push(normalize(host).to_owned());
            }
        }
        HostCheck {
            allowed: Arc::new(Allowed { any, names }),
        }
    }

    /// Whether a request naming `host` (a `Host` header's value: a name or
    /// an IP address, with or without a port) passes.
    pub fn allows(&self, host: &str) -> bool {
        if self.allowed.any {
            return true;
        }
        let Some(name) = host_name(host) else {
            return false;
        };
        let name = match name.trim_matches(['[', ']']).parse::<IpAddr>() {
            // The canonical spelling, so that `[::0:1]` is `[::1]`.
            Ok(IpAddr::V6(ip)) => format!("[{ip}]"),
            Ok(IpAddr::V4(ip)) => ip.to_string(),
            Err(_) => normalize(name).to_owned(),
        };
        self.allowed
            .names
            .iter()
            .any(|allowed| allowed.eq_ignore_ascii_case(&name))
    }
}

/// A name without its trailing dot (`localhost.` is `localhost`).
fn normalize(name: &str) -> &str {
    name.strip_suffix('.').unwrap_or(name)
}

/// The host of a `Host` value, without its port.
fn host_name(host: &str) -> Option<&str> {
    let host = host.trim();
    if host.is_empty() {
        return None;
    }
    if host.starts_with('[') {
        // `[v6]` or `[v6]:port`.
        let end = host.find(']')?;
        let rest = &host[end + 1..];
        if !rest.is_empty() && !is_port(rest.strip_prefix(':')?) {
            return None;
        }
        return Some(&host[..=end]);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if is_port(port) && !name.contains(':') => Some(name),
        Some(_) => None,
        None => Some(host),
    }
}

fn is_port(text: &str) -> bool {
    !text.is_empty() && text.len() <= 5 && text.bytes().all(|b| b.is_ascii_digit())
}

impl<S> tower::Layer<S> for HostCheck {
    type Service = HostCheckService<S>;

    fn layer(&self, inner: S) -> HostCheckService<S> {
        HostCheckService {
            check: self.clone(),
            inner,
        }
    }
}

/// The service [`HostCheck`] wraps around another.
#[derive(Debug, Clone)]
pub struct HostCheckService<S> {
    check: HostCheck,
    inner: S,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, ReqBody, B> tower::Service<Request<ReqBody>> for HostCheckService<S>
where
    S: tower::Service<Request<ReqBody>, Response = Response<B>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
{
    type Response = Response<HostCheckBody<B>>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let host = request
            .uri()
            .authority()
            .map(|a| a.as_str().to_owned())
            .or_else(|| {
                request
                    .headers()
                    .get(header::HOST)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned)
            });
        match host {
            Some(host) if self.check.allows(&host) => {
                let future = self.inner.call(request);
                Box::pin(async move { Ok(future.await?.map(Either::Left)) })
            }
            host => {
                let shown = host.as_deref().unwrap_or("(none)");
                tracing::debug!(host = shown, "refused a request for a foreign host");
                Box::pin(std::future::ready(Ok(misdirected(host.as_deref()))))
            }
        }
    }
}

fn misdirected<B>(host: Option<&str>) -> Response<HostCheckBody<B>> {
    let message = match host {
        Some(host) => format!(
            "host {} is not served here (add it to allowed_hosts)",
            json_string(host)
        ),
        None => "the request names no host".to_owned(),
    };
    let body = format!("{{\"error\":{}}}\n", json_string(&message));
    let mut response = Response::new(Either::Right(Full::new(Bytes::from(body))));
    *response.status_mut() = StatusCode::MISDIRECTED_REQUEST;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// `text` as a JSON string literal, without a JSON library for one line.
fn json_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if u32::from(c) < 0x20 => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(bound: &str, allowed: &[&str]) -> HostCheck {
        HostCheck::for_listener(bound.parse().expect("an address"), allowed)
    }

    #[test]
    fn host_loopback_names_with_and_without_port() {
        let c = check("127.0.0.1:9100", &[]);
        for host in [
            "localhost",
            "localhost:9100",
            "LOCALHOST:1",
            "localhost.",
            "127.0.0.1",
            "127.0.0.1:9100",
            "[::1]",
            "[::1]:9100",
            "[0:0::1]:9100",
        ] {
            assert!(c.allows(host), "{host}");
        }
        for host in [
            "evil.example",
            "evil.example:9100",
            "localhost.evil.example",
            "127.0.0.2",
            "",
            "localhost:x",
            "[::1",
            "::1",
        ] {
            assert!(!c.allows(host), "{host}");
        }
    }

    #[test]
    fn host_bind_address_unless_wildcard() {
        assert!(check("10.1.2.3:80", &[]).allows("10.1.2.3:80"));
        assert!(check("[fe80::2]:80", &[]).allows("[fe80::2]"));
        assert!(!check("0.0.0.0:80", &[]).allows("0.0.0.0:80"));
        assert!(!check("0.0.0.0:80", &[]).allows("10.1.2.3"));
    }

    #[test]
    fn host_allowed_hosts_and_star() {
        let c = check("0.0.0.0:80", &["Metrics.Internal", "10.0.0.7", "::2"]);
        assert!(c.allows("metrics.internal:80"));
        assert!(c.allows("10.0.0.7"));
        assert!(c.allows("[::2]:1"));
        assert!(!c.allows("other.internal"));
        assert!(check("127.0.0.1:80", &["*"]).allows("anything.example"));
    }

    #[test]
    fn host_error_body_is_one_json_line() {
        let response = misdirected::<Full<Bytes>>(Some("a\"b\n"));
        assert_eq!(response.status(), StatusCode::MISDIRECTED_REQUEST);
        assert_eq!(json_string("a\"b\n\\"), r#""a\"b\u000a\\""#);
    }
}

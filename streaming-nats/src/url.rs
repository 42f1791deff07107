//! The `url` option: one server address or several (a cluster), checked
//! here so that a bad address is a configuration error naming the key, and
//! redacted everywhere it is printed.

use crate::error::{NatsError, Result};

/// The port of an address without one.
pub(crate) const DEFAULT_PORT: u16 = 4222;

/// One parsed server address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ServerUrl {
    /// `true` for `tls://`: the connection must be TLS.
    pub(crate) tls: bool,
    pub(crate) host: String,
    pub(crate) port: u16,
    pub(crate) user: Option<String>,
    pub(crate) password: Option<String>,
    pub(crate) token: Option<String>,
}

impl ServerUrl {
    /// Parses `nats://[cred@]host[:port]`, `tls://…`, `host:port` or `host`.
    pub(crate) fn parse(url: &str) -> Result<ServerUrl> {
        let bad = |reason: &str| NatsError::BadUrl {
            url: redact_url(url),
            reason: reason.to_string(),
        };
        let (tls, rest) = match url.split_once("://") {
            Some(("nats" | "tcp", rest)) => (false, rest),
            Some(("tls", rest)) => (true, rest),
            Some((scheme, _)) => {
                return Err(bad(&format!(
                    "scheme {scheme:?} is not supported (use nats:// or tls://)"
                )));
            }
            None => (false, url),
        };
        let rest = rest.trim_end_matches('/');
        let (auth, hostport) = match rest.rsplit_once('@') {
            Some((a, h)) => (Some(a), h),
            None => (None, rest),
        };
        let (mut user, mut password, mut token) = (None, None, None);
        if let Some(a) = auth {
            match a.split_once(':') {
                Some((u, p)) => {
                    user = Some(u.to_string());
                    password = Some(p.to_string());
                }
                None => token = Some(a.to_string()),
            }
        }
        if hostport.contains('/') {
            return Err(bad("a path is not allowed"));
        }
        let (host, port) = if let Some(h) = hostport.strip_prefix('[') {
            // [ipv6]:port
            let (h, p) = h.split_once(']').ok_or_else(|| bad("unclosed '['"))?;
            let port = match p.strip_prefix(':') {
                Some(p) => p.parse().map_err(|_| bad("bad port"))?,
                None if p.is_empty() => DEFAULT_PORT,
                None => return Err(bad("bad port")),
            };
            (h.to_string(), port)
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), p.parse().map_err(|_| bad("bad port"))?),
                None => (hostport.to_string(), DEFAULT_PORT),
            }
        };
        if host.is_empty() {
            return Err(bad("no host"));
        }
        if host.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(bad("the host may not contain whitespace"));
        }
        Ok(ServerUrl {
            tls,
            host,
            port,
            user,
            password,
            token,
        })
    }

    /// The address without credentials, as the client is given it and as
    /// messages show it.
    pub(crate) fn address(&self) -> String {
        let scheme = if self.tls { "tls" } else { "nats" };
        if self.host.contains(':') {
            format!("{scheme}://[{}]:{}", self.host, self.port)
        } else {
            format!("{scheme}://{}:{}", self.host, self.port)
        }
    }
}

/// Every address of a `url` option (separated by commas), in order.
pub(crate) fn parse_servers(url: &str) -> Result<Vec<ServerUrl>> {
    let servers = url
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(ServerUrl::parse)
        .collect::<Result<Vec<_>>>()?;
    if servers.is_empty() {
        return Err(NatsError::BadUrl {
            url: String::new(),
            reason: "no server address".into(),
        });
    }
    Ok(servers)
}

/// `url` (one address or a list) without its credentials, for messages
/// and logs.
pub(crate) fn redact_url(url: &str) -> String {
    url.split(',')
        .map(|one| match one.rsplit_once('@') {
            Some((before, host)) => match before.split_once("://") {
                Some((scheme, _)) => format!("{scheme}://<redacted>@{host}"),
                None => format!("<redacted>@{host}"),
            },
            None => one.to_string(),
        })
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse() {
        let u = ServerUrl::parse("nats://alice:pw@h:1").unwrap();
        assert_eq!(
            (u.tls, u.host.as_str(), u.port, u.user.as_deref()),
            (false, "h", 1, Some("alice"))
        );
        assert_eq!(u.address(), "nats://h:1");
        let u = ServerUrl::parse("tls://tok@[::1]").unwrap();
        assert_eq!(
            (u.tls, u.port, u.token.as_deref()),
            (true, 4222, Some("tok"))
        );
        assert_eq!(u.address(), "tls://[::1]:4222");
        assert_eq!(ServerUrl::parse("h").unwrap().address(), "nats://h:4222");
        assert!(ServerUrl::parse("ws://h").is_err());
        assert!(ServerUrl::parse("nats://h:x").is_err());
        assert!(ServerUrl::parse("nats://h/p").is_err());
        assert_eq!(parse_servers("a:1, tls://b:2").unwrap().len(), 2);
        assert!(parse_servers(" , ").is_err());
    }

    #[test]
    fn urls_redact() {
        assert_eq!(
            redact_url("nats://u:secret@h:1,tok@g"),
            "nats://<redacted>@h:1,<redacted>@g"
        );
        assert_eq!(redact_url("nats://h:1"), "nats://h:1");
    }
}

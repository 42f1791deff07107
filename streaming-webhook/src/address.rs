//! Where requests may go: ureq's resolver with two changes, and the test
//! of a public address that subscriptions owned by consumers are held to.

use std::io;
use std::net::{IpAddr, SocketAddr};

use ureq::unversioned::resolver::{DefaultResolver, ResolvedSocketAddrs, Resolver};
use ureq::unversioned::transport::NextTimeout;

/// Whether `ip` is a public address: not loopback, private, link-local,
/// unspecified, broadcast, multicast, shared (100.64.0.0/10) or unique
/// local (fc00::/7).
pub fn is_public_address(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                // 100.64.0.0/10, shared address space.
                || (o[0] == 100 && (64..128).contains(&o[1])))
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public_address(&IpAddr::V4(v4));
            }
            let s = v6.segments();
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80)
        }
    }
}

/// ureq's resolver, except:
/// - an IP address in the URL is used as it is. ureq resolves the host
///   before it looks for a pooled connection, and with a timeout set its
///   resolver does so on a new thread: a thread per request, even to
///   `127.0.0.1` on a kept-alive connection (the subscriptions bench:
///   5,600 threads for 4,000 requests, and the TLB flushes of their
///   stacks). Host names still go through ureq's resolver, within the
///   timeout;
/// - with `public_only`, only public addresses are kept, at every
///   connection: a host name that resolved to a public address when a
///   subscription was made and to a private one later (DNS rebinding)
///   is refused then too.
#[derive(Debug)]
pub(crate) struct Resolve {
    pub(crate) public_only: bool,
}

impl Resolver for Resolve {
    fn resolve(
        &self,
        uri: &ureq::http::Uri,
        config: &ureq::config::Config,
        timeout: NextTimeout,
    ) -> Result<ResolvedSocketAddrs, ureq::Error> {
        let mut addrs = self.literal(uri).map_or_else(
            || DefaultResolver::default().resolve(uri, config, timeout),
            Ok,
        )?;
        if self.public_only {
            let all: Vec<SocketAddr> = addrs.iter().copied().collect();
            addrs = self.empty();
            for a in all.iter().filter(|a| is_public_address(&a.ip())) {
                addrs.push(*a);
            }
            if addrs.is_empty() {
                let shown: Vec<String> = all.iter().map(|a| a.ip().to_string()).collect();
                return Err(ureq::Error::Io(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    format!(
                        "{} resolves only to private addresses ({}): only public endpoints are allowed",
                        uri.host().unwrap_or_default(),
                        shown.join(", ")
                    ),
                )));
            }
        }
        Ok(addrs)
    }
}

impl Resolve {
    /// The address of a URL whose host is an IP address.
    fn literal(&self, uri: &ureq::http::Uri) -> Option<ResolvedSocketAddrs> {
        let authority = uri.authority()?;
        let host = authority.host();
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        let port = authority.port_u16().or(match uri.scheme_str() {
            Some("http") => Some(80),
            Some("https") => Some(443),
            _ => None,
        })?;
        let ip = host.parse::<IpAddr>().ok()?;
        let mut addrs = self.empty();
        addrs.push(SocketAddr::new(ip, port));
        Some(addrs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_addresses() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "192.168.0.1",
            "172.16.0.1",
            "169.254.1.1",
            "0.0.0.0",
            "100.64.0.1",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:10.0.0.1",
        ] {
            assert!(!is_public_address(&ip.parse().unwrap()), "{ip}");
        }
        for ip in [
            "8.8.8.8",
            "100.128.0.1",
            "2001:4860::8888",
            "::ffff:8.8.8.8",
        ] {
            assert!(is_public_address(&ip.parse().unwrap()), "{ip}");
        }
    }
}

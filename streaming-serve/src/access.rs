//! The one access check of every front-end: a request's credential (the
//! bearer token it carries, however its protocol carries it) against the
//! streamer's `token`, giving what the request may read or why it may not.
//! Front-ends only find the credential and map [`Denied`] to their own
//! status (gRPC `UNAUTHENTICATED`, HTTP 401).

use std::sync::Arc;

use crate::filter::Filter;

/// The streamer's access rule.
#[derive(Debug, Clone)]
pub struct Access {
    token: Arc<str>,
}

/// Why a request is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    /// A token is required and the request carries none.
    #[error("missing token")]
    Missing,
    /// The request's token is not the streamer's.
    #[error("wrong token")]
    Wrong,
}

/// What an admitted request may read. Every store the streamer streams:
/// one token grants everything.
#[derive(Debug, Clone)]
pub struct Grant(());

impl Grant {
    /// The part of `wanted` this request may read.
    pub fn select(&self, wanted: Filter) -> Filter {
        wanted
    }
}

/// The token of an `authorization` header value (`Bearer <token>`).
pub fn bearer(authorization: &str) -> Option<&str> {
    authorization.strip_prefix("Bearer ")
}

impl Access {
    /// `token`: the streamer's; empty, every request is admitted.
    pub fn new(token: &str) -> Access {
        Access {
            token: token.into(),
        }
    }

    /// Admits a request carrying `credential` (its bearer token, if any).
    pub fn check(&self, credential: Option<&str>) -> Result<Grant, Denied> {
        if self.token.is_empty() {
            return Ok(Grant(()));
        }
        match credential {
            None => Err(Denied::Missing),
            Some(t) if constant_time_eq(t.as_bytes(), self.token.as_bytes()) => Ok(Grant(())),
            Some(_) => Err(Denied::Wrong),
        }
    }
}

/// Compares without stopping at the first difference, so the time taken
/// tells nothing about how much of a guessed token was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_token_admits_everyone_and_a_token_is_checked() {
        assert!(Access::new("").check(None).is_ok());
        let access = Access::new("s3cret");
        assert_eq!(access.check(None).unwrap_err(), Denied::Missing);
        assert_eq!(access.check(Some("s3cre")).unwrap_err(), Denied::Wrong);
        assert_eq!(access.check(Some("s3creT")).unwrap_err(), Denied::Wrong);
        assert!(access.check(Some("s3cret")).is_ok());
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
    }
}

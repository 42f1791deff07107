//! A credential as stored and as shown: its scopes, permissions, limits,
//! and the hashes of its secrets.

use serde::{Deserialize, Serialize};

use crate::error::AccessError;
use crate::time::{format_rfc3339, parse_rfc3339};

/// The store name of a scope covering every streamed store.
pub const ANY_STORE: &str = "*";

/// The longest credential id.
pub const MAX_ID_LEN: usize = 64;

/// One scope: a store (or `*`, every streamed store) and the key prefixes
/// in it a credential may read (none: the whole store).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "ScopeText", into = "ScopeText")]
pub struct Scope {
    pub store: String,
    pub prefixes: Vec<Vec<u8>>,
}

/// A scope as JSON: prefixes as text (UTF-8, or `0x` and hex).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScopeText {
    pub store: String,
    #[serde(default)]
    pub prefixes: Vec<String>,
}

impl TryFrom<ScopeText> for Scope {
    type Error = String;

    fn try_from(t: ScopeText) -> Result<Scope, String> {
        if t.store.is_empty() {
            return Err("scopes: a scope's store is empty (a store name, or \"*\")".into());
        }
        let prefixes = t
            .prefixes
            .iter()
            .map(|p| prefix_from_text(p))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Scope {
            store: t.store,
            prefixes,
        })
    }
}

impl From<Scope> for ScopeText {
    fn from(s: Scope) -> ScopeText {
        ScopeText {
            store: s.store,
            prefixes: s.prefixes.iter().map(|p| prefix_to_text(p)).collect(),
        }
    }
}

impl Scope {
    /// Whether the scope covers the whole of its store(s).
    pub fn whole(&self) -> bool {
        self.prefixes.is_empty() || self.prefixes.iter().any(Vec::is_empty)
    }

    /// Whether the scope applies to `store`.
    pub fn names(&self, store: &str) -> bool {
        self.store == ANY_STORE || self.store == store
    }
}

/// A prefix as text: `0x` and an even number of hex digits is bytes, any
/// other text is its UTF-8 bytes.
pub fn prefix_from_text(text: &str) -> Result<Vec<u8>, String> {
    if let Some(hex) = text.strip_prefix("0x") {
        if hex.len() % 2 != 0 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!(
                "prefix {text:?}: starts with 0x but is not an even number of hex digits"
            ));
        }
        return Ok(hex
            .as_bytes()
            .chunks(2)
            .map(|p| {
                let digit = |c: u8| (c as char).to_digit(16).unwrap_or(0) as u8;
                digit(p[0]) << 4 | digit(p[1])
            })
            .collect());
    }
    Ok(text.as_bytes().to_vec())
}

/// A prefix as text: itself when it is UTF-8 that does not start with
/// `0x`, else `0x` and lowercase hex.
pub fn prefix_to_text(prefix: &[u8]) -> String {
    match std::str::from_utf8(prefix) {
        Ok(s) if !s.starts_with("0x") => s.to_string(),
        _ => {
            let mut out = String::from("0x");
            for b in prefix {
                out.push_str(&format!("{b:02x}"));
            }
            out
        }
    }
}

/// The hash of one of a credential's secrets and when it stops being
/// valid (`None`: the current secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SecretHash {
    /// SHA-256 of the secret, lowercase hex.
    pub sha256: String,
    /// Unix seconds after which this (rotated-out) secret is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<i64>,
}

/// A credential: what a consumer holding one of its secrets may do. The
/// secrets themselves are never kept, only their hashes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credential {
    pub id: String,
    pub scopes: Vec<Scope>,
    /// May call `PushUpdate` (on keys inside its scopes).
    #[serde(default)]
    pub push: bool,
    /// May create run-time webhook subscriptions of its own (issue 28),
    /// delivering only what its scopes allow.
    #[serde(default)]
    pub subscribe_webhooks: bool,
    /// Streams open at once with this credential, all front-ends
    /// together; `None`: only the streamer's own limits.
    #[serde(default)]
    pub max_streams: Option<u32>,
    /// Unix seconds after which the credential is refused.
    #[serde(default)]
    pub expires_at: Option<i64>,
    #[serde(default)]
    pub description: String,
    pub created_at: i64,
    #[serde(default)]
    pub rotated_at: Option<i64>,
    #[serde(default)]
    pub revoked_at: Option<i64>,
    pub(crate) secrets: Vec<SecretHash>,
}

impl Credential {
    /// Whether it is revoked.
    pub fn is_revoked(&self) -> bool {
        self.revoked_at.is_some()
    }

    /// Whether it has expired at `now` (Unix seconds).
    pub fn is_expired(&self, now: i64) -> bool {
        self.expires_at.is_some_and(|t| t <= now)
    }

    /// Until when a rotated-out secret is still accepted, if one is.
    pub fn previous_secret_until(&self, now: i64) -> Option<i64> {
        self.secrets
            .iter()
            .filter_map(|s| s.until)
            .filter(|&t| t > now)
            .max()
    }

    /// The credential as the admin API shows it (never a secret or a
    /// hash): times in RFC 3339.
    pub fn to_json(&self, now: i64) -> serde_json::Value {
        let time = |t: Option<i64>| t.map(format_rfc3339);
        let status = if self.is_revoked() {
            "revoked"
        } else if self.is_expired(now) {
            "expired"
        } else {
            "active"
        };
        serde_json::json!({
            "id": self.id,
            "scopes": self.scopes.iter().cloned().map(ScopeText::from).collect::<Vec<_>>(),
            "push": self.push,
            "subscribe_webhooks": self.subscribe_webhooks,
            "max_streams": self.max_streams,
            "expires_at": time(self.expires_at),
            "description": self.description,
            "created_at": format_rfc3339(self.created_at),
            "rotated_at": time(self.rotated_at),
            "revoked_at": time(self.revoked_at),
            "previous_secret_valid_until": time(self.previous_secret_until(now)),
            "status": status,
        })
    }
}

/// Checks a credential id: 1 to [`MAX_ID_LEN`] ASCII letters, digits, `-`
/// and `.` (no `_`: the secret `ss_<id>_<random>` is split at its last
/// `_`).
pub fn check_id(id: &str) -> Result<(), AccessError> {
    if id.is_empty() || id.len() > MAX_ID_LEN {
        return Err(AccessError::Invalid(format!(
            "id {id:?}: 1 to {MAX_ID_LEN} characters"
        )));
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
    {
        return Err(AccessError::Invalid(format!(
            "id {id:?}: only ASCII letters, digits, '-' and '.'"
        )));
    }
    Ok(())
}

/// Deserializes a present field as `Some` (so `null` is `Some(None)`: a
/// patch that clears it, and an absent field is `None`: left as it is).
fn present<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(d).map(Some)
}

/// `POST /v1/credentials`: a new credential.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NewCredential {
    pub id: String,
    pub scopes: Vec<Scope>,
    #[serde(default)]
    pub push: bool,
    #[serde(default)]
    pub subscribe_webhooks: bool,
    #[serde(default)]
    pub max_streams: Option<u32>,
    /// RFC 3339.
    #[serde(default)]
    pub expires_at: Option<String>,
    #[serde(default)]
    pub description: String,
}

/// `PATCH /v1/credentials/{id}`: the fields given change, the others
/// stay; `null` clears `max_streams` or `expires_at`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialPatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scopes: Option<Vec<Scope>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub push: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscribe_webhooks: Option<bool>,
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_streams: Option<Option<u32>>,
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub expires_at: Option<Option<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// `POST /v1/credentials/{id}/rotate`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Rotation {
    /// How long the old secret stays valid (0: it stops at once).
    #[serde(default)]
    pub grace_seconds: u64,
}

/// An RFC 3339 expiry as Unix seconds.
pub(crate) fn parse_expiry(text: Option<&str>) -> Result<Option<i64>, AccessError> {
    text.map(|t| parse_rfc3339(t).map_err(|e| AccessError::Invalid(format!("expires_at: {e}"))))
        .transpose()
}

/// Checks scopes: at least one; a store name or `*`.
pub(crate) fn check_scopes(scopes: &[Scope]) -> Result<(), AccessError> {
    if scopes.is_empty() {
        return Err(AccessError::Invalid(
            "scopes: at least one scope ({\"store\": \"*\"} for every store)".into(),
        ));
    }
    for s in scopes {
        if s.store != ANY_STORE
            && !s
                .store
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(AccessError::Invalid(format!(
                "scopes: store {:?} is not a store name (or \"*\")",
                s.store
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_are_utf8_or_hex() {
        assert_eq!(prefix_from_text("balances/").unwrap(), b"balances/");
        assert_eq!(prefix_from_text("0x00ff").unwrap(), vec![0, 255]);
        assert!(prefix_from_text("0xzz").is_err());
        assert_eq!(prefix_to_text(&[0, 255]), "0x00ff");
        assert_eq!(prefix_to_text(b"0xab"), "0x30786162");
        let scope: Scope =
            serde_json::from_str(r#"{"store":"bank","prefixes":["a/","0x01"]}"#).unwrap();
        assert_eq!(scope.prefixes, vec![b"a/".to_vec(), vec![1]]);
        assert!(serde_json::from_str::<Scope>(r#"{"store":"bank","extra":1}"#).is_err());
    }

    #[test]
    fn a_patch_tells_null_from_absent() {
        let p: CredentialPatch = serde_json::from_str(r#"{"expires_at":null}"#).unwrap();
        assert_eq!(p.expires_at, Some(None));
        assert_eq!(p.max_streams, None);
        assert!(serde_json::from_str::<CredentialPatch>(r#"{"nope":1}"#).is_err());
    }
}

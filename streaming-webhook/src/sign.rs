//! Standard Webhooks signatures: `v1,<base64 of HMAC-SHA256(key,
//! "<webhook-id>.<webhook-timestamp>.<body>")>`, the key being the base64
//! part of a `whsec_` secret.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// The prefix of a Standard Webhooks secret.
pub(crate) const SECRET_PREFIX: &str = "whsec_";

/// A signing key, decoded from its `whsec_` form.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl Secret {
    /// Decodes `whsec_<base64>`; the message never repeats the secret.
    pub fn parse(text: &str) -> Result<Secret, String> {
        let Some(b64) = text.strip_prefix(SECRET_PREFIX) else {
            return Err(format!(
                "a secret must be in the Standard Webhooks form \"{SECRET_PREFIX}<base64>\""
            ));
        };
        match STANDARD.decode(b64) {
            Ok(key) if key.is_empty() => Err("the secret's key is empty".into()),
            Ok(key) => Ok(Secret(key)),
            Err(e) => Err(format!(
                "the part after \"{SECRET_PREFIX}\" is not standard base64: {e}"
            )),
        }
    }

    /// The `whsec_<base64>` form of `key` (at least one byte).
    pub fn encode(key: &[u8]) -> String {
        format!("{SECRET_PREFIX}{}", STANDARD.encode(key))
    }

    /// `v1,<base64 signature>` of one message.
    fn sign(&self, id: &str, timestamp: u64, body: &[u8]) -> String {
        // HMAC takes a key of any length, so this cannot fail.
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.0)
            .expect("HMAC accepts keys of every length");
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
    }
}

/// The `webhook-signature` value: one signature per secret, separated by
/// spaces (several secrets let receivers rotate keys).
pub fn signature_header(secrets: &[Secret], id: &str, timestamp: u64, body: &[u8]) -> String {
    secrets
        .iter()
        .map(|s| s.sign(id, timestamp, body))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The test vector of the Standard Webhooks reference libraries.
    #[test]
    fn sign_matches_the_reference_test_vector() {
        let secret = Secret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        assert_eq!(
            signature_header(
                &[secret],
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                1_614_265_330,
                br#"{"test": 2432232314}"#
            ),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn sign_one_signature_per_secret() {
        let a = Secret::parse("whsec_c2VjcmV0LWE=").unwrap();
        let b = Secret::parse("whsec_c2VjcmV0LWI=").unwrap();
        let h = signature_header(&[a, b], "id", 1, b"body");
        let parts: Vec<&str> = h.split(' ').collect();
        assert_eq!(parts.len(), 2);
        assert!(parts.iter().all(|p| p.starts_with("v1,")));
        assert_ne!(parts[0], parts[1]);
    }

    #[test]
    fn sign_rejects_bad_secrets() {
        for bad in ["secret", "whsec_", "whsec_!!!", "WHSEC_c2VjcmV0"] {
            assert!(Secret::parse(bad).is_err(), "{bad:?}");
        }
    }
}

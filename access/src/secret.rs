//! Secrets: `ss_<id>_<random>`, 256 bits from the OS RNG, hashed with
//! SHA-256 for storage and compared in constant time.

use sha2::{Digest, Sha256};

use crate::error::AccessError;

/// The random bytes of a secret (256 bits; at least 128 are required).
const RANDOM_BYTES: usize = 32;

/// A secret as shown once, at creation or rotation. Its `Debug` does not
/// show it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl Secret {
    /// A new secret for credential `id`.
    pub(crate) fn generate(id: &str) -> Result<Secret, AccessError> {
        let mut random = [0u8; RANDOM_BYTES];
        getrandom::fill(&mut random).map_err(|e| AccessError::Random(e.to_string()))?;
        let mut text = format!("ss_{id}_");
        for b in random {
            text.push_str(&format!("{b:02x}"));
        }
        Ok(Secret(text))
    }

    /// The secret's text (to show to the one who asked for it, once).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

/// The credential id a secret names, if it has the form `ss_<id>_<random>`.
pub(crate) fn id_of(secret: &str) -> Option<&str> {
    let rest = secret.strip_prefix("ss_")?;
    let (id, random) = rest.rsplit_once('_')?;
    (!id.is_empty() && !random.is_empty()).then_some(id)
}

/// SHA-256 of a secret. A fast hash is enough here: a secret carries at
/// least 128 random bits, so there is no dictionary to try, unlike a
/// password.
pub(crate) fn hash(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

pub(crate) fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Compares without stopping at the first difference, so the time taken
/// tells nothing about how much of a guess was right.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_name_their_credential_and_differ() {
        let a = Secret::generate("wallet").unwrap();
        let b = Secret::generate("wallet").unwrap();
        assert_ne!(a, b);
        assert_eq!(id_of(a.expose()), Some("wallet"));
        assert_eq!(a.expose().len(), "ss_wallet_".len() + 2 * RANDOM_BYTES);
        assert_eq!(format!("{a:?}"), "Secret(..)");
        assert_eq!(id_of("ss__x"), None);
        assert_eq!(id_of("wallet"), None);
        assert!(constant_time_eq(&hash("x"), &hash("x")));
        assert!(!constant_time_eq(&hash("x"), &hash("y")));
    }
}

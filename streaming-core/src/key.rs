use std::borrow::Borrow;
use std::fmt;
use std::sync::Arc;

use crate::error::Error;

/// The name of one sub-store of a multi-store.
///
/// Validated on construction: non-empty, at most 128 bytes, ASCII
/// `[A-Za-z0-9_.-]`. The name appears in the change set, the wire records,
/// the app hash and file names of downstream tools, so it must be stable and
/// safe to print. Cloning is cheap (a shared string).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StoreKey(Arc<str>);

/// The longest accepted store name, in bytes.
pub const MAX_STORE_KEY_LEN: usize = 128;

impl StoreKey {
    /// Validates `name` and makes a key of it.
    pub fn new(name: &str) -> Result<StoreKey, Error> {
        validate_name(name)?;
        Ok(StoreKey(Arc::from(name)))
    }

    /// The store's name.
    pub fn name(&self) -> &str {
        &self.0
    }
}

pub(crate) fn validate_name(name: &str) -> Result<(), Error> {
    let reason = if name.is_empty() {
        Some("it is empty")
    } else if name.len() > MAX_STORE_KEY_LEN {
        Some("it is longer than 128 bytes")
    } else if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
    {
        Some("only ASCII letters, digits, '_', '.' and '-' are allowed")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(Error::InvalidStoreKey {
            name: name.escape_default().to_string(),
            reason,
        }),
        None => Ok(()),
    }
}

impl fmt::Display for StoreKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for StoreKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StoreKey({:?})", &*self.0)
    }
}

impl AsRef<str> for StoreKey {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl Borrow<str> for StoreKey {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl std::str::FromStr for StoreKey {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        StoreKey::new(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_key_accepts_valid_names() {
        for name in ["bank", "acc.v2", "a-b_c", "X9"] {
            assert_eq!(StoreKey::new(name).expect("valid").name(), name);
        }
    }

    #[test]
    fn store_key_rejects_invalid_names() {
        let long = "a".repeat(129);
        for name in ["", "a/b", "a b", "é", "a\0", long.as_str()] {
            let err = StoreKey::new(name).expect_err("invalid");
            assert!(
                matches!(err, Error::InvalidStoreKey { .. }),
                "{name:?}: {err}"
            );
        }
    }
}

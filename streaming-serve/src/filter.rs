//! What a subscription selects: whole stores, key prefixes and single
//! keys, checked against the streamer's stores. Front-ends parse their own
//! request syntax into a [`Filter`].

use std::collections::BTreeMap;
use std::ops::Bound;

use statestream_core::{StoreKey, prefix_end};

use crate::error::HubError;

/// A key range: start and end bounds.
pub type KeyRange = (Bound<Vec<u8>>, Bound<Vec<u8>>);

/// The part of one store a filter selects.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct StoreFilter {
    /// The whole store.
    pub whole: bool,
    /// Keys starting with one of these (sorted, none a prefix of another).
    pub prefixes: Vec<Vec<u8>>,
    /// Single keys (sorted, none under a prefix).
    pub keys: Vec<Vec<u8>>,
}

impl StoreFilter {
    /// Whether `key` is selected.
    pub fn matches(&self, key: &[u8]) -> bool {
        self.whole
            || under_prefix(&self.prefixes, key)
            || self
                .keys
                .binary_search_by(|k| k.as_slice().cmp(key))
                .is_ok()
    }

    /// The key ranges to read, in ascending order and disjoint: the whole
    /// store, or one range per prefix and per key.
    pub fn ranges(&self) -> Vec<KeyRange> {
        if self.whole {
            return vec![(Bound::Unbounded, Bound::Unbounded)];
        }
        let mut out: Vec<(Vec<u8>, Bound<Vec<u8>>)> = Vec::new();
        for p in &self.prefixes {
            let end = match prefix_end(p) {
                Some(e) => Bound::Excluded(e),
                None => Bound::Unbounded,
            };
            out.push((p.clone(), end));
        }
        for k in &self.keys {
            out.push((k.clone(), Bound::Included(k.clone())));
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out.into_iter()
            .map(|(start, end)| (Bound::Included(start), end))
            .collect()
    }

    fn normalise(&mut self) {
        if self.whole {
            self.prefixes.clear();
            self.keys.clear();
            return;
        }
        self.prefixes.sort_unstable();
        self.prefixes.dedup();
        // Drop a prefix that a shorter kept one covers. Sorted, every
        // prefix between a kept `k` and one it covers also starts with `k`
        // (anything not starting with `k` sorts before `k` or after all its
        // extensions), so the last kept prefix is the only one to compare.
        let mut kept: Vec<Vec<u8>> = Vec::with_capacity(self.prefixes.len());
        for p in std::mem::take(&mut self.prefixes) {
            if !kept.last().is_some_and(|k| p.starts_with(k)) {
                kept.push(p);
            }
        }
        self.prefixes = kept;
        self.keys.sort_unstable();
        self.keys.dedup();
        let prefixes = &self.prefixes;
        self.keys.retain(|k| !under_prefix(prefixes, k));
    }
}

/// Whether `key` starts with one of `prefixes` (sorted, none a prefix of
/// another). A prefix of `key` sorts at or before it, and any prefix
/// between it and `key` would have to extend it, so only the greatest
/// prefix not above `key` can match: one binary search.
fn under_prefix(prefixes: &[Vec<u8>], key: &[u8]) -> bool {
    let at = prefixes.partition_point(|p| p.as_slice() <= key);
    at > 0 && key.starts_with(&prefixes[at - 1])
}

/// A subscription's selection, per streamed store (stores not in it are
/// not selected).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Filter {
    stores: BTreeMap<StoreKey, StoreFilter>,
}

/// Builds a [`Filter`], checking every store against the streamed ones and
/// the number of entries against the streamer's `max_filter_entries`.
#[derive(Debug)]
pub struct FilterBuilder<'a> {
    streamed: &'a [StoreKey],
    stores: BTreeMap<StoreKey, StoreFilter>,
    entries: usize,
    max_entries: usize,
}

impl<'a> FilterBuilder<'a> {
    /// An empty selection over `streamed` (which, left empty, selects every
    /// streamed store) of at most `max_entries` stores, prefixes and keys
    /// together.
    pub fn new(streamed: &'a [StoreKey], max_entries: usize) -> FilterBuilder<'a> {
        FilterBuilder {
            streamed,
            stores: BTreeMap::new(),
            entries: 0,
            max_entries,
        }
    }

    fn store(&mut self, name: &str, what: &str) -> Result<&mut StoreFilter, HubError> {
        // Counted before anything is kept, so an oversized request is
        // refused after at most `max_entries` cheap steps.
        if self.entries >= self.max_entries {
            return Err(HubError::InvalidArgument(format!(
                "{what}: the filter has more than {} entries (stores, prefixes and keys together), the limit (max_filter_entries)",
                self.max_entries
            )));
        }
        self.entries += 1;
        let key = self
            .streamed
            .iter()
            .find(|s| s.name() == name)
            .ok_or_else(|| {
                let names: Vec<&str> = self.streamed.iter().map(|s| s.name()).collect();
                HubError::InvalidArgument(format!(
                    "{what}: store {name:?} is not streamed (streamed stores: {})",
                    names.join(", ")
                ))
            })?;
        Ok(self.stores.entry(key.clone()).or_default())
    }

    /// Selects a whole store; `what` names the request field for errors.
    pub fn whole(&mut self, name: &str, what: &str) -> Result<&mut Self, HubError> {
        self.store(name, what)?.whole = true;
        Ok(self)
    }

    /// Selects the keys of `store` that start with `prefix` (an empty
    /// prefix: the whole store).
    pub fn prefix(&mut self, name: &str, prefix: &[u8], what: &str) -> Result<&mut Self, HubError> {
        let f = self.store(name, what)?;
        if prefix.is_empty() {
            f.whole = true;
        } else {
            f.prefixes.push(prefix.to_vec());
        }
        Ok(self)
    }

    /// Selects one key of `store`.
    pub fn key(&mut self, name: &str, key: &[u8], what: &str) -> Result<&mut Self, HubError> {
        if key.is_empty() {
            return Err(HubError::InvalidArgument(format!(
                "{what}: the key is empty"
            )));
        }
        self.store(name, what)?.keys.push(key.to_vec());
        Ok(self)
    }

    /// Whether nothing is selected yet (built as is: every streamed
    /// store).
    pub fn is_empty(&self) -> bool {
        self.stores.is_empty()
    }

    /// The streamed stores.
    pub fn streamed(&self) -> &'a [StoreKey] {
        self.streamed
    }

    /// The filter; nothing selected means every streamed store.
    pub fn build(self) -> Filter {
        let mut stores = self.stores;
        if stores.is_empty() {
            for s in self.streamed {
                stores.insert(
                    s.clone(),
                    StoreFilter {
                        whole: true,
                        ..StoreFilter::default()
                    },
                );
            }
        }
        for f in stores.values_mut() {
            f.normalise();
        }
        Filter { stores }
    }
}

impl Filter {
    /// Every streamed store.
    pub fn all(streamed: &[StoreKey]) -> Filter {
        FilterBuilder::new(streamed, usize::MAX).build()
    }

    /// The selected stores and their parts, in store-name order.
    pub fn stores(&self) -> impl Iterator<Item = (&StoreKey, &StoreFilter)> + '_ {
        self.stores.iter()
    }

    /// The part of `store` selected, `None` when the store is not.
    pub fn store(&self, store: &str) -> Option<&StoreFilter> {
        self.stores.get(store)
    }
}

/// A key as text: itself when it is valid UTF-8 (and does not look like
/// hex), else `0x` and lowercase hex.
pub fn key_to_text(key: &[u8]) -> String {
    match std::str::from_utf8(key) {
        Ok(s) if !looks_hex(s) => s.to_string(),
        _ => {
            let mut out = String::with_capacity(2 + key.len() * 2);
            out.push_str("0x");
            for b in key {
                out.push_str(&format!("{b:02x}"));
            }
            out
        }
    }
}

/// A key written as text: `0x` and hex digits is hex, anything else is the
/// UTF-8 bytes.
pub fn key_from_text(text: &str) -> Vec<u8> {
    if looks_hex(text) {
        let digits = &text.as_bytes()[2..];
        let mut out = Vec::with_capacity(digits.len() / 2);
        for pair in digits.chunks(2) {
            let hi = (pair[0] as char).to_digit(16).unwrap_or(0) as u8;
            let lo = (pair[1] as char).to_digit(16).unwrap_or(0) as u8;
            out.push(hi << 4 | lo);
        }
        return out;
    }
    text.as_bytes().to_vec()
}

/// `0x` followed by an even, non-zero number of hex digits.
fn looks_hex(s: &str) -> bool {
    s.len() > 2
        && s.len().is_multiple_of(2)
        && s.starts_with("0x")
        && s.as_bytes()[2..].iter().all(u8::is_ascii_hexdigit)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stores() -> Vec<StoreKey> {
        ["acc", "bank"]
            .iter()
            .map(|s| StoreKey::new(s).unwrap())
            .collect()
    }

    #[test]
    fn empty_selects_every_store_and_unknown_stores_are_named() {
        let s = stores();
        let f = FilterBuilder::new(&s, 100).build();
        assert!(f.store("acc").unwrap().whole && f.store("bank").unwrap().whole);
        let mut b = FilterBuilder::new(&s, 100);
        let err = b.whole("nope", "stores").unwrap_err();
        assert!(err.to_string().contains("\"nope\""), "{err}");
    }

    #[test]
    fn prefixes_and_keys_are_normalised() {
        let s = stores();
        let mut b = FilterBuilder::new(&s, 100);
        b.prefix("acc", b"ab", "p").unwrap();
        b.prefix("acc", b"a", "p").unwrap();
        b.key("acc", b"abc", "k").unwrap();
        b.key("acc", b"z", "k").unwrap();
        let f = b.build();
        let a = f.store("acc").unwrap();
        assert_eq!(a.prefixes, vec![b"a".to_vec()]);
        assert_eq!(a.keys, vec![b"z".to_vec()]);
        assert!(a.matches(b"abc") && a.matches(b"z") && !a.matches(b"y"));
        assert!(f.store("bank").is_none());
        assert_eq!(a.ranges().len(), 2);
    }

    #[test]
    fn more_entries_than_the_limit_are_refused_naming_it() {
        let s = stores();
        let mut b = FilterBuilder::new(&s, 2);
        b.prefix("acc", b"a", "filter.prefixes").unwrap();
        b.key("bank", b"k", "keys").unwrap();
        let err = b.prefix("acc", b"b", "filter.prefixes").unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, HubError::InvalidArgument(_)), "{err:?}");
        assert!(
            text.contains("max_filter_entries") && text.contains('2'),
            "{text}"
        );
        assert!(text.starts_with("filter.prefixes"), "{text}");
    }

    /// The normalisation as it was: every prefix against every kept one,
    /// every key against every prefix, a linear scan per lookup.
    fn quadratic(prefixes: &[Vec<u8>], keys: &[Vec<u8>]) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
        let mut ps = prefixes.to_vec();
        ps.sort();
        ps.dedup();
        let mut kept: Vec<Vec<u8>> = Vec::new();
        for p in ps {
            if !kept.iter().any(|k| p.starts_with(k)) {
                kept.push(p);
            }
        }
        let mut ks = keys.to_vec();
        ks.sort();
        ks.dedup();
        ks.retain(|k| !kept.iter().any(|p| k.starts_with(p)));
        (kept, ks)
    }

    proptest::proptest! {
        #[test]
        fn normalisation_and_lookup_agree_with_the_quadratic_ones(
            // A small alphabet, so prefixes often cover one another.
            prefixes in proptest::collection::vec(proptest::collection::vec(0u8..3, 1..5), 0..40),
            keys in proptest::collection::vec(proptest::collection::vec(0u8..3, 1..6), 0..40),
            probes in proptest::collection::vec(proptest::collection::vec(0u8..3, 0..6), 0..40),
        ) {
            let mut f = StoreFilter {
                whole: false,
                prefixes: prefixes.clone(),
                keys: keys.clone(),
            };
            f.normalise();
            let (kept, ks) = quadratic(&prefixes, &keys);
            proptest::prop_assert_eq!(&f.prefixes, &kept);
            proptest::prop_assert_eq!(&f.keys, &ks);
            for probe in probes.iter().chain(&prefixes).chain(&keys) {
                let linear = kept.iter().any(|p| probe.starts_with(p))
                    || ks.contains(probe);
                proptest::prop_assert_eq!(f.matches(probe), linear, "probe {:?}", probe);
                // Every selected key is also in exactly the ranges read.
                let in_ranges = f.ranges().iter().any(|r| {
                    use std::ops::RangeBounds;
                    r.contains(probe)
                });
                proptest::prop_assert_eq!(in_ranges, linear, "ranges, probe {:?}", probe);
            }
        }
    }

    #[test]
    fn keys_as_text() {
        assert_eq!(key_to_text(b"abc"), "abc");
        assert_eq!(key_to_text(&[0xff, 0x01]), "0xff01");
        assert_eq!(key_to_text(b"0xab"), "0x30786162");
        assert_eq!(key_from_text("0xff01"), vec![0xff, 0x01]);
        assert_eq!(key_from_text("0x30786162"), b"0xab".to_vec());
        assert_eq!(key_from_text("abc"), b"abc".to_vec());
    }
}

use std::cmp::Ordering;
use std::ops::Bound;

use crate::error::Result;

/// Iteration order of a range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Order {
    /// Smallest key first.
    #[default]
    Ascending,
    /// Largest key first.
    Descending,
}

/// An iterator over `(key, value)` pairs of one store, in the requested
/// order, with the pending writes of every layer merged over the committed
/// state.
pub struct KvIter<'a>(BoxedPairs<'a>);

type BoxedPairs<'a> = Box<dyn Iterator<Item = Result<(Vec<u8>, Vec<u8>)>> + 'a>;

impl std::fmt::Debug for KvIter<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KvIter")
    }
}

impl<'a> KvIter<'a> {
    pub(crate) fn new(it: impl Iterator<Item = Result<(Vec<u8>, Vec<u8>)>> + 'a) -> KvIter<'a> {
        KvIter(Box::new(it))
    }

    pub(crate) fn empty() -> KvIter<'a> {
        KvIter(Box::new(std::iter::empty()))
    }
}

impl Iterator for KvIter<'_> {
    type Item = Result<(Vec<u8>, Vec<u8>)>;
    fn next(&mut self) -> Option<Self::Item> {
        self.0.next()
    }
}

/// Whether `(start, end)` selects nothing. Ordered maps panic on such
/// ranges, so callers check first.
pub(crate) fn is_empty_range(start: Bound<&[u8]>, end: Bound<&[u8]>) -> bool {
    match (start, end) {
        (Bound::Included(s), Bound::Included(e)) => s > e,
        (Bound::Included(s), Bound::Excluded(e))
        | (Bound::Excluded(s), Bound::Included(e))
        | (Bound::Excluded(s), Bound::Excluded(e)) => s >= e,
        _ => false,
    }
}

/// Merges a layer of pending writes (`None` = deleted) over a base iterator.
/// Both inputs are sorted in `order`; on equal keys the overlay wins.
pub(crate) fn merge<'a>(
    overlay: impl Iterator<Item = (&'a [u8], Option<&'a [u8]>)> + 'a,
    base: KvIter<'a>,
    order: Order,
) -> KvIter<'a> {
    let mut overlay = overlay.peekable();
    let mut base = base.peekable();
    KvIter::new(std::iter::from_fn(move || {
        loop {
            let cmp = match (overlay.peek(), base.peek()) {
                (None, None) => return None,
                (Some(_), None) => Ordering::Less,
                (None, Some(_)) => Ordering::Greater,
                (Some(_), Some(Err(_))) => Ordering::Greater,
                (Some((ok, _)), Some(Ok((bk, _)))) => {
                    let c = (*ok).cmp(bk.as_slice());
                    if order == Order::Descending {
                        c.reverse()
                    } else {
                        c
                    }
                }
            };
            match cmp {
                Ordering::Greater => return base.next(),
                Ordering::Equal => {
                    base.next();
                }
                Ordering::Less => {}
            }
            // A pending delete (`None`) hides the base entry; look further.
            if let Some((k, Some(v))) = overlay.next() {
                return Some(Ok((k.to_vec(), v.to_vec())));
            }
        }
    }))
}

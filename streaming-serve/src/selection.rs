//! A block under a filter, for every front-end: [`selected`] is the one
//! translation of a block's changes through a [`Filter`] (gRPC's
//! `BlockChanges`, datastream's `DataResponse` and SSE's events are each
//! written from it), and [`Selection`] names one rendering of a block
//! (filter and encoding), the key of the renderings a ring block keeps.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;

use statestream_core::{Action, Block};

use crate::filter::Filter;
use crate::http::Encoding;

/// One selected change of a block.
#[derive(Debug, Clone, Copy)]
pub struct Change<'a> {
    pub store: &'a str,
    pub key: &'a [u8],
    /// `None` for a delete.
    pub value: Option<&'a [u8]>,
    pub action: Action,
}

/// The changes of `block` that `filter` selects, in store then key order.
pub fn selected<'a>(block: &'a Block, filter: &'a Filter) -> impl Iterator<Item = Change<'a>> + 'a {
    block
        .stores()
        .filter_map(move |s| filter.store(s.store().name()).map(|part| (s, part)))
        .flat_map(|(s, part)| {
            s.changes()
                .filter(move |(r, _)| part.matches(r.key))
                .map(|(r, action)| Change {
                    store: r.store,
                    key: r.key,
                    value: r.value,
                    action,
                })
        })
}

/// How a block is rendered for a subscriber.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    /// `statestream.v1.BlockChanges` messages.
    Protobuf,
    /// SSE `patch`/`delete` events, keys and values in `Encoding`.
    SseChanges(Encoding),
    /// One SSE `ping` per block with a selected change.
    SsePing,
}

/// A filter and a format: what one rendering of a block is for. Cheap to
/// clone and to hash (the hash is computed once, when a subscription
/// starts), so finding a block's rendering costs no walk over the filter.
#[derive(Debug, Clone)]
pub struct Selection(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    filter: Filter,
    format: Format,
    hash: u64,
}

impl Selection {
    pub fn new(filter: Filter, format: Format) -> Selection {
        let mut h = DefaultHasher::new();
        filter.hash(&mut h);
        format.hash(&mut h);
        let hash = h.finish();
        Selection(Arc::new(Inner {
            filter,
            format,
            hash,
        }))
    }

    pub fn filter(&self) -> &Filter {
        &self.0.filter
    }

    pub fn format(&self) -> Format {
        self.0.format
    }
}

impl Hash for Selection {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.0.hash);
    }
}

impl PartialEq for Selection {
    fn eq(&self, other: &Selection) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
            || (self.0.hash == other.0.hash
                && self.0.format == other.0.format
                && self.0.filter == other.0.filter)
    }
}

impl Eq for Selection {}

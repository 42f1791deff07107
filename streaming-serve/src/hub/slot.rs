//! A block as the hub hands it out, with the renderings the front-ends
//! made of it: one per (selection, encoding), made by the first subscriber
//! that needs it and shared by the others while the block is in the ring.

use std::collections::HashMap;
use std::ops::Deref;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use prost::bytes::Bytes;
use statestream_core::Block;

use crate::grpc::encoding::block_hashes;
use crate::selection::Selection;

/// Renderings kept per block in the ring. Past it a block is rendered for
/// each subscriber whose selection has none, so many distinct selections
/// cannot hold more than this many renderings of each ring block.
pub const RENDERINGS_PER_BLOCK: usize = 8;

/// One block's rendering for one selection: the encoded messages (gRPC)
/// or the event text (SSE), in sending order; empty when the selection
/// sends nothing for the block.
pub type Rendering = Arc<[Bytes]>;

type Cell = Arc<OnceLock<Rendering>>;

struct Slot {
    block: Block,
    /// The block's hash fields ([`block_hashes`]), encoded once and
    /// appended to every rendering's last gRPC message.
    hashes: OnceLock<Bytes>,
    /// `None` for a block read from the change log: it is this
    /// subscriber's alone, so there is nothing to share.
    renderings: Option<Mutex<HashMap<Selection, Cell>>>,
}

/// A block handed out by the hub (cheap to clone).
#[derive(Clone)]
pub struct HubBlock(Arc<Slot>);

impl std::fmt::Debug for HubBlock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.block.fmt(f)
    }
}

impl Deref for HubBlock {
    type Target = Block;

    fn deref(&self) -> &Block {
        &self.0.block
    }
}

impl HubBlock {
    /// A block of the ring, whose renderings are shared.
    pub(crate) fn shared(block: Block) -> HubBlock {
        HubBlock(Arc::new(Slot {
            block,
            hashes: OnceLock::new(),
            renderings: Some(Mutex::new(HashMap::new())),
        }))
    }

    /// A block read for one subscriber.
    pub(crate) fn own(block: Block) -> HubBlock {
        HubBlock(Arc::new(Slot {
            block,
            hashes: OnceLock::new(),
            renderings: None,
        }))
    }

    /// The block.
    pub fn block(&self) -> &Block {
        &self.0.block
    }

    /// The block's hash fields for the last message of its `BlockChanges`
    /// ([`block_hashes`]): made once per block, shared by every selection.
    pub fn hashes(&self) -> Bytes {
        self.0
            .hashes
            .get_or_init(|| block_hashes(&self.0.block))
            .clone()
    }

    /// The block rendered for `selection`: the shared rendering when there
    /// is one, else `render`'s, kept for the next subscriber with the same
    /// selection (within [`RENDERINGS_PER_BLOCK`]).
    pub(crate) fn rendered(
        &self,
        selection: &Selection,
        render: impl FnOnce(&Block) -> Vec<Bytes>,
    ) -> Rendering {
        let Some(renderings) = &self.0.renderings else {
            return render(&self.0.block).into();
        };
        let cell = {
            let mut map = renderings.lock().unwrap_or_else(PoisonError::into_inner);
            match map.get(selection) {
                Some(cell) => Some(Arc::clone(cell)),
                None if map.len() < RENDERINGS_PER_BLOCK => {
                    let cell = Cell::default();
                    map.insert(selection.clone(), Arc::clone(&cell));
                    Some(cell)
                }
                None => None,
            }
        };
        match cell {
            // Rendered outside the lock: other selections are not held up.
            Some(cell) => Arc::clone(cell.get_or_init(|| render(&self.0.block).into())),
            None => render(&self.0.block).into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filter::Filter;
    use crate::selection::Format;
    use statestream_core::{BlockMeta, ChangeSet, StoreChanges, StoreKey, StoreSelection};

    fn block() -> Block {
        let stores = [StoreKey::new("s").unwrap()];
        let changes = vec![StoreChanges::new(stores[0].clone())];
        let cs = ChangeSet::seal(1, Vec::new(), changes, &[Default::default()]);
        Block::new(
            Arc::new(cs),
            Arc::new(BlockMeta::default()),
            &StoreSelection::all(&stores),
        )
    }

    #[test]
    fn a_rendering_is_made_once_per_selection_and_shared() {
        let stores = [StoreKey::new("s").unwrap()];
        let b = HubBlock::shared(block());
        let all = Selection::new(Filter::all(&stores), Format::Protobuf);
        let mut renders = 0;
        for _ in 0..3 {
            let r = b.rendered(&all.clone(), |_| {
                renders += 1;
                vec![Bytes::from_static(b"x")]
            });
            assert_eq!(&r[..], [Bytes::from_static(b"x")]);
        }
        assert_eq!(renders, 1, "rendered once, then shared");
        let ping = Selection::new(Filter::all(&stores), Format::SsePing);
        b.rendered(&ping, |_| {
            renders += 1;
            Vec::new()
        });
        assert_eq!(renders, 2, "another format is another rendering");
    }

    #[test]
    fn renderings_per_block_are_bounded() {
        let b = HubBlock::shared(block());
        let stores: Vec<StoreKey> = (0..=RENDERINGS_PER_BLOCK)
            .map(|i| StoreKey::new(&format!("s{i}")).unwrap())
            .collect();
        for s in &stores {
            let sel = Selection::new(Filter::all(std::slice::from_ref(s)), Format::Protobuf);
            b.rendered(&sel, |_| Vec::new());
        }
        let kept = b.0.renderings.as_ref().unwrap().lock().unwrap().len();
        assert_eq!(kept, RENDERINGS_PER_BLOCK);
    }
}

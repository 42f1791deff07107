//! A message encoded ahead of sending: a `BlockChanges`, encoded once and
//! sent to many subscribers as it is (a shared, reference-counted buffer),
//! so a block costs one encoding per filter, not one per subscriber; a
//! `SnapshotChunk`, encoded straight from the store's iterator.

use prost::bytes::{Buf, BufMut, Bytes};
use prost::encoding::{DecodeContext, WireType, skip_field};

/// The encoded body of a `statestream.v1.BlockChanges` or `SnapshotChunk`.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Encoded(pub Bytes);

impl std::fmt::Debug for Encoded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Encoded({} bytes)", self.0.len())
    }
}

impl prost::Message for Encoded {
    fn encode_raw(&self, buf: &mut impl BufMut)
    where
        Self: Sized,
    {
        buf.put_slice(&self.0);
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), prost::DecodeError>
    where
        Self: Sized,
    {
        // The server never decodes one.
        skip_field(wire_type, tag, buf, ctx)
    }

    fn encoded_len(&self) -> usize {
        self.0.len()
    }

    fn clear(&mut self) {
        self.0 = Bytes::new();
    }
}

//! The protobuf fields the server writes by hand, in one place: the frame
//! writer ([`super::framing`]) puts a block's or a chunk's shared bytes
//! into a `SubscribeResponse` field, and the encoders
//! ([`super::encoding`]) write `BlockChanges` and `SnapshotChunk`s
//! straight from a block's records and the store's iterator. Every other
//! message goes through prost's generated code.
//!
//! Each field names its message and field as the `.proto` files do; a test
//! checks every one against the descriptor set compiled from them, so a
//! `.proto` edit that is not mirrored here fails.

use prost::bytes::{BufMut, Bytes};
use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint, key_len};

use crate::outbox::Measured;

/// A protobuf field written by hand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field {
    /// The message's full name.
    pub message: &'static str,
    /// The field's name in the `.proto` file.
    pub name: &'static str,
    pub tag: u32,
    pub wire_type: WireType,
}

impl Field {
    /// Appends the field's key.
    pub fn key(self, buf: &mut impl BufMut) {
        encode_key(self.tag, self.wire_type, buf);
    }

    /// Appends a length-delimited field's key and length (its bytes
    /// follow).
    pub fn len_prefix(self, len: usize, buf: &mut impl BufMut) {
        debug_assert_eq!(self.wire_type, WireType::LengthDelimited);
        self.key(buf);
        encode_varint(len as u64, buf);
    }

    /// Appends a varint field (proto3: nothing when `value` is 0).
    pub fn varint(self, value: u64, buf: &mut impl BufMut) {
        debug_assert_eq!(self.wire_type, WireType::Varint);
        if value != 0 {
            self.key(buf);
            encode_varint(value, buf);
        }
    }

    /// The bytes of [`varint`](Field::varint) for `value`.
    pub fn varint_len(self, value: u64) -> usize {
        if value == 0 {
            0
        } else {
            key_len(self.tag) + encoded_len_varint(value)
        }
    }

    /// The bytes of a length-delimited field holding `len` bytes.
    pub fn encoded_len(self, len: usize) -> usize {
        key_len(self.tag) + encoded_len_varint(len as u64) + len
    }
}

macro_rules! fields {
    ($($(#[$doc:meta])* $name:ident = $message:literal . $field:literal : $tag:literal $wire:ident;)*) => {
        $($(#[$doc])* pub const $name: Field = Field {
            message: $message,
            name: $field,
            tag: $tag,
            wire_type: WireType::$wire,
        };)*
        /// Every field written by hand.
        #[cfg(test)]
        pub const ALL: &[Field] = &[$($name),*];
    };
}

fields! {
    /// `SubscribeResponse.snapshot`: one `SnapshotChunk`.
    SUBSCRIBE_SNAPSHOT = "statestream.v1.SubscribeResponse"."snapshot": 1 LengthDelimited;
    /// `SubscribeResponse.block`: one `BlockChanges`.
    SUBSCRIBE_BLOCK = "statestream.v1.SubscribeResponse"."block": 2 LengthDelimited;
    /// `SubscribeResponse.heartbeat`: one `Heartbeat`.
    SUBSCRIBE_HEARTBEAT = "statestream.v1.SubscribeResponse"."heartbeat": 3 LengthDelimited;
    CHUNK_HEIGHT = "statestream.v1.SnapshotChunk"."height": 1 Varint;
    CHUNK_ENTRIES = "statestream.v1.SnapshotChunk"."entries": 2 LengthDelimited;
    CHUNK_END = "statestream.v1.SnapshotChunk"."end": 3 Varint;
    CHUNK_TIME = "statestream.v1.SnapshotChunk"."time": 4 LengthDelimited;
    ENTRY_STORE = "statestream.v1.Entry"."store": 1 LengthDelimited;
    ENTRY_KEY = "statestream.v1.Entry"."key": 2 LengthDelimited;
    ENTRY_VALUE = "statestream.v1.Entry"."value": 3 LengthDelimited;
    CHANGES_HEIGHT = "statestream.v1.BlockChanges"."height": 1 Varint;
    CHANGES_TIME = "statestream.v1.BlockChanges"."time": 2 LengthDelimited;
    CHANGES_CHANGES = "statestream.v1.BlockChanges"."changes": 3 LengthDelimited;
    CHANGES_END = "statestream.v1.BlockChanges"."end": 4 Varint;
    CHANGE_STORE = "statestream.v1.Change"."store": 1 LengthDelimited;
    CHANGE_KEY = "statestream.v1.Change"."key": 2 LengthDelimited;
    CHANGE_VALUE = "statestream.v1.Change"."value": 3 LengthDelimited;
    CHANGE_OP = "statestream.v1.Change"."op": 4 Varint;
}

/// One message of a `Subscribe` or `Snapshot` response stream, encoded
/// ahead: the bytes of a message, or of the `SubscribeResponse` field that
/// holds them. The bytes are shared (a block's encoding is sent to every
/// subscriber with the same selection as it is).
#[derive(Debug, Clone)]
pub struct Framed {
    /// The field of `SubscribeResponse` the bytes are; `None`: they are
    /// the whole message.
    pub field: Option<Field>,
    pub bytes: Bytes,
}

impl Framed {
    /// A whole message (a `Snapshot` response's chunk).
    pub fn whole(bytes: Bytes) -> Framed {
        Framed { field: None, bytes }
    }

    /// A `SubscribeResponse` holding `bytes` in `field`.
    pub fn field(field: Field, bytes: Bytes) -> Framed {
        Framed {
            field: Some(field),
            bytes,
        }
    }
}

impl Measured for Framed {
    fn wire_len(&self) -> usize {
        match self.field {
            Some(f) => f.encoded_len(self.bytes.len()),
            None => self.bytes.len(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;
    use prost_types::field_descriptor_proto::Type;

    #[test]
    fn every_hand_written_field_matches_the_proto_files() {
        let set = prost_types::FileDescriptorSet::decode(crate::proto::FILE_DESCRIPTOR_SET)
            .expect("the descriptor set decodes");
        for f in ALL {
            let (package, message) = f.message.rsplit_once('.').expect("a full name");
            let descriptor = set
                .file
                .iter()
                .filter(|file| file.package() == package)
                .flat_map(|file| &file.message_type)
                .find(|m| m.name() == message)
                .unwrap_or_else(|| panic!("no message {}", f.message));
            let field = descriptor
                .field
                .iter()
                .find(|d| d.name() == f.name)
                .unwrap_or_else(|| panic!("no field {}.{}", f.message, f.name));
            assert_eq!(
                field.number(),
                f.tag as i32,
                "{}.{}: the tag",
                f.message,
                f.name
            );
            let wire_type = match field.r#type() {
                Type::Message | Type::String | Type::Bytes => WireType::LengthDelimited,
                Type::Uint64 | Type::Bool | Type::Int64 | Type::Uint32 | Type::Enum => {
                    WireType::Varint
                }
                other => panic!(
                    "{}.{}: type {other:?} is not written by hand",
                    f.message, f.name
                ),
            };
            assert_eq!(
                wire_type, f.wire_type,
                "{}.{}: the wire type",
                f.message, f.name
            );
            // A repeated field of a packable scalar type would be packed.
            assert!(
                field.label() != prost_types::field_descriptor_proto::Label::Repeated
                    || wire_type == WireType::LengthDelimited,
                "{}.{}",
                f.message,
                f.name
            );
        }
    }
}

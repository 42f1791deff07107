//! The canonical record encoding.
//!
//! A block's change set is hashed, logged and streamed in one encoding, so
//! that the bytes the app hash covers are exactly the bytes a data file holds:
//! each record is a uvarint length followed by a message whose bytes are those
//! protobuf produces for Cosmos's `StoreKVPair`
//! (`string store_key = 1; bool delete = 2; bytes key = 3; bytes value = 4;`),
//! fields in number order, default values omitted. The store needs the bytes
//! (for the hash chain), not a protobuf runtime; `statestream` tests that
//! prost encodes the same schema to the same bytes.

use crate::error::{Error, Result};

/// One change as it appears in a block: a set carries the final value, a
/// delete carries none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record<'a> {
    /// The store's name.
    pub store: &'a str,
    /// The key (never empty).
    pub key: &'a [u8],
    /// The value of a set, `None` for a delete.
    pub value: Option<&'a [u8]>,
}

impl Record<'_> {
    /// Whether this record deletes its key.
    pub fn is_delete(&self) -> bool {
        self.value.is_none()
    }
}

const TAG_STORE: u8 = 1 << 3 | 2;
const TAG_DELETE: u8 = 2 << 3;
const TAG_KEY: u8 = 3 << 3 | 2;
const TAG_VALUE: u8 = 4 << 3 | 2;

/// Length in bytes of `v` as a uvarint.
pub fn uvarint_len(v: u64) -> usize {
    // 1 byte per 7 bits, at least one.
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

/// Appends `v` as a uvarint (LEB128, as protobuf).
pub fn put_uvarint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Reads a uvarint at `buf[*pos..]`, advancing `pos`. `None` when the buffer
/// ends inside the number or the number overflows 64 bits.
pub fn get_uvarint(buf: &[u8], pos: &mut usize) -> Option<u64> {
    let mut v: u64 = 0;
    for shift in (0..64).step_by(7) {
        let b = *buf.get(*pos)?;
        *pos += 1;
        if shift == 63 && b > 1 {
            return None;
        }
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// Length of the message (without the uvarint length in front).
fn message_len(store: &str, key: &[u8], value: Option<&[u8]>) -> usize {
    let field = |n: usize| {
        if n == 0 {
            0
        } else {
            1 + uvarint_len(n as u64) + n
        }
    };
    let mut len = field(store.len()) + field(key.len());
    match value {
        None => len += 2,
        Some(v) => len += field(v.len()),
    }
    len
}

/// Appends one record (uvarint length + message) to `out`.
pub fn encode_record(out: &mut Vec<u8>, store: &str, key: &[u8], value: Option<&[u8]>) {
    let len = message_len(store, key, value);
    out.reserve(uvarint_len(len as u64) + len);
    put_uvarint(out, len as u64);
    let bytes_field = |out: &mut Vec<u8>, tag: u8, b: &[u8]| {
        if !b.is_empty() {
            out.push(tag);
            put_uvarint(out, b.len() as u64);
            out.extend_from_slice(b);
        }
    };
    bytes_field(out, TAG_STORE, store.as_bytes());
    match value {
        None => {
            out.push(TAG_DELETE);
            out.push(1);
            bytes_field(out, TAG_KEY, key);
        }
        Some(v) => {
            bytes_field(out, TAG_KEY, key);
            bytes_field(out, TAG_VALUE, v);
        }
    }
}

/// Iterates the records of a buffer of uvarint-delimited records.
///
/// Decoding accepts any valid protobuf encoding of `StoreKVPair` (fields in
/// any order, repeated fields last-wins, unknown fields skipped), so records
/// written by other protobuf runtimes read back too.
#[derive(Debug, Clone)]
pub struct Records<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Records<'a> {
    /// Iterates `buf`, which holds whole uvarint-delimited records.
    pub fn new(buf: &'a [u8]) -> Records<'a> {
        Records { buf, pos: 0 }
    }

    /// Byte offset of the next record in the buffer.
    pub fn offset(&self) -> usize {
        self.pos
    }
}

impl<'a> Iterator for Records<'a> {
    type Item = Result<Record<'a>>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.pos >= self.buf.len() {
            return None;
        }
        let start = self.pos;
        let fail = |this: &mut Self, reason| {
            this.pos = this.buf.len();
            Some(Err(Error::BadRecord {
                offset: start,
                reason,
            }))
        };
        let Some(len) = get_uvarint(self.buf, &mut self.pos) else {
            return fail(self, "truncated record length");
        };
        let Some(end) = usize::try_from(len)
            .ok()
            .and_then(|l| self.pos.checked_add(l))
            .filter(|&e| e <= self.buf.len())
        else {
            return fail(self, "record length runs past the end of the data");
        };
        let msg = &self.buf[self.pos..end];
        self.pos = end;
        match decode_message(msg) {
            Ok(r) => Some(Ok(r)),
            Err(reason) => fail(self, reason),
        }
    }
}

/// Decodes one `StoreKVPair` message (without its length prefix).
pub fn decode_message(msg: &[u8]) -> std::result::Result<Record<'_>, &'static str> {
    let mut pos = 0;
    let mut store: &[u8] = b"";
    let mut delete = false;
    let mut key: &[u8] = b"";
    let mut value: &[u8] = b"";
    while pos < msg.len() {
        let tag = get_uvarint(msg, &mut pos).ok_or("truncated field tag")?;
        let (field, wire) = (tag >> 3, tag & 7);
        match wire {
            0 => {
                let v = get_uvarint(msg, &mut pos).ok_or("truncated varint field")?;
                if field == 2 {
                    delete = v != 0;
                } else if field == 1 || field == 3 || field == 4 {
                    return Err("field has the wrong wire type");
                }
            }
            2 => {
                let l = get_uvarint(msg, &mut pos).ok_or("truncated field length")?;
                let end = usize::try_from(l)
                    .ok()
                    .and_then(|l| pos.checked_add(l))
                    .filter(|&e| e <= msg.len())
                    .ok_or("field length runs past the end of the record")?;
                let b = &msg[pos..end];
                pos = end;
                match field {
                    1 => store = b,
                    3 => key = b,
                    4 => value = b,
                    2 => return Err("field has the wrong wire type"),
                    _ => {}
                }
            }
            1 => {
                pos = pos
                    .checked_add(8)
                    .filter(|&e| e <= msg.len())
                    .ok_or("truncated fixed64")?
            }
            5 => {
                pos = pos
                    .checked_add(4)
                    .filter(|&e| e <= msg.len())
                    .ok_or("truncated fixed32")?
            }
            _ => return Err("unsupported wire type"),
        }
        if field == 0 {
            return Err("field number 0");
        }
    }
    let store = std::str::from_utf8(store).map_err(|_| "store key is not UTF-8")?;
    Ok(Record {
        store,
        key,
        value: if delete { None } else { Some(value) },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_roundtrip() {
        let mut buf = Vec::new();
        encode_record(&mut buf, "bank", b"alice", Some(b"10"));
        encode_record(&mut buf, "bank", b"bob", None);
        encode_record(&mut buf, "acc", b"k", Some(b""));
        let big = vec![7u8; 300];
        encode_record(&mut buf, "acc", &big, Some(&big));
        let got: Vec<_> = Records::new(&buf).collect::<Result<_>>().expect("decodes");
        assert_eq!(
            got,
            vec![
                Record {
                    store: "bank",
                    key: b"alice",
                    value: Some(b"10")
                },
                Record {
                    store: "bank",
                    key: b"bob",
                    value: None
                },
                Record {
                    store: "acc",
                    key: b"k",
                    value: Some(b"")
                },
                Record {
                    store: "acc",
                    key: &big,
                    value: Some(&big)
                },
            ]
        );
    }

    #[test]
    fn record_known_bytes() {
        // store_key "s", key "k", value "v"; what any protobuf runtime writes.
        let mut buf = Vec::new();
        encode_record(&mut buf, "s", b"k", Some(b"v"));
        assert_eq!(buf, [9, 0x0a, 1, b's', 0x1a, 1, b'k', 0x22, 1, b'v']);
        buf.clear();
        encode_record(&mut buf, "s", b"k", None);
        assert_eq!(buf, [8, 0x0a, 1, b's', 0x10, 1, 0x1a, 1, b'k']);
    }

    #[test]
    fn record_truncated_is_error() {
        let mut buf = Vec::new();
        encode_record(&mut buf, "bank", b"alice", Some(b"10"));
        for cut in 1..buf.len() {
            let r: Result<Vec<_>> = Records::new(&buf[..cut]).collect();
            assert!(r.is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn uvarint_lengths() {
        for v in [0u64, 1, 127, 128, 16383, 16384, u64::MAX] {
            let mut b = Vec::new();
            put_uvarint(&mut b, v);
            assert_eq!(b.len(), uvarint_len(v));
            let mut pos = 0;
            assert_eq!(get_uvarint(&b, &mut pos), Some(v));
        }
    }
}

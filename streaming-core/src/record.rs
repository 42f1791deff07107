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
pub(crate) fn uvarint_len(v: u64) -> usize {
    // 1 byte per 7 bits, at least one.
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

/// Appends `v` as a uvarint (LEB128, as protobuf).
pub(crate) fn put_uvarint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Reads a uvarint at `buf[*pos..]`, advancing `pos`. `None` when the buffer
/// ends inside the number or the number overflows 64 bits.
pub(crate) fn get_uvarint(buf: &[u8], pos: &mut usize) -> Option<u64> {
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

/// The number of bytes [`encode_record`] appends for this record.
pub(crate) fn record_len(store: &str, key: &[u8], value: Option<&[u8]>) -> usize {
    let len = message_len(store, key, value);
    uvarint_len(len as u64) + len
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
///
/// Records in the canonical encoding (the one [`encode_record`] writes, with
/// lengths under 2^14 for the record and 2^7 for each field) take a fast
/// path that decodes to exactly what the general decoder would; anything
/// else goes through the general decoder.
#[derive(Debug, Clone)]
pub struct Records<'a> {
    buf: &'a [u8],
    pos: usize,
    /// The previous record's store name, already checked to be UTF-8: the
    /// records of a store come in runs, so its bytes are compared instead of
    /// validated again.
    last_store: &'a str,
}

impl<'a> Records<'a> {
    /// Iterates `buf`, which holds whole uvarint-delimited records.
    pub fn new(buf: &'a [u8]) -> Records<'a> {
        Records {
            buf,
            pos: 0,
            last_store: "",
        }
    }

    /// The fast path: decodes the record at `start` when it is in the
    /// canonical form with short lengths, returning it and the offset after
    /// it; `None` sends the record to the general decoder (which also
    /// reports any error).
    #[inline(always)]
    fn next_canonical(&mut self, start: usize) -> Option<(Record<'a>, usize)> {
        let rest = self.buf.get(start..)?;
        let (len, len_bytes) = match *rest {
            [b0, ..] if b0 < 0x80 => (usize::from(b0), 1),
            [b0, b1, ..] if b1 < 0x80 => (usize::from(b0 & 0x7f) | usize::from(b1) << 7, 2),
            _ => return None,
        };
        let msg = rest.get(len_bytes..len_bytes + len)?;
        let (store, key, value) = split_canonical(msg)?;
        let store = if same_bytes(store, self.last_store.as_bytes()) {
            self.last_store
        } else {
            let s = std::str::from_utf8(store).ok()?;
            self.last_store = s;
            s
        };
        Some((Record { store, key, value }, start + len_bytes + len))
    }

    /// Byte offset of the next record in the buffer.
    pub fn offset(&self) -> usize {
        self.pos
    }
}

impl<'a> Iterator for Records<'a> {
    type Item = Result<Record<'a>>;

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        if self.pos >= self.buf.len() {
            return None;
        }
        let start = self.pos;
        // The record is taken out of both paths before it is wrapped, which
        // lets it stay in registers on the fast path.
        let record = match self.next_canonical(start) {
            Some((record, end)) => {
                self.pos = end;
                record
            }
            None => match self.next_general(start) {
                Ok(record) => record,
                Err(e) => return Some(Err(e)),
            },
        };
        Some(Ok(record))
    }
}

impl<'a> Records<'a> {
    /// The general path of [`Records::next`], from `start` (not at the end).
    #[inline(never)]
    fn next_general(&mut self, start: usize) -> Result<Record<'a>> {
        let fail = |this: &mut Self, reason| {
            this.pos = this.buf.len();
            Err(Error::BadRecord {
                offset: start,
                reason,
            })
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
        match decode_general(msg) {
            Ok(r) => Ok(r),
            Err(reason) => fail(self, reason),
        }
    }
}

/// Whether `a` and `b` are equal; inline, without a call to `bcmp` (store
/// names are short).
#[inline(always)]
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// One length-delimited field `tag` with a one-byte length at the front of
/// `m`: the field's bytes and the rest.
#[inline(always)]
fn split_short_field(m: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    match m {
        [t, l, rest @ ..] if *t == tag && *l < 0x80 && usize::from(*l) <= rest.len() => {
            Some(rest.split_at(usize::from(*l)))
        }
        _ => None,
    }
}

/// Store bytes, key and value (`None`: delete) of a canonical message.
type CanonicalParts<'a> = (&'a [u8], &'a [u8], Option<&'a [u8]>);

/// Splits a message in the canonical form (store, then `delete = true` or
/// nothing, then key, then value unless deleted or empty; every field with
/// a one-byte length) into store bytes, key and value. `None` when the
/// message is in any other form: the general decoder then decides. What
/// this accepts, the general decoder decodes to the same record.
#[inline(always)]
fn split_canonical(msg: &[u8]) -> Option<CanonicalParts<'_>> {
    let (store, m) = split_short_field(msg, TAG_STORE)?;
    let (delete, m) = match m {
        [TAG_DELETE, 1, rest @ ..] => (true, rest),
        _ => (false, m),
    };
    let (key, m) = split_short_field(m, TAG_KEY)?;
    if m.is_empty() {
        // A delete, or a set of an empty value (which protobuf omits).
        return Some((store, key, if delete { None } else { Some(m) }));
    }
    if delete {
        return None;
    }
    let (value, rest) = split_short_field(m, TAG_VALUE)?;
    rest.is_empty().then_some((store, key, Some(value)))
}

/// Decodes one `StoreKVPair` message (without its length prefix).
pub fn decode_message(msg: &[u8]) -> std::result::Result<Record<'_>, &'static str> {
    if let Some((store, key, value)) = split_canonical(msg)
        && let Ok(store) = std::str::from_utf8(store)
    {
        return Ok(Record { store, key, value });
    }
    decode_general(msg)
}

/// Decodes any valid protobuf encoding of a `StoreKVPair` message.
fn decode_general(msg: &[u8]) -> std::result::Result<Record<'_>, &'static str> {
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

    /// The records of `buf` as the general decoder alone reads them.
    fn general_only(buf: &[u8]) -> Vec<std::result::Result<Record<'_>, (usize, &'static str)>> {
        let mut it = Records::new(buf);
        let mut out = Vec::new();
        while it.pos < buf.len() {
            let start = it.pos;
            match it.next_general(start) {
                Ok(r) => out.push(Ok(r)),
                Err(Error::BadRecord { offset, reason }) => out.push(Err((offset, reason))),
                Err(e) => panic!("unexpected {e}"),
            }
        }
        out
    }

    #[test]
    fn fast_path_agrees_with_general_decoder() {
        let mut buf = Vec::new();
        encode_record(&mut buf, "bank", b"alice", Some(b"10"));
        encode_record(&mut buf, "bank", b"bob", None);
        encode_record(&mut buf, "bank", b"carol", Some(b""));
        encode_record(&mut buf, "acc", &[1; 127], Some(&[2; 127]));
        encode_record(&mut buf, "acc", &[3; 128], Some(&[4; 5]));
        encode_record(&mut buf, "gov", b"k", Some(&[5; 300]));
        // Every one-byte change (a sample of values at every position) reads
        // the same, records and errors, through the fast path as through
        // the general decoder alone.
        for i in 0..buf.len() {
            for v in [
                0u8, 1, 2, 0x08, 0x0a, 0x10, 0x12, 0x1a, 0x22, 0x7f, 0x80, 0xff,
            ] {
                let mut b = buf.clone();
                b[i] = v;
                let fast: Vec<_> = Records::new(&b)
                    .map(|r| {
                        r.map_err(|e| match e {
                            Error::BadRecord { offset, reason } => (offset, reason),
                            e => panic!("unexpected {e}"),
                        })
                    })
                    .collect();
                assert_eq!(fast, general_only(&b), "byte {i} set to {v:#x}");
                let mut pos = 0;
                while pos < b.len() {
                    let Some(len) = get_uvarint(&b, &mut pos) else {
                        break;
                    };
                    let Some(msg) = b.get(pos..pos + len as usize) else {
                        break;
                    };
                    assert_eq!(decode_message(msg), decode_general(msg));
                    pos += len as usize;
                }
            }
        }
        // Non-canonical encodings (field order, repeated fields, long
        // lengths) fall back and decode as protobuf says.
        let cases: [(&[u8], Record<'_>); 4] = [
            (
                &[0x1a, 1, b'k', 0x0a, 1, b's', 0x22, 1, b'v'],
                Record {
                    store: "s",
                    key: b"k",
                    value: Some(b"v"),
                },
            ),
            (
                &[0x0a, 1, b's', 0x1a, 1, b'k', 0x22, 1, b'v', 0x10, 1],
                Record {
                    store: "s",
                    key: b"k",
                    value: None,
                },
            ),
            (
                &[0x0a, 0x81, 0, b's', 0x1a, 1, b'k'],
                Record {
                    store: "s",
                    key: b"k",
                    value: Some(b""),
                },
            ),
            (
                &[0x0a, 1, b's', 0x10, 1, 0x1a, 1, b'k', 0x10, 0],
                Record {
                    store: "s",
                    key: b"k",
                    value: Some(b""),
                },
            ),
        ];
        for (msg, want) in cases {
            assert_eq!(decode_message(msg), Ok(want));
            let mut b = vec![msg.len() as u8];
            b.extend_from_slice(msg);
            assert_eq!(Records::new(&b).next().map(|r| r.ok()), Some(Some(want)));
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

    #[test]
    fn record_len_is_what_encode_record_appends() {
        let long = vec![7u8; 20_000];
        let none: Option<&[u8]> = None;
        let cases = [
            ("acc", &b"k"[..], Some(&b"v"[..])),
            ("acc", &b"k"[..], none),
            ("acc", &b""[..], Some(&b""[..])),
            ("", &b""[..], none),
            ("bank", &long[..200], Some(&long[..130])),
            ("bank", &long[..100], Some(&long[..])),
        ];
        for (store, key, value) in cases {
            let mut out = vec![1, 2, 3];
            encode_record(&mut out, store, key, value);
            assert_eq!(
                out.len() - 3,
                record_len(store, key, value),
                "{store} {key:?}"
            );
        }
    }
}

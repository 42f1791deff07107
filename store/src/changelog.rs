//! The change log: every committed block's change set, written in the same
//! engine transaction as the state, so a committed block always has its
//! changes on disk. Streamers that fall behind read it back.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};

use statestream_core::{ChangeSet, Hash, StoreKey, StoreParts};

use crate::error::{Error, Result};

pub(crate) const CHANGELOG: TableDefinition<'static, u64, &'static [u8]> =
    TableDefinition::new("changelog");

/// Version byte in front of every change log entry. Format 1 (read, no
/// longer written) lacks the created flags.
const ENTRY_FORMAT: u8 = 2;

/// Where an entry is encoded: a `Vec`, or a slice of exactly the entry's
/// length (the page space redb reserves for it, so the records are copied
/// into the database once, not first into a buffer).
trait EntrySink {
    fn put(&mut self, bytes: &[u8]);

    fn put_uvarint(&mut self, v: u64) {
        let mut buf = [0u8; 10];
        let mut n = 0;
        let mut v = v;
        while v >= 0x80 {
            buf[n] = (v as u8) | 0x80;
            v >>= 7;
            n += 1;
        }
        buf[n] = v as u8;
        self.put(&buf[..=n]);
    }
}

impl EntrySink for Vec<u8> {
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

/// Counts the bytes instead of writing them.
struct Len(usize);

impl EntrySink for Len {
    fn put(&mut self, bytes: &[u8]) {
        self.0 += bytes.len();
    }
}

/// Fills a slice front to back.
struct Fill<'a>(&'a mut [u8]);

impl EntrySink for Fill<'_> {
    fn put(&mut self, bytes: &[u8]) {
        let (head, tail) = std::mem::take(&mut self.0).split_at_mut(bytes.len());
        head.copy_from_slice(bytes);
        self.0 = tail;
    }
}

/// Encodes a change set as a change log entry:
/// `format u8 | app_hash [32] | uvarint len | app_meta | uvarint n |
/// n × (uvarint len | name | hash [32] | uvarint count | uvarint len | records
/// | uvarint len | created flags)`.
fn encode_entry(cs: &ChangeSet, out: &mut impl EntrySink) {
    out.put(&[ENTRY_FORMAT]);
    out.put(cs.app_hash());
    out.put_uvarint(cs.app_meta().len() as u64);
    out.put(cs.app_meta());
    out.put_uvarint(cs.stores().len() as u64);
    for s in cs.stores() {
        let name = s.store().name().as_bytes();
        out.put_uvarint(name.len() as u64);
        out.put(name);
        out.put(s.hash());
        out.put_uvarint(s.len() as u64);
        out.put_uvarint(s.encoded().len() as u64);
        out.put(s.encoded());
        out.put_uvarint(s.created_bits().len() as u64);
        out.put(s.created_bits());
    }
}

/// Length of the change log entry of `cs`.
pub(crate) fn entry_len(cs: &ChangeSet) -> usize {
    let mut len = Len(0);
    encode_entry(cs, &mut len);
    len.0
}

/// Writes the change log entry of `cs` into `out`, which must be exactly
/// [`entry_len`] bytes long.
pub(crate) fn write_entry(cs: &ChangeSet, out: &mut [u8]) {
    debug_assert_eq!(out.len(), entry_len(cs));
    encode_entry(cs, &mut Fill(out));
}

/// The change log entry of `cs` in a new `Vec` (for tests).
#[cfg(test)]
pub(crate) fn entry_bytes(cs: &ChangeSet) -> Vec<u8> {
    let mut out = Vec::new();
    encode_entry(cs, &mut out);
    out
}

pub(crate) fn decode_entry(height: u64, buf: &[u8]) -> std::result::Result<ChangeSet, String> {
    let mut pos = 0usize;
    let take = |pos: &mut usize, n: usize| -> std::result::Result<&[u8], String> {
        let end = pos
            .checked_add(n)
            .filter(|&e| e <= buf.len())
            .ok_or_else(|| format!("change log entry {height} is truncated at byte {pos}"))?;
        let s = &buf[*pos..end];
        *pos = end;
        Ok(s)
    };
    let uvarint = |pos: &mut usize| -> std::result::Result<usize, String> {
        let mut rest = &buf[*pos..];
        let before = rest.len();
        let v = prost::encoding::decode_varint(&mut rest)
            .ok()
            .and_then(|v| usize::try_from(v).ok())
            .ok_or_else(|| format!("change log entry {height} has a bad length at byte {pos}"))?;
        *pos += before - rest.len();
        Ok(v)
    };
    let format = take(&mut pos, 1)?[0];
    if format != 1 && format != ENTRY_FORMAT {
        return Err(format!(
            "change log entry {height} has unknown format {format}"
        ));
    }
    let hash = |pos: &mut usize| -> std::result::Result<Hash, String> {
        take(pos, 32)?
            .try_into()
            .map_err(|_| format!("change log entry {height}: bad hash"))
    };
    let app_hash = hash(&mut pos)?;
    let n = uvarint(&mut pos)?;
    let app_meta = take(&mut pos, n)?.to_vec();
    let stores_n = uvarint(&mut pos)?;
    let mut parts = Vec::with_capacity(stores_n.min(1024));
    for _ in 0..stores_n {
        let n = uvarint(&mut pos)?;
        let name = std::str::from_utf8(take(&mut pos, n)?)
            .map_err(|_| format!("change log entry {height}: store name is not UTF-8"))?;
        let store = StoreKey::new(name).map_err(|e| format!("change log entry {height}: {e}"))?;
        let hash = hash(&mut pos)?;
        let count = uvarint(&mut pos)?;
        let n = uvarint(&mut pos)?;
        let encoded = take(&mut pos, n)?.to_vec();
        let created = if format == 1 {
            Vec::new()
        } else {
            let n = uvarint(&mut pos)?;
            take(&mut pos, n)?.to_vec()
        };
        parts.push(StoreParts {
            store,
            hash,
            encoded,
            count,
            created,
        });
    }
    if pos != buf.len() {
        return Err(format!(
            "change log entry {height} has {} trailing bytes",
            buf.len() - pos
        ));
    }
    ChangeSet::from_parts(height, app_hash, app_meta, parts).map_err(|e| e.to_string())
}

/// How much the change log holds: what [`ChangeLog::size`] returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct ChangeLogSize {
    /// Blocks kept.
    pub blocks: u64,
    /// Bytes of their encoded entries (the records, hashes and metadata;
    /// the engine's pages around them are not counted).
    pub bytes: u64,
}

/// The change log's size, counted once when the store opens and then kept
/// up to date by the store's own commits and prunings (a couple of atomic
/// additions each), so that reading it costs no database access.
#[derive(Debug, Default)]
pub(crate) struct SizeCounter {
    blocks: AtomicU64,
    bytes: AtomicU64,
}

impl SizeCounter {
    /// Counts the entries of the change log in `db`.
    pub(crate) fn scan(db: &Database, path: &std::path::Path) -> Result<SizeCounter> {
        let err = |e: redb::Error| Error::engine(path, "measuring the change log", e);
        let txn = db.begin_read().map_err(|e| err(e.into()))?;
        let table = txn.open_table(CHANGELOG).map_err(|e| err(e.into()))?;
        let (mut blocks, mut bytes) = (0u64, 0u64);
        for entry in table.iter().map_err(|e| err(e.into()))? {
            let (_, value) = entry.map_err(|e| err(e.into()))?;
            blocks += 1;
            bytes += value.value().len() as u64;
        }
        Ok(SizeCounter {
            blocks: AtomicU64::new(blocks),
            bytes: AtomicU64::new(bytes),
        })
    }

    /// Records a committed change: `added` bytes in one new entry (0 when
    /// none), `removed` entries of `removed_bytes` pruned.
    pub(crate) fn update(&self, added: Option<u64>, removed: u64, removed_bytes: u64) {
        if let Some(added) = added {
            self.blocks.fetch_add(1, Ordering::Relaxed);
            self.bytes.fetch_add(added, Ordering::Relaxed);
        }
        // Saturating: the counters are a gauge, never a reason to fail.
        let _ = self
            .blocks
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                Some(b.saturating_sub(removed))
            });
        let _ = self
            .bytes
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                Some(b.saturating_sub(removed_bytes))
            });
    }

    fn get(&self) -> ChangeLogSize {
        ChangeLogSize {
            blocks: self.blocks.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
        }
    }
}

/// The change log's size and nothing else: see [`ChangeLog::meter`].
#[derive(Debug, Clone)]
pub struct ChangeLogMeter(Arc<SizeCounter>);

impl ChangeLogMeter {
    /// Blocks and bytes kept, as of the store's last commit.
    pub fn size(&self) -> ChangeLogSize {
        self.0.get()
    }
}

/// A read handle on the change log. Cheap to clone and `Send + Sync`: the
/// delivery workers of streamers read it from their own threads while the
/// node keeps committing (reads see a consistent snapshot and never block
/// commits).
#[derive(Clone)]
pub struct ChangeLog {
    pub(crate) db: Arc<Database>,
    pub(crate) path: Arc<PathBuf>,
    pub(crate) size: Arc<SizeCounter>,
}

impl std::fmt::Debug for ChangeLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChangeLog")
            .field("path", &self.path)
            .finish()
    }
}

impl ChangeLog {
    fn err(&self) -> impl Fn(redb::Error) -> Error + '_ {
        |e| Error::engine(&self.path, "reading the change log", e)
    }

    /// The change log table in a fresh read snapshot.
    fn table(&self) -> Result<redb::ReadOnlyTable<u64, &'static [u8]>> {
        let err = self.err();
        let txn = self.db.begin_read().map_err(|e| err(e.into()))?;
        txn.open_table(CHANGELOG).map_err(|e| err(e.into()))
    }

    /// The change set of block `height`, or `None` if it was never committed
    /// or has been pruned.
    pub fn get(&self, height: u64) -> Result<Option<ChangeSet>> {
        let Some(v) = self
            .table()?
            .get(height)
            .map_err(|e| self.err()(e.into()))?
        else {
            return Ok(None);
        };
        decode_entry(height, v.value())
            .map(Some)
            .map_err(|what| Error::Corrupt {
                path: self.path.to_path_buf(),
                what,
            })
    }

    /// The change set of block `height`; an error if it is not kept.
    pub fn read(&self, height: u64) -> Result<ChangeSet> {
        match self.get(height)? {
            Some(cs) => Ok(cs),
            None => Err(Error::NotInChangeLog {
                height,
                kept: match self.bounds()? {
                    Some((lo, hi)) => format!("{lo}..={hi}"),
                    None => "nothing".to_string(),
                },
            }),
        }
    }

    /// The lowest and highest heights kept, `None` when empty.
    pub fn bounds(&self) -> Result<Option<(u64, u64)>> {
        let table = self.table()?;
        let first = table.first().map_err(|e| self.err()(e.into()))?;
        let last = table.last().map_err(|e| self.err()(e.into()))?;
        Ok(match (first, last) {
            (Some(f), Some(l)) => Some((f.0.value(), l.0.value())),
            _ => None,
        })
    }

    /// Number of blocks kept.
    pub fn len(&self) -> Result<u64> {
        self.table()?.len().map_err(|e| self.err()(e.into()))
    }

    /// Whether the change log holds no block.
    pub fn is_empty(&self) -> Result<bool> {
        Ok(self.len()? == 0)
    }

    /// Blocks and bytes kept, as of the last commit of the store this
    /// handle came from. No database access: cheap enough for every scrape
    /// of a metrics endpoint.
    pub fn size(&self) -> ChangeLogSize {
        self.size.get()
    }

    /// A handle that reads only [`size`](ChangeLog::size): unlike this one,
    /// it does not keep the database open (for a metrics endpoint that may
    /// outlive the store).
    pub fn meter(&self) -> ChangeLogMeter {
        ChangeLogMeter(Arc::clone(&self.size))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use statestream_core::{Action, StoreChanges};

    fn change_set() -> ChangeSet {
        let mut a = StoreChanges::new(StoreKey::new("a").expect("valid"));
        a.push(b"k1", Some(&[7; 300]), true);
        a.push(b"k2", None, false);
        a.push(b"k3", Some(b"v"), false);
        let b = StoreChanges::new(StoreKey::new("b").expect("valid"));
        ChangeSet::seal(9, vec![1, 2, 3], vec![a, b], &[[3; 32], [4; 32]])
    }

    #[test]
    fn changelog_entry_in_place_equals_vec_and_round_trips() {
        let cs = change_set();
        let bytes = entry_bytes(&cs);
        assert_eq!(bytes.len(), entry_len(&cs));
        let mut in_place = vec![0xAA; entry_len(&cs)];
        write_entry(&cs, &mut in_place);
        assert_eq!(in_place, bytes);
        assert_eq!(decode_entry(9, &bytes).expect("decodes"), cs);
        for cut in 0..bytes.len() {
            assert!(decode_entry(9, &bytes[..cut]).is_err(), "cut at {cut}");
        }
        let actions: Vec<Action> = decode_entry(9, &bytes).expect("decodes").stores()[0]
            .changes()
            .map(|(_, a)| a)
            .collect();
        assert_eq!(actions, [Action::Create, Action::Delete, Action::Update]);
    }
}

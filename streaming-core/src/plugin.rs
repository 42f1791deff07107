//! The out-of-process plugin protocol (`docs/plugin-protocol.md`): its
//! framing, used by both the node (the `process` streamer) and plugins, and a
//! small helper for writing a plugin in Rust.
//!
//! Every frame is a uvarint (LEB128) length followed by that many bytes of
//! one protobuf message. The node writes `Hello` then one `BlockFrame` per
//! block to the plugin's stdin; the plugin writes `HelloAck` then one `Ack`
//! per block to its stdout. Stdout is reserved for the protocol: a plugin
//! logs to stderr.
//!
//! A plugin that appends every record to a file:
//!
//! ```no_run
//! use std::io::Write;
//!
//! fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let mut out = std::fs::File::create("records.txt")?;
//!     statestream_core::plugin::serve("my-plugin", "0.1.0", |block| {
//!         for record in block.records() {
//!             let record = record?;
//!             writeln!(out, "{} {} {:?}", block.height(), record.store, record.key)?;
//!         }
//!         out.sync_data()?;
//!         Ok(())
//!     })?;
//!     Ok(())
//! }
//! ```

use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};

use crate::record::{Records, put_uvarint};
use prost::Message;

use crate::error::BoxError;
use crate::proto;

/// The protocol version this crate speaks (`Hello.protocol_version`,
/// `HelloAck.protocol_version`).
pub const PROTOCOL_VERSION: u32 = 1;

/// The largest frame either side accepts by default, in bytes of its
/// message (the length prefix not counted): a longer length prefix is an
/// error, not an allocation. The node checks each block against its limit
/// (the `process` streamer's `max_frame_bytes`, this by default) before
/// sending it; a plugin reads with its own ([`PluginIo::set_max_frame_len`],
/// [`serve_with_max_frame_len`]). Raise both together.
pub const MAX_FRAME_LEN: usize = 64 << 20;

/// A framing or protocol error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// Reading or writing the pipe failed.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The stream ended inside a frame.
    #[error("the stream ended inside a frame ({got} of {expected} bytes)")]
    Truncated { got: usize, expected: usize },
    /// The length prefix is not a valid uvarint.
    #[error("invalid frame length prefix (not a uvarint)")]
    BadLength,
    /// The length prefix exceeds [`MAX_FRAME_LEN`].
    #[error("frame length {len} exceeds the limit of {max} bytes")]
    TooLarge { len: u64, max: usize },
    /// The frame's bytes are not the expected message.
    #[error("frame does not decode as {message}: {reason}")]
    Decode {
        message: &'static str,
        reason: String,
    },
    /// The peer speaks another protocol version.
    #[error("protocol version mismatch: the peer speaks version {peer}, this side speaks {ours}")]
    Version { peer: u32, ours: u32 },
    /// The stream ended where a frame was required.
    #[error("the stream ended before the {expected} frame")]
    Eof { expected: &'static str },
}

/// Appends `len` as the frame's length prefix.
fn put_len(out: &mut Vec<u8>, len: usize) {
    put_uvarint(out, len as u64);
}

/// Writes one frame: the uvarint length of `payload`, then `payload`. Does
/// not flush.
pub fn write_frame_bytes<W: Write + ?Sized>(w: &mut W, payload: &[u8]) -> io::Result<()> {
    let mut prefix = Vec::with_capacity(10);
    put_len(&mut prefix, payload.len());
    w.write_all(&prefix)?;
    w.write_all(payload)
}

/// Writes one message as a frame and flushes.
pub fn write_frame<W: Write + ?Sized, M: Message>(w: &mut W, message: &M) -> io::Result<()> {
    write_frame_bytes(w, &message.encode_to_vec())?;
    w.flush()
}

/// The bytes of one frame (length prefix included) whose payload is
/// `payload`.
pub fn frame_bytes(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 10);
    put_len(&mut out, payload.len());
    out.extend_from_slice(payload);
    out
}

/// Reads one frame's payload into `buf` (replacing its content). Returns
/// `Ok(false)` at a clean end of stream (no byte of a new frame), an error
/// for a stream that ends inside a frame, a bad or oversized length
/// (`max` bytes at most), or a failed read.
pub fn read_frame<R: Read + ?Sized>(
    r: &mut R,
    buf: &mut Vec<u8>,
    max: usize,
) -> Result<bool, FrameError> {
    let mut len: u64 = 0;
    let mut byte = [0u8; 1];
    let mut i = 0u32;
    loop {
        match r.read(&mut byte) {
            Ok(0) if i == 0 => return Ok(false),
            Ok(0) => {
                return Err(FrameError::Truncated {
                    got: 0,
                    expected: 0,
                });
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        }
        let b = byte[0];
        if i == 9 && b > 1 {
            return Err(FrameError::BadLength);
        }
        len |= u64::from(b & 0x7f) << (7 * i);
        i += 1;
        if b & 0x80 == 0 {
            break;
        }
    }
    if len > max as u64 {
        return Err(FrameError::TooLarge { len, max });
    }
    let len = len as usize;
    buf.clear();
    buf.resize(len, 0);
    let mut got = 0;
    while got < len {
        match r.read(&mut buf[got..]) {
            Ok(0) => return Err(FrameError::Truncated { got, expected: len }),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(true)
}

/// Decodes a frame's payload as `M` (named `message` in errors).
pub fn decode_frame<M: Message + Default>(
    payload: &[u8],
    message: &'static str,
) -> Result<M, FrameError> {
    M::decode(payload).map_err(|e| FrameError::Decode {
        message,
        reason: e.to_string(),
    })
}

/// One block as a plugin receives it.
#[derive(Debug, Clone)]
pub struct PluginBlock {
    frame: proto::BlockFrame,
}

impl PluginBlock {
    /// Wraps a decoded frame.
    pub fn new(mut frame: proto::BlockFrame) -> PluginBlock {
        frame.meta.get_or_insert_with(Default::default);
        PluginBlock { frame }
    }

    /// The block height.
    pub fn height(&self) -> u64 {
        self.frame.height
    }

    /// The block's metadata (time, app payloads, commit info, store hashes,
    /// length and CRC-32C of the records).
    pub fn meta(&self) -> &proto::BlockMetadata {
        self.frame
            .meta
            .as_ref()
            .expect("PluginBlock::new fills in a missing meta")
    }

    /// The records, ordered by store then key.
    pub fn records(&self) -> Records<'_> {
        Records::new(&self.frame.records)
    }

    /// The encoded records: a data file's payload.
    pub fn encoded_records(&self) -> &[u8] {
        &self.frame.records
    }

    /// The frame as decoded.
    pub fn frame(&self) -> &proto::BlockFrame {
        &self.frame
    }
}

/// The plugin side of the protocol over any reader and writer (stdin and
/// stdout for a real plugin: [`PluginIo::stdio`]).
///
/// Call [`handshake`](PluginIo::handshake) once, then alternate
/// [`next_block`](PluginIo::next_block) and [`ack`](PluginIo::ack) (or
/// [`ack_error`](PluginIo::ack_error)). Misbehaving on purpose (for tests)
/// goes through [`writer`](PluginIo::writer).
#[derive(Debug)]
pub struct PluginIo<R, W> {
    reader: R,
    writer: W,
    buf: Vec<u8>,
    max_frame_len: usize,
}

impl PluginIo<BufReader<io::Stdin>, BufWriter<io::Stdout>> {
    /// The protocol over the process's stdin and stdout.
    pub fn stdio() -> Self {
        PluginIo::new(BufReader::new(io::stdin()), BufWriter::new(io::stdout()))
    }
}

impl<R: BufRead, W: Write> PluginIo<R, W> {
    /// The protocol over `reader` (the node's frames) and `writer` (the
    /// answers).
    pub fn new(reader: R, writer: W) -> Self {
        PluginIo {
            reader,
            writer,
            buf: Vec::new(),
            max_frame_len: MAX_FRAME_LEN,
        }
    }

    /// Sets the largest frame this plugin reads, in bytes of its message
    /// ([`MAX_FRAME_LEN`] by default). A node whose `max_frame_bytes` is
    /// raised sends larger blocks: raise this to the same value, or reading
    /// such a block fails with [`FrameError::TooLarge`].
    pub fn set_max_frame_len(&mut self, max: usize) {
        self.max_frame_len = max;
    }

    /// The largest frame this plugin reads.
    pub fn max_frame_len(&self) -> usize {
        self.max_frame_len
    }

    /// Reads the node's `Hello` and answers a `HelloAck` naming this plugin.
    /// A node speaking another protocol version is answered (so that it can
    /// report the mismatch) and then an error.
    pub fn handshake(&mut self, name: &str, version: &str) -> Result<proto::Hello, FrameError> {
        self.handshake_as(name, version, PROTOCOL_VERSION)
    }

    /// [`handshake`](PluginIo::handshake) claiming `protocol_version`
    /// (tests use it to play a plugin of another version).
    pub fn handshake_as(
        &mut self,
        name: &str,
        version: &str,
        protocol_version: u32,
    ) -> Result<proto::Hello, FrameError> {
        if !read_frame(&mut self.reader, &mut self.buf, self.max_frame_len)? {
            return Err(FrameError::Eof { expected: "Hello" });
        }
        let hello: proto::Hello = decode_frame(&self.buf, "Hello")?;
        let ack = proto::HelloAck {
            protocol_version,
            plugin_name: name.to_string(),
            plugin_version: version.to_string(),
        };
        write_frame(&mut self.writer, &ack)?;
        if hello.protocol_version != protocol_version {
            return Err(FrameError::Version {
                peer: hello.protocol_version,
                ours: protocol_version,
            });
        }
        Ok(hello)
    }

    /// The next block, or `None` when the node closed the stream (a clean
    /// shutdown: the plugin should exit with status 0).
    pub fn next_block(&mut self) -> Result<Option<PluginBlock>, FrameError> {
        if !read_frame(&mut self.reader, &mut self.buf, self.max_frame_len)? {
            return Ok(None);
        }
        let frame: proto::BlockFrame = decode_frame(&self.buf, "BlockFrame")?;
        Ok(Some(PluginBlock::new(frame)))
    }

    /// Acknowledges `height`: it is durably handled.
    pub fn ack(&mut self, height: u64) -> Result<(), FrameError> {
        let ack = proto::Ack {
            height,
            error: String::new(),
        };
        write_frame(&mut self.writer, &ack)?;
        Ok(())
    }

    /// Reports that `height` could not be handled; the node delivers it again.
    pub fn ack_error(&mut self, height: u64, error: &str) -> Result<(), FrameError> {
        let error = if error.is_empty() {
            "unspecified error"
        } else {
            error
        };
        let ack = proto::Ack {
            height,
            error: error.to_string(),
        };
        write_frame(&mut self.writer, &ack)?;
        Ok(())
    }

    /// The raw output stream (stdout for a real plugin).
    pub fn writer(&mut self) -> &mut W {
        &mut self.writer
    }
}

/// Runs a plugin over stdin and stdout until the node closes the stream:
/// the handshake as `name` `version`, then for each block `handler`, and an
/// `Ack` (or, if `handler` fails, an `Ack` carrying its error: the node then
/// delivers the block again). Returns `Ok` at a clean end of stream.
///
/// `handler` must have handled the block durably when it returns `Ok`: the
/// node advances its cursor on the acknowledgement. It may see a height
/// again (at least once delivery) and must then give the same result.
///
/// Frames are read up to [`MAX_FRAME_LEN`] bytes; a plugin of a node whose
/// `max_frame_bytes` is raised uses [`serve_with_max_frame_len`].
pub fn serve<F>(name: &str, version: &str, handler: F) -> Result<(), FrameError>
where
    F: FnMut(&PluginBlock) -> Result<(), BoxError>,
{
    serve_with_max_frame_len(name, version, MAX_FRAME_LEN, handler)
}

/// [`serve`], reading frames of up to `max_frame_len` bytes: the value of
/// the node's `max_frame_bytes` for this plugin. A block over this plugin's
/// limit ends `serve` with [`FrameError::TooLarge`] (the plugin then exits,
/// and the node restarts it with the same block), so the two limits must
/// match.
pub fn serve_with_max_frame_len<F>(
    name: &str,
    version: &str,
    max_frame_len: usize,
    mut handler: F,
) -> Result<(), FrameError>
where
    F: FnMut(&PluginBlock) -> Result<(), BoxError>,
{
    let mut io = PluginIo::stdio();
    io.set_max_frame_len(max_frame_len);
    io.handshake(name, version)?;
    while let Some(block) = io.next_block()? {
        match handler(&block) {
            Ok(()) => io.ack(block.height())?,
            Err(e) => io.ack_error(block.height(), &e.to_string())?,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plugin_frame_roundtrip() {
        let mut out = Vec::new();
        let ack = proto::Ack {
            height: 300,
            error: "x".into(),
        };
        write_frame(&mut out, &ack).unwrap();
        write_frame_bytes(&mut out, &[]).unwrap();
        let mut r = &out[..];
        let mut buf = Vec::new();
        assert!(read_frame(&mut r, &mut buf, MAX_FRAME_LEN).unwrap());
        let back: proto::Ack = decode_frame(&buf, "Ack").unwrap();
        assert_eq!(back, ack);
        assert!(read_frame(&mut r, &mut buf, MAX_FRAME_LEN).unwrap());
        assert!(buf.is_empty());
        assert!(!read_frame(&mut r, &mut buf, MAX_FRAME_LEN).unwrap());
    }

    #[test]
    fn plugin_frame_errors() {
        let mut buf = Vec::new();
        // Oversized length: refused before any allocation.
        let big = frame_bytes(&[0; 11]);
        let r = read_frame(&mut &big[..], &mut buf, 10);
        assert!(matches!(r, Err(FrameError::TooLarge { len: 11, max: 10 })));
        // Truncated payload and truncated prefix.
        let r = read_frame(&mut &big[..5], &mut buf, 100);
        assert!(matches!(
            r,
            Err(FrameError::Truncated {
                got: 4,
                expected: 11
            })
        ));
        let r = read_frame(&mut &[0x80u8][..], &mut buf, 100);
        assert!(matches!(r, Err(FrameError::Truncated { .. })));
        // A uvarint longer than 64 bits.
        let r = read_frame(&mut &[0xffu8; 11][..], &mut buf, 100);
        assert!(matches!(r, Err(FrameError::BadLength)));
        // Bytes that are not an Ack.
        let r = decode_frame::<proto::Ack>(&[0xff, 0xff], "Ack");
        assert!(matches!(r, Err(FrameError::Decode { message: "Ack", .. })));
    }

    #[test]
    fn plugin_io_handshake_and_blocks() {
        let mut input = Vec::new();
        let hello = proto::Hello {
            protocol_version: PROTOCOL_VERSION,
            streamer_name: "idx".into(),
            stores: vec!["bank".into()],
            resume_height: 7,
        };
        write_frame(&mut input, &hello).unwrap();
        let mut records = Vec::new();
        crate::record::encode_record(&mut records, "bank", b"k", Some(b"v"));
        let frame = proto::BlockFrame {
            height: 7,
            meta: None,
            records,
        };
        write_frame(&mut input, &frame).unwrap();
        let mut io = PluginIo::new(&input[..], Vec::new());
        assert_eq!(io.handshake("p", "1.0").unwrap(), hello);
        let block = io.next_block().unwrap().unwrap();
        assert_eq!(block.height(), 7);
        let recs: Vec<_> = block.records().collect::<Result<_, _>>().unwrap();
        assert_eq!(recs.len(), 1);
        assert_eq!(recs[0].key, b"k");
        io.ack(7).unwrap();
        assert!(io.next_block().unwrap().is_none());

        let mut r = &io.writer()[..];
        let mut buf = Vec::new();
        assert!(read_frame(&mut r, &mut buf, MAX_FRAME_LEN).unwrap());
        let ha: proto::HelloAck = decode_frame(&buf, "HelloAck").unwrap();
        assert_eq!(ha.plugin_name, "p");
        assert_eq!(ha.protocol_version, PROTOCOL_VERSION);
        assert!(read_frame(&mut r, &mut buf, MAX_FRAME_LEN).unwrap());
        let ack: proto::Ack = decode_frame(&buf, "Ack").unwrap();
        assert_eq!(ack.height, 7);
    }

    #[test]
    fn plugin_io_max_frame_len_is_exact() {
        let hello = proto::Hello {
            protocol_version: PROTOCOL_VERSION,
            ..Default::default()
        };
        let block = proto::BlockFrame {
            height: 1,
            meta: None,
            records: vec![7; 2000],
        };
        let size = block.encoded_len();
        let mut input = Vec::new();
        write_frame(&mut input, &hello).unwrap();
        write_frame(&mut input, &block).unwrap();

        let mut io = PluginIo::new(&input[..], Vec::new());
        io.set_max_frame_len(size);
        assert_eq!(io.max_frame_len(), size);
        io.handshake("p", "1.0").unwrap();
        assert_eq!(io.next_block().unwrap().unwrap().height(), 1);

        let mut io = PluginIo::new(&input[..], Vec::new());
        io.set_max_frame_len(size - 1);
        io.handshake("p", "1.0").unwrap();
        let r = io.next_block();
        assert!(
            matches!(r, Err(FrameError::TooLarge { len, max }) if len == size as u64 && max == size - 1),
            "{r:?}"
        );
    }

    #[test]
    fn plugin_io_version_mismatch_still_answers() {
        let mut input = Vec::new();
        let hello = proto::Hello {
            protocol_version: 9,
            ..Default::default()
        };
        write_frame(&mut input, &hello).unwrap();
        let mut io = PluginIo::new(&input[..], Vec::new());
        let r = io.handshake("p", "1.0");
        assert!(matches!(r, Err(FrameError::Version { peer: 9, ours: 1 })));
        assert!(!io.writer().is_empty());
    }
}

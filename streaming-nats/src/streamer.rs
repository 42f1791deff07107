//! The streamer: one JetStream message per block (or several parts when a
//! block is bigger than the server's `max_payload`), acknowledged before
//! `on_block` returns.

use std::time::Duration;

use statestream_core::{Block, StreamError, Streamer};
use tracing::{debug, info, warn};

use crate::client::Client;
use crate::config::NatsStreamerConfig;
use crate::error::{NatsError, Result};
use crate::jetstream::StreamSpec;

/// Header with the deduplication id: `<stream>-<height>`, or
/// `<stream>-<height>-<part>` for the parts of a split block.
pub const HEADER_MSG_ID: &str = "Nats-Msg-Id";
/// Header with the block height, in decimal.
pub const HEADER_HEIGHT: &str = "Statestream-Height";
/// Header of a split block's parts: `<part>/<parts>`, parts numbered from
/// 1. A block that fits in one message has no such header.
pub const HEADER_PART: &str = "Statestream-Part";

/// Bytes kept free in each message for its headers when a block is split:
/// more than the longest header block (three headers with the stream name
/// and 20-digit numbers).
const HEADER_ROOM: usize = 256;

/// `type = "nats"`: publishes every block to a JetStream stream.
///
/// Each block is one message on `<subject>.blocks` whose payload is the
/// protobuf `BlockFrame` of the plugin protocol (`Block::encode_frame`),
/// with headers `Nats-Msg-Id: <stream>-<height>` and `Statestream-Height`.
/// A frame bigger than the server's `max_payload` is split into parts
/// (`Statestream-Part: i/n`, `Nats-Msg-Id: <stream>-<height>-<i>`) that a
/// reader concatenates.
///
/// `on_block` returns `Ok` only once the server acknowledged every message
/// of the block. On any error the connection is dropped and the error
/// returned; the next call connects again. Delivery is idempotent per
/// height twice over: on each connection the streamer looks up the last
/// block in the stream and does not publish heights at or below it again,
/// and JetStream drops a message whose `Nats-Msg-Id` it saw within the
/// stream's duplicate window.
pub struct NatsStreamer {
    name: String,
    config: NatsStreamerConfig,
    subject: String,
    client: Option<Client>,
    /// The last height whose every part the stream holds, as found when
    /// connecting, then advanced by each publish.
    last_in_stream: u64,
    /// The stream's `max_msg_size` when it has one (then messages are
    /// split to fit it as well as the server's `max_payload`).
    stream_max_msg: Option<usize>,
    frame: Vec<u8>,
}

impl std::fmt::Debug for NatsStreamer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsStreamer")
            .field("name", &self.name)
            .field("config", &self.config)
            .field("connected", &self.client.is_some())
            .field("last_in_stream", &self.last_in_stream)
            .finish()
    }
}

impl NatsStreamer {
    /// A streamer named `name` (its table in app.toml) with `config`.
    /// Nothing connects until the first block.
    pub fn new(name: &str, config: NatsStreamerConfig) -> NatsStreamer {
        NatsStreamer {
            name: name.to_string(),
            subject: config.blocks_subject(),
            config,
            client: None,
            last_in_stream: 0,
            stream_max_msg: None,
            frame: Vec::new(),
        }
    }

    /// Connects, makes sure the stream exists, and finds the last block it
    /// holds.
    fn connect(&mut self) -> Result<Client> {
        let mut client = Client::connect(&self.config.connect_options())?;
        let stream = &self.config.stream;
        self.stream_max_msg = None;
        match client.stream_info(stream)? {
            Some(info) => {
                self.stream_max_msg = usize::try_from(info.config.max_msg_size).ok();
                if !info
                    .config
                    .subjects
                    .iter()
                    .any(|s| subject_matches(s, &self.subject))
                {
                    warn!(streamer = %self.name, stream = %stream, subjects = ?info.config.subjects,
                        subject = %self.subject,
                        "the stream's subjects do not include the blocks subject");
                }
            }
            None if self.config.create_stream => {
                let spec = StreamSpec {
                    name: stream.clone(),
                    subjects: vec![self.subject.clone()],
                    duplicate_window: Duration::from_millis(self.config.duplicate_window_ms),
                    replicas: self.config.replicas,
                };
                client.create_stream(&spec)?;
                info!(streamer = %self.name, stream = %stream, subject = %self.subject,
                    server = %client.url(), "created the JetStream stream");
            }
            None => {
                return Err(NatsError::MissingStream {
                    stream: stream.clone(),
                });
            }
        }
        self.last_in_stream = match client.last_message(stream, &self.subject)? {
            None => 0,
            Some(m) => {
                let height = m.header(HEADER_HEIGHT).and_then(|h| h.parse::<u64>().ok());
                let part = m.header(HEADER_PART).map(parse_part);
                match (height, part) {
                    (Some(h), None | Some(Some((_, _, true)))) => h,
                    // The last block is only partly there: publish it again.
                    (Some(h), Some(_)) => h.saturating_sub(1),
                    (None, _) => 0,
                }
            }
        };
        debug!(streamer = %self.name, server = %client.url(), last_in_stream = self.last_in_stream,
            max_payload = client.max_payload(), "connected to NATS");
        Ok(client)
    }

    fn publish_block(&mut self, block: &Block) -> Result<()> {
        let height = block.height();
        let fresh = self.client.is_none();
        if fresh {
            self.client = Some(self.connect()?);
        }
        if height <= self.last_in_stream {
            debug!(streamer = %self.name, height, last_in_stream = self.last_in_stream,
                "the stream already holds this block");
            return Ok(());
        }
        block.encode_frame(&mut self.frame);
        match self.publish_frame(height) {
            Ok(()) => Ok(()),
            // A reused connection may have been closed by the server while
            // idle (it answers no PING between blocks, so the server may
            // drop it as stale): connect again once, at once. Publishing
            // again is safe: the stream is checked on connecting, and
            // JetStream deduplicates.
            Err(
                e @ (NatsError::Io { .. } | NatsError::Protocol { .. } | NatsError::Server { .. }),
            ) if !fresh => {
                debug!(streamer = %self.name, height, error = %e, "reconnecting");
                self.client = Some(self.connect()?);
                if height <= self.last_in_stream {
                    return Ok(());
                }
                self.publish_frame(height)
            }
            Err(e) => Err(e),
        }
    }

    fn publish_frame(&mut self, height: u64) -> Result<()> {
        let Some(client) = self.client.as_mut() else {
            return Err(NatsError::Io {
                url: self.config.url.clone(),
                source: std::io::Error::new(std::io::ErrorKind::NotConnected, "not connected"),
            });
        };
        let stream = &self.config.stream;
        let height_text = height.to_string();
        let single_id = format!("{stream}-{height}");
        let single_headers = [
            (HEADER_MSG_ID, single_id.as_str()),
            (HEADER_HEIGHT, height_text.as_str()),
        ];
        let max = match self.stream_max_msg {
            Some(m) => m.min(client.max_payload()),
            None => client.max_payload(),
        };
        let single_len = self.frame.len() + crate::client::encode_headers(&single_headers).len();
        let mut acks = Vec::new();
        if single_len <= max {
            acks.push(client.publish(&self.subject, &single_headers, &self.frame)?);
        } else {
            let chunk = max
                .checked_sub(HEADER_ROOM + stream.len())
                .filter(|&c| c >= 1024)
                .ok_or_else(|| NatsError::Unsupported {
                    url: client.url().to_string(),
                    message: format!(
                        "the largest message the server and the stream accept ({max} bytes) is too small to split blocks into"
                    ),
                })?;
            let parts = self.frame.len().div_ceil(chunk);
            for (i, data) in self.frame.chunks(chunk).enumerate() {
                let i = i + 1;
                let id = format!("{stream}-{height}-{i}");
                let part = format!("{i}/{parts}");
                let headers = [
                    (HEADER_MSG_ID, id.as_str()),
                    (HEADER_HEIGHT, height_text.as_str()),
                    (HEADER_PART, part.as_str()),
                ];
                acks.push(client.publish(&self.subject, &headers, data)?);
            }
            debug!(streamer = %self.name, height, parts, bytes = self.frame.len(), "published a split block");
        }
        for ack in &acks {
            if &ack.stream != stream {
                return Err(NatsError::WrongStream {
                    height,
                    got: ack.stream.clone(),
                    want: stream.clone(),
                });
            }
        }
        if acks.iter().all(|a| a.duplicate) {
            debug!(streamer = %self.name, height, "JetStream already had this block (duplicate)");
        }
        self.last_in_stream = height;
        Ok(())
    }
}

impl Streamer for NatsStreamer {
    fn on_block(&mut self, block: &Block) -> std::result::Result<(), StreamError> {
        self.publish_block(block).map_err(|e| {
            // The connection's state is unknown after an error: start afresh.
            self.client = None;
            StreamError::msg(format!(
                "cannot publish block {} to JetStream stream {:?} (subject {}): {e}",
                block.height(),
                self.config.stream,
                self.subject
            ))
        })
    }

    fn on_close(&mut self) -> std::result::Result<(), StreamError> {
        self.client = None;
        Ok(())
    }
}

/// Parses `i/n`: `Some((i, n, i == n))` when valid.
pub(crate) fn parse_part(text: &str) -> Option<(u64, u64, bool)> {
    let (i, n) = text.split_once('/')?;
    let (i, n) = (i.trim().parse::<u64>().ok()?, n.trim().parse::<u64>().ok()?);
    (i >= 1 && i <= n).then_some((i, n, i == n))
}

/// Whether NATS subject pattern `pattern` (with `*` and `>` wildcards)
/// matches `subject`.
fn subject_matches(pattern: &str, subject: &str) -> bool {
    let mut p = pattern.split('.');
    let mut s = subject.split('.');
    loop {
        match (p.next(), s.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_parse() {
        assert_eq!(parse_part("1/3"), Some((1, 3, false)));
        assert_eq!(parse_part("3/3"), Some((3, 3, true)));
        assert_eq!(parse_part("0/3"), None);
        assert_eq!(parse_part("4/3"), None);
        assert_eq!(parse_part("x"), None);
    }

    #[test]
    fn subjects_match() {
        assert!(subject_matches("a.blocks", "a.blocks"));
        assert!(subject_matches("a.*", "a.blocks"));
        assert!(subject_matches("a.>", "a.blocks"));
        assert!(subject_matches(">", "a.blocks"));
        assert!(!subject_matches("a", "a.blocks"));
        assert!(!subject_matches("b.blocks", "a.blocks"));
        assert!(!subject_matches("a.blocks.x", "a.blocks"));
    }
}

//! `statestream-client`: a Rust client of statestream's `serve` streamer,
//! for consumer applications. It carries no server: depending on it pulls
//! in tonic's client side, prost and tokio, not axum or a gRPC server.
//!
//! - [`ResumableSubscription`]: follows `statestream.v1.StateStream`'s
//!   `Subscribe` (a snapshot, or history from a height, then live blocks),
//!   one whole block at a time; it reconnects with backoff after any
//!   disconnect and resumes after the last block it gave, so a run sees
//!   every height once, in order.
//! - [`CursorStore`] ([`FileCursor`], [`MemoryCursor`], or the
//!   application's own): where the last **handled** height is kept for the
//!   next run. The consumer acknowledges a height with
//!   [`ResumableSubscription::ack`] once it has handled it; nothing is
//!   saved before. A consumer that crashes between receiving a block and
//!   handling it gets the block again: delivery is at least once.
//! - [`proto`]: the generated client stubs and messages of
//!   `statestream.v1.StateStream` and `datastream.DataService`, for the
//!   other calls (`ListStores`, `Snapshot`, `PushUpdate`, datastream's).
//!
//! A consumer that keeps its place in a file (see also
//! `examples/consumer.rs`):
//!
//! ```no_run
//! use statestream_client::{ClientError, FileCursor, ResumableSubscription, StartFrom, SubscribeOptions, Update};
//!
//! async fn consume() -> Result<(), ClientError> {
//!     let options = SubscribeOptions::new("127.0.0.1:9090").start(StartFrom::Snapshot);
//!     let mut sub = ResumableSubscription::new(options, FileCursor::new("consumer.cursor"));
//!     loop {
//!         let update = sub.next().await?;
//!         match &update {
//!             Update::Snapshot { entries, .. } => println!("{} entries", entries.len()),
//!             Update::Block { height, changes, .. } => println!("block {height}: {} changes", changes.len()),
//!             _ => {}
//!         }
//!         // Handled: the next run resumes after it.
//!         if let Some(height) = update.ack_height() {
//!             sub.ack(height)?;
//!         }
//!     }
//! }
//! ```

#![cfg_attr(not(test), warn(clippy::unwrap_used))]

mod cursor;
mod error;
mod options;
pub mod proto;
mod subscription;
mod tls;

pub use cursor::{CursorStore, FileCursor, MemoryCursor};
pub use error::{ClientError, CursorError};
pub use options::{StartFrom, SubscribeOptions};
pub use subscription::{BlockHashes, ResumableSubscription, Update};

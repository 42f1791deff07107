//! The `serve` streamer's own counters, per front-end: subscribers now,
//! messages and bytes sent, subscribers disconnected as slow; and its
//! limit on subscribers (for an alert before it is reached).
//!
//! Plain atomics, read by whoever exports them: the facade's built-in
//! registration turns them into Prometheus metrics on the node's
//! `/metrics` (this crate does not depend on a metrics library).

use std::sync::atomic::{AtomicU64, Ordering};

/// The front-end a subscriber came in by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrontEnd {
    /// gRPC (`StateStream.Subscribe` and datastream's `DataService`).
    Grpc,
    /// HTTP: Server-Sent Events (`GET /stream`, `GET /stream/ping`).
    Sse,
}

impl FrontEnd {
    /// Every front-end, in the order [`ServeMetrics::read`] returns them.
    pub const ALL: [FrontEnd; 2] = [FrontEnd::Grpc, FrontEnd::Sse];

    /// The label value: `grpc` or `sse`.
    pub fn name(self) -> &'static str {
        match self {
            FrontEnd::Grpc => "grpc",
            FrontEnd::Sse => "sse",
        }
    }

    fn index(self) -> usize {
        match self {
            FrontEnd::Grpc => 0,
            FrontEnd::Sse => 1,
        }
    }
}

/// The counters of one front-end at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrontEndMetrics {
    pub front_end: FrontEnd,
    /// Subscribers connected now.
    pub subscribers: u64,
    /// Messages sent: gRPC messages (heartbeats excluded); for SSE, one per
    /// write: the `put`, or one block's events.
    pub messages_sent: u64,
    /// Bytes of those messages (gRPC: encoded protobuf; SSE: event text).
    pub bytes_sent: u64,
    /// Subscribers disconnected because they did not keep up.
    pub slow_disconnects: u64,
}

/// The counters of one `serve` streamer.
#[derive(Debug, Default)]
pub struct ServeMetrics {
    subscribers: [AtomicU64; 2],
    messages: [AtomicU64; 2],
    bytes: [AtomicU64; 2],
    slow: [AtomicU64; 2],
    /// `max_subscribers`, shared by the front-ends; 0 until the streamer
    /// sets it.
    max_subscribers: AtomicU64,
}

impl ServeMetrics {
    /// The counters now, one entry per front-end ([`FrontEnd::ALL`]).
    pub fn read(&self) -> Vec<FrontEndMetrics> {
        FrontEnd::ALL
            .iter()
            .map(|&f| {
                let i = f.index();
                FrontEndMetrics {
                    front_end: f,
                    subscribers: self.subscribers[i].load(Ordering::Relaxed),
                    messages_sent: self.messages[i].load(Ordering::Relaxed),
                    bytes_sent: self.bytes[i].load(Ordering::Relaxed),
                    slow_disconnects: self.slow[i].load(Ordering::Relaxed),
                }
            })
            .collect()
    }

    /// The streamer's `max_subscribers`: all front-ends together are
    /// refused past it.
    pub fn max_subscribers(&self) -> u64 {
        self.max_subscribers.load(Ordering::Relaxed)
    }

    pub(crate) fn set_max_subscribers(&self, limit: usize) {
        self.max_subscribers
            .store(u64::try_from(limit).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    pub(crate) fn subscribed(&self, f: FrontEnd) {
        self.subscribers[f.index()].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn unsubscribed(&self, f: FrontEnd) {
        self.subscribers[f.index()].fetch_sub(1, Ordering::Relaxed);
    }

    pub(crate) fn sent(&self, f: FrontEnd, bytes: usize) {
        self.messages[f.index()].fetch_add(1, Ordering::Relaxed);
        self.bytes[f.index()].fetch_add(bytes as u64, Ordering::Relaxed);
    }

    pub(crate) fn slow(&self, f: FrontEnd) {
        self.slow[f.index()].fetch_add(1, Ordering::Relaxed);
    }
}

//! Shared helpers: store keys, a recording listener, collectors.

use std::sync::{Arc, Mutex};

use statestream_store::{ChangeSet, CommitInfo, KvIter, StoreKey, WriteListener};

/// One net change: store name, key, value (`None` = delete).
pub type Rec = (String, Vec<u8>, Option<Vec<u8>>);

pub fn key(name: &str) -> StoreKey {
    StoreKey::new(name).expect("valid store name")
}

pub fn keys(names: &[&str]) -> Vec<StoreKey> {
    names.iter().map(|n| key(n)).collect()
}

/// What a [`Recorder`] saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Write(Rec),
    Commit(CommitInfo),
}

/// A listener that logs every call into a shared vector.
pub struct Recorder(pub Arc<Mutex<Vec<Event>>>);

impl Recorder {
    /// A recorder and the handle on its log.
    pub fn new() -> (Box<Recorder>, Log) {
        let log = Arc::new(Mutex::new(Vec::new()));
        (Box::new(Recorder(Arc::clone(&log))), Log(log))
    }
}

impl WriteListener for Recorder {
    fn on_write(&mut self, store: &StoreKey, key: &[u8], value: Option<&[u8]>) {
        self.0.lock().expect("log lock").push(Event::Write((
            store.name().to_string(),
            key.to_vec(),
            value.map(<[u8]>::to_vec),
        )));
    }

    fn on_commit(&mut self, info: &CommitInfo) {
        self.0.lock().expect("log lock").push(Event::Commit(*info));
    }
}

/// The read side of a [`Recorder`].
#[derive(Clone)]
pub struct Log(pub Arc<Mutex<Vec<Event>>>);

impl Log {
    pub fn events(&self) -> Vec<Event> {
        self.0.lock().expect("log lock").clone()
    }

    /// Only the writes, in arrival order.
    pub fn writes(&self) -> Vec<Rec> {
        self.events()
            .into_iter()
            .filter_map(|e| match e {
                Event::Write(r) => Some(r),
                Event::Commit(_) => None,
            })
            .collect()
    }

    pub fn clear(&self) {
        self.0.lock().expect("log lock").clear();
    }
}

pub fn rec(store: &str, key: &[u8], value: Option<&[u8]>) -> Rec {
    (store.to_string(), key.to_vec(), value.map(<[u8]>::to_vec))
}

/// The records of a change set, owned.
pub fn records(cs: &ChangeSet) -> Vec<Rec> {
    cs.records()
        .map(|r| {
            (
                r.store.to_string(),
                r.key.to_vec(),
                r.value.map(<[u8]>::to_vec),
            )
        })
        .collect()
}

/// Collects an iterator's pairs, failing the test on an error.
pub fn collect(it: KvIter<'_>) -> Vec<(Vec<u8>, Vec<u8>)> {
    it.collect::<Result<Vec<_>, _>>()
        .expect("iteration succeeds")
}

/// Only the keys of an iteration.
pub fn collect_keys(it: KvIter<'_>) -> Vec<Vec<u8>> {
    collect(it).into_iter().map(|(k, _)| k).collect()
}

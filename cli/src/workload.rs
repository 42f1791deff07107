//! The demo node's state machine: a small bank.
//!
//! Four stores: `acc` (account records), `bank` (balances and the total
//! supply), `params` (chain parameters and counters) and `tmp` (short-lived
//! locks). Each block runs a begin step, a number of transactions, each in
//! its own cache layer (a failed transaction drops its cache, so none of its
//! writes are seen), and an end step that removes expired locks.
//!
//! Determinism: every choice comes from a generator seeded by (seed, height),
//! and reads only the committed state and the block's own writes. Running a
//! height again on the same state (after a crash that rolled the store back)
//! gives the same writes, the same block time and the same transaction
//! bytes, hence the same block.

use std::ops::Bound;

use anyhow::{Context, Result};
use statestream::{BlockMeta, PushBatch, Tx};
use statestream_store::{Cache, KvStore, MultiStore, Order, StoreKey};

/// The stores of the demo node, in name order.
pub const STORE_NAMES: [&str; 4] = ["acc", "bank", "params", "tmp"];

/// Block time of height 0: 2026-01-01T00:00:00Z.
pub const GENESIS_TIME: i64 = 1_767_225_600;
/// Seconds between blocks.
pub const BLOCK_SECONDS: i64 = 5;

/// Accounts created at height 1, and the fewest kept open.
const GENESIS_ACCOUNTS: u64 = 8;
const MIN_ACCOUNTS: u64 = 4;
/// Opening one more account than this fails (after writing: the failed
/// transaction's cache is dropped).
const MAX_ACCOUNTS: u64 = 64;
const GENESIS_BALANCE: u64 = 1_000;
const OPENING_BALANCE: u64 = 500;
const FEE: u64 = 1;

/// The demo's store keys.
#[derive(Debug, Clone)]
pub struct Stores {
    acc: StoreKey,
    bank: StoreKey,
    params: StoreKey,
    tmp: StoreKey,
}

impl Stores {
    pub fn new() -> Result<Stores> {
        let key = |n: &str| StoreKey::new(n).with_context(|| format!("store name {n:?}"));
        Ok(Stores {
            acc: key("acc")?,
            bank: key("bank")?,
            params: key("params")?,
            tmp: key("tmp")?,
        })
    }

    /// All keys, in name order.
    pub fn all(&self) -> Vec<StoreKey> {
        vec![
            self.acc.clone(),
            self.bank.clone(),
            self.params.clone(),
            self.tmp.clone(),
        ]
    }
}

/// A splitmix64 generator: tiny, fast and fully specified, so a seed means
/// the same workload on every platform and version of its dependencies
/// (`bench` uses it too: its keys land all over the btree, as real hashed
/// keys do).
pub struct Rng(u64);

impl Rng {
    /// A generator started at `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    fn for_block(seed: u64, height: u64) -> Rng {
        let mut r = Rng(seed ^ 0x5157_4553_5452_4541);
        let mixed = r.next() ^ height.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        Rng(mixed)
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Fills `buf` with random bytes.
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let bytes = self.next().to_be_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
    }

    /// A number in `0..n` (`n > 0`).
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// What a transaction did, for its response bytes.
type TxOutcome = std::result::Result<String, String>;

/// Runs block `height` on `store` (writes only; the caller commits) and
/// returns its metadata. `writes` bounds the writes the transactions make.
pub fn run_block(
    store: &mut MultiStore,
    stores: &Stores,
    seed: u64,
    height: u64,
    writes: usize,
) -> Result<BlockMeta> {
    // A value the demo cannot parse is damage to the store's file: say which.
    let path = store.path().to_path_buf();
    execute_block(store, stores, seed, height, writes)
        .with_context(|| format!("executing the demo block on {}", path.display()))
}

fn execute_block(
    store: &mut MultiStore,
    stores: &Stores,
    seed: u64,
    height: u64,
    writes: usize,
) -> Result<BlockMeta> {
    let mut rng = Rng::for_block(seed, height);
    let time = GENESIS_TIME + BLOCK_SECONDS * height as i64;
    let machine = Machine { s: stores, height };

    {
        let mut begin = store.cache();
        if height == 1 {
            machine.genesis(&mut begin)?;
        }
        begin.set(&stores.params, b"block_time", time.to_string().as_bytes())?;
        begin.write()?;
    }

    let mut txs = Vec::new();
    let mut failed = 0usize;
    let mut written = 0usize;
    while written < writes {
        let mut tx = store.cache();
        let kind = rng.below(100);
        let (request, outcome, n) = match kind {
            0..50 => machine.transfer(&mut tx, &mut rng)?,
            50..65 => machine.open_account(&mut tx)?,
            65..75 => machine.close_account(&mut tx, &mut rng)?,
            _ => machine.lock(&mut tx, &mut rng, txs.len())?,
        };
        written += n.max(1);
        let response = match outcome {
            Ok(ok) => {
                tx.write()?;
                format!("ok {ok}")
            }
            Err(why) => {
                // A failed transaction: its cache is dropped, its writes
                // never reach the store nor the streamers.
                drop(tx);
                failed += 1;
                format!("error {why}")
            }
        };
        txs.push(Tx {
            request: request.into_bytes(),
            response: response.into_bytes(),
        });
    }

    let expired = {
        let mut end = store.cache();
        let expired = machine.expire_locks(&mut end)?;
        end.write()?;
        expired
    };

    Ok(BlockMeta {
        time_seconds: time,
        time_nanos: 0,
        begin_block: format!("begin height={height} time={time}").into_bytes(),
        end_block: format!(
            "end height={height} txs={} failed={failed} expired_locks={expired}",
            txs.len()
        )
        .into_bytes(),
        txs,
        ..BlockMeta::default()
    })
}

/// The store pushed writes may go to: the workload never parses its
/// values, so a pushed write cannot break the next block.
pub const PUSH_STORE: &str = "tmp";

/// Applies the writes consumers pushed (a `serve` streamer's
/// `PushUpdate`) after the block's own writes, so each pushed value is the
/// block's net value for its key; one transaction per write is recorded in
/// the block's metadata. Writes to other stores than [`PUSH_STORE`] are
/// rejected.
pub fn apply_pushed(
    store: &mut MultiStore,
    stores: &Stores,
    batch: &mut PushBatch,
    meta: &mut BlockMeta,
) -> Result<()> {
    batch.retain(|w| {
        if w.store == PUSH_STORE {
            Ok(())
        } else {
            Err(format!(
                "the demo node accepts pushed writes into store {PUSH_STORE:?} only (its workload parses the values of the others)"
            ))
        }
    });
    for w in batch.writes() {
        let key = String::from_utf8_lossy(&w.key);
        match &w.value {
            Some(v) => store.set(&stores.tmp, &w.key, v)?,
            None => store.delete(&stores.tmp, &w.key)?,
        }
        meta.txs.push(Tx {
            request: format!("push {}/{key}", w.store).into_bytes(),
            response: b"ok".to_vec(),
        });
    }
    Ok(())
}

struct Machine<'a> {
    s: &'a Stores,
    height: u64,
}

fn account_key(id: u64) -> Vec<u8> {
    format!("acct/{id:08}").into_bytes()
}

fn balance_key(id: u64) -> Vec<u8> {
    format!("balance/{id:08}").into_bytes()
}

fn account_record(id: u64, opened: u64, seq: u64) -> Vec<u8> {
    format!(r#"{{"id":{id},"opened":{opened},"seq":{seq}}}"#).into_bytes()
}

fn parse_u64(bytes: Option<Vec<u8>>, what: &str) -> Result<u64> {
    let Some(bytes) = bytes else { return Ok(0) };
    std::str::from_utf8(&bytes)
        .ok()
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("demo state: {what} is not a number"))
}

/// The `"opened"` and `"seq"` fields of an account record.
fn parse_record(bytes: &[u8]) -> Option<(u64, u64)> {
    let text = std::str::from_utf8(bytes).ok()?;
    let field = |name: &str| -> Option<u64> {
        let start = text.find(&format!("\"{name}\":"))? + name.len() + 3;
        let rest = &text[start..];
        let end = rest.find([',', '}'])?;
        rest[..end].parse().ok()
    };
    Some((field("opened")?, field("seq")?))
}

impl Machine<'_> {
    fn get_u64(&self, kv: &dyn KvStore, store: &StoreKey, key: &[u8]) -> Result<u64> {
        parse_u64(
            kv.get(store, key)?,
            &format!("{}/{}", store, String::from_utf8_lossy(key)),
        )
    }

    fn set_u64(&self, kv: &mut dyn KvStore, store: &StoreKey, key: &[u8], v: u64) -> Result<()> {
        Ok(kv.set(store, key, v.to_string().as_bytes())?)
    }

    fn genesis(&self, kv: &mut Cache<'_>) -> Result<()> {
        let s = self.s;
        kv.set(&s.params, b"chain_id", b"statestream-demo")?;
        kv.set(&s.params, b"fee", FEE.to_string().as_bytes())?;
        for id in 0..GENESIS_ACCOUNTS {
            kv.set(&s.acc, &account_key(id), &account_record(id, 1, 0))?;
            self.set_u64(kv, &s.bank, &balance_key(id), GENESIS_BALANCE)?;
        }
        self.set_u64(kv, &s.params, b"next_account", GENESIS_ACCOUNTS)?;
        self.set_u64(kv, &s.params, b"accounts", GENESIS_ACCOUNTS)?;
        self.set_u64(kv, &s.bank, b"supply", GENESIS_ACCOUNTS * GENESIS_BALANCE)?;
        Ok(())
    }

    /// An open account chosen by `rng`: the first at or after a random id,
    /// wrapping around. `None` when no account is open.
    fn pick_account(&self, kv: &dyn KvStore, rng: &mut Rng) -> Result<Option<u64>> {
        let next = self.get_u64(kv, &self.s.params, b"next_account")?.max(1);
        let start = account_key(rng.below(next));
        let found = kv
            .range(
                &self.s.acc,
                Bound::Included(&start),
                Bound::Unbounded,
                Order::Ascending,
            )?
            .next()
            .transpose()?;
        let found = match found {
            Some(kv) => Some(kv),
            None => kv
                .prefix(&self.s.acc, b"acct/", Order::Ascending)?
                .next()
                .transpose()?,
        };
        Ok(found.and_then(|(k, _)| {
            std::str::from_utf8(k.strip_prefix(b"acct/")?)
                .ok()?
                .parse()
                .ok()
        }))
    }

    /// Moves funds between two accounts; bumps the sender's sequence first,
    /// then fails (dropping the bump) when the sender cannot pay.
    fn transfer(&self, tx: &mut Cache<'_>, rng: &mut Rng) -> Result<(String, TxOutcome, usize)> {
        let s = self.s;
        let amount = rng.below(300) + 1;
        let (Some(from), Some(to)) = (self.pick_account(tx, rng)?, self.pick_account(tx, rng)?)
        else {
            return Ok(("transfer".into(), Err("no accounts".into()), 0));
        };
        let request = format!("transfer from={from} to={to} amount={amount}");
        if from == to {
            return Ok((request, Err("sender and recipient are the same".into()), 0));
        }
        let record = tx.get(&s.acc, &account_key(from))?.unwrap_or_default();
        let (opened, seq) = parse_record(&record).context("demo state: bad account record")?;
        tx.set(
            &s.acc,
            &account_key(from),
            &account_record(from, opened, seq + 1),
        )?;
        let balance = self.get_u64(tx, &s.bank, &balance_key(from))?;
        if balance < amount + FEE {
            let why = format!("insufficient funds: balance {balance} < {}", amount + FEE);
            return Ok((request, Err(why), 1));
        }
        self.set_u64(tx, &s.bank, &balance_key(from), balance - amount - FEE)?;
        let to_balance = self.get_u64(tx, &s.bank, &balance_key(to))?;
        self.set_u64(tx, &s.bank, &balance_key(to), to_balance + amount)?;
        // The fee goes through a nested cache: its writes reach the root
        // once, when the transaction's cache is written.
        {
            let mut fee = tx.cache();
            let collected = self.get_u64(&fee, &s.bank, b"fees")?;
            self.set_u64(&mut fee, &s.bank, b"fees", collected + FEE)?;
            fee.write()?;
        }
        Ok((request, Ok(format!("seq={}", seq + 1)), 4))
    }

    fn open_account(&self, tx: &mut Cache<'_>) -> Result<(String, TxOutcome, usize)> {
        let s = self.s;
        let id = self.get_u64(tx, &s.params, b"next_account")?;
        let open = self.get_u64(tx, &s.params, b"accounts")?;
        let request = format!("open id={id}");
        self.set_u64(tx, &s.params, b"next_account", id + 1)?;
        if open >= MAX_ACCOUNTS {
            return Ok((request, Err(format!("too many accounts ({open})")), 1));
        }
        tx.set(
            &s.acc,
            &account_key(id),
            &account_record(id, self.height, 0),
        )?;
        self.set_u64(tx, &s.bank, &balance_key(id), OPENING_BALANCE)?;
        self.set_u64(tx, &s.params, b"accounts", open + 1)?;
        let supply = self.get_u64(tx, &s.bank, b"supply")?;
        self.set_u64(tx, &s.bank, b"supply", supply + OPENING_BALANCE)?;
        Ok((request, Ok(format!("balance={OPENING_BALANCE}")), 5))
    }

    /// Closes an account: its balance goes to another account, its record
    /// and balance are deleted.
    fn close_account(
        &self,
        tx: &mut Cache<'_>,
        rng: &mut Rng,
    ) -> Result<(String, TxOutcome, usize)> {
        let s = self.s;
        let (Some(id), Some(heir)) = (self.pick_account(tx, rng)?, self.pick_account(tx, rng)?)
        else {
            return Ok(("close".into(), Err("no accounts".into()), 0));
        };
        let request = format!("close id={id} heir={heir}");
        let open = self.get_u64(tx, &s.params, b"accounts")?;
        if open <= MIN_ACCOUNTS || id == heir {
            return Ok((request, Err("account must stay open".into()), 0));
        }
        let balance = self.get_u64(tx, &s.bank, &balance_key(id))?;
        let heir_balance = self.get_u64(tx, &s.bank, &balance_key(heir))?;
        self.set_u64(tx, &s.bank, &balance_key(heir), heir_balance + balance)?;
        tx.delete(&s.bank, &balance_key(id))?;
        tx.delete(&s.acc, &account_key(id))?;
        self.set_u64(tx, &s.params, b"accounts", open - 1)?;
        Ok((request, Ok(format!("moved={balance}")), 4))
    }

    /// Takes a lock that expires at the end of this block or of one of the
    /// next three: its key is set now and deleted by `expire_locks` then.
    fn lock(
        &self,
        tx: &mut Cache<'_>,
        rng: &mut Rng,
        index: usize,
    ) -> Result<(String, TxOutcome, usize)> {
        let expiry = self.height + rng.below(4);
        let key = format!("lock/{expiry:010}/{:010}/{index}", self.height);
        let request = format!("lock key={key}");
        tx.set(
            &self.s.tmp,
            key.as_bytes(),
            format!("held-by-tx-{index}").as_bytes(),
        )?;
        // A scratch key set and deleted in the same transaction: the block
        // records only its delete.
        let scratch = format!("scratch/{}/{index}", self.height);
        tx.set(&self.s.tmp, scratch.as_bytes(), b"x")?;
        tx.delete(&self.s.tmp, scratch.as_bytes())?;
        Ok((request, Ok(format!("expires={expiry}")), 3))
    }

    /// Deletes the locks whose expiry is at or before this height.
    fn expire_locks(&self, kv: &mut Cache<'_>) -> Result<usize> {
        let end = format!("lock/{:010}0", self.height);
        let expired: Vec<Vec<u8>> = kv
            .range(
                &self.s.tmp,
                Bound::Included(b"lock/".as_slice()),
                Bound::Excluded(end.as_bytes()),
                Order::Ascending,
            )?
            .map(|item| item.map(|(k, _)| k))
            .collect::<std::result::Result<_, _>>()?;
        for key in &expired {
            kv.delete(&self.s.tmp, key)?;
        }
        Ok(expired.len())
    }
}

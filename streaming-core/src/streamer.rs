use crate::block::Block;
use crate::error::StreamError;

/// A destination for committed blocks.
///
/// # Contract
///
/// - **Call order.** `on_start` once, then `on_block` once per committed
///   block in strictly increasing, contiguous height order, with `on_flush`
///   between blocks from time to time, then `on_flush` and `on_close` once
///   at clean shutdown. `on_start` is told the first height it will
///   receive.
/// - **Threading.** A streamer is moved to its own worker thread for
///   `delivery = "async"`, or called on the committing thread for
///   `delivery = "sync"`; it is never called from two threads at once, hence
///   `Send` but not `Sync`.
/// - **Durability.** Returning `Ok` from `on_block` means the block is
///   delivered (for the file streamer: the files are in place under their
///   final names). Returning `Ok` from `on_flush` means every block delivered
///   so far survives a crash of the machine. The persisted cursor only ever
///   covers flushed blocks, and the change log keeps every block above it, so
///   a power loss cannot skip a block: whatever was delivered but not flushed
///   is delivered again at the next start. The node calls `on_flush` at a
///   short interval while blocks flow (the facade's `FLUSH_INTERVAL`),
///   whenever the streamer goes idle, and at clean shutdown. A streamer whose `on_block` is already durable (it
///   fsyncs, or waits for a server's acknowledgement) keeps the default no-op.
/// - **Idempotency per height.** After a crash, or after a failed
///   `on_flush`, the same height may be delivered again, with the same
///   content; the streamer must give the same result (e.g. overwrite a file
///   with identical bytes, or let the destination deduplicate).
/// - **Errors.** An `Err` from `on_block` means the block was not
///   delivered. The cursor does not advance. With `stop-node-on-error =
///   true` the node stops committing; otherwise the error is logged and the
///   block is delivered again later (async: after a backoff; sync: at the
///   next commit), from the change log, so nothing is skipped.
/// - **Panics.** A panic in any hook is caught and is that hook's error,
///   under the same policy. Since the streamer's state is then unknown,
///   the blocks since its last successful `on_flush` are delivered again,
///   and before them `on_start` is called again with the height after the
///   cursor: after a panic `on_start` may come more than once.
/// - **Shutdown.** At clean shutdown an async streamer first drains for
///   the node's drain limit (`[store] shutdown_timeout_ms`): `on_block` goes
///   on, retries included. Then [`Shutdown`](crate::Shutdown) (in
///   [`StreamerContext`](crate::StreamerContext)) is triggered: a wait of the
///   streamer's own should end at once and return an error, which the node
///   takes as a delivery cut by the stop, not a failure (the block stays in
///   the change log). A streamer still inside a hook shortly after that is
///   left behind without `on_close`; keep each blocking call bounded.
pub trait Streamer: Send {
    /// Delivers one committed block.
    fn on_block(&mut self, block: &Block) -> Result<(), StreamError>;

    /// Called once before the first block; `next_height` is the first
    /// height this streamer will receive.
    fn on_start(&mut self, next_height: u64) -> Result<(), StreamError> {
        let _ = next_height;
        Ok(())
    }

    /// Makes every block delivered so far durable. An error counts as a
    /// delivery error: the blocks since the last successful flush are
    /// delivered again.
    fn on_flush(&mut self) -> Result<(), StreamError> {
        Ok(())
    }

    /// Called once at clean shutdown, after the last block (and the last
    /// flush).
    fn on_close(&mut self) -> Result<(), StreamError> {
        Ok(())
    }

    /// How many of the latest committed blocks the change log must keep for
    /// this streamer, whatever its cursor (a subscription hub that lets
    /// readers resume from a past height keeps a window). Asked once, after
    /// the streamer is built. Default 0: only the blocks it has not flushed.
    fn retain_blocks(&self) -> u64 {
        0
    }
}

impl<S: Streamer + ?Sized> Streamer for Box<S> {
    fn on_block(&mut self, block: &Block) -> Result<(), StreamError> {
        (**self).on_block(block)
    }
    fn on_start(&mut self, next_height: u64) -> Result<(), StreamError> {
        (**self).on_start(next_height)
    }
    fn on_flush(&mut self) -> Result<(), StreamError> {
        (**self).on_flush()
    }
    fn on_close(&mut self) -> Result<(), StreamError> {
        (**self).on_close()
    }
    fn retain_blocks(&self) -> u64 {
        (**self).retain_blocks()
    }
}

/// Every streamer of the list, in order; the first error stops the block
/// (streamers before it have delivered it: they must be idempotent).
impl<S: Streamer> Streamer for Vec<S> {
    fn on_block(&mut self, block: &Block) -> Result<(), StreamError> {
        self.iter_mut().try_for_each(|s| s.on_block(block))
    }
    fn on_start(&mut self, next_height: u64) -> Result<(), StreamError> {
        self.iter_mut().try_for_each(|s| s.on_start(next_height))
    }
    fn on_flush(&mut self) -> Result<(), StreamError> {
        self.iter_mut().try_for_each(|s| s.on_flush())
    }
    fn on_close(&mut self) -> Result<(), StreamError> {
        // Close every streamer even if one fails; report the first error.
        let mut first = Ok(());
        for s in self.iter_mut() {
            if let Err(e) = s.on_close()
                && first.is_ok()
            {
                first = Err(e);
            }
        }
        first
    }
    fn retain_blocks(&self) -> u64 {
        self.iter().map(S::retain_blocks).max().unwrap_or(0)
    }
}

/// A streamer that may be switched off at runtime: `None` accepts every
/// block and does nothing.
impl<S: Streamer> Streamer for Option<S> {
    fn on_block(&mut self, block: &Block) -> Result<(), StreamError> {
        match self {
            Some(s) => s.on_block(block),
            None => Ok(()),
        }
    }
    fn on_start(&mut self, next_height: u64) -> Result<(), StreamError> {
        match self {
            Some(s) => s.on_start(next_height),
            None => Ok(()),
        }
    }
    fn on_flush(&mut self) -> Result<(), StreamError> {
        match self {
            Some(s) => s.on_flush(),
            None => Ok(()),
        }
    }
    fn on_close(&mut self) -> Result<(), StreamError> {
        match self {
            Some(s) => s.on_close(),
            None => Ok(()),
        }
    }
    fn retain_blocks(&self) -> u64 {
        self.as_ref().map_or(0, S::retain_blocks)
    }
}

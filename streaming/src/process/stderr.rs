//! A plugin's stderr, forwarded to the node's log line by line, with two
//! bounds so that a plugin can neither grow the node's memory nor flood its
//! log: a line is cut at [`LINE_MAX`] bytes (the rest of it is read and
//! dropped), and at most [`RATE`] lines per second are logged on average,
//! in bursts of up to [`BURST`] (the others are read, counted and dropped).
//! Stderr is always read to its end, so a plugin never blocks on it.

use std::io::{self, BufRead, BufReader, Read};
use std::time::Instant;

use tracing::{info, warn};

/// The longest stderr line logged, in bytes; the rest of a longer line is
/// dropped, and the line is logged as soon as this much of it is read.
pub(crate) const LINE_MAX: usize = 64 << 10;

/// Stderr lines logged per second, on average.
pub(crate) const RATE: f64 = 100.0;

/// Stderr lines logged at once after a quiet period.
pub(crate) const BURST: f64 = 1000.0;

/// Logs `stderr` under the streamer's `name` and the plugin's `pid` until
/// it ends. Memory: one line of at most [`LINE_MAX`] bytes and the reader's
/// buffer.
pub(crate) fn forward<R: Read>(stderr: R, name: &str, pid: u32) {
    let mut lines = Lines::new(BufReader::new(stderr));
    let mut rate = RateLimit::new(Instant::now());
    let report = |dropped: u64| {
        if dropped > 0 {
            warn!(streamer = %name, pid, dropped,
                "plugin: {dropped} stderr lines not logged (more than {RATE} lines per second)");
        }
    };
    while let Ok(Some((line, cut))) = lines.next_line() {
        let text = String::from_utf8_lossy(line);
        let text = text.trim_end();
        if text.is_empty() || !rate.admit(Instant::now()) {
            continue;
        }
        report(rate.take_dropped());
        if cut {
            info!(streamer = %name, pid, "plugin: {text} [line cut at {LINE_MAX} bytes]");
        } else {
            info!(streamer = %name, pid, "plugin: {text}");
        }
    }
    report(rate.take_dropped());
}

/// Lines of at most [`LINE_MAX`] bytes from a reader.
pub(crate) struct Lines<R> {
    reader: R,
    line: Vec<u8>,
    /// Inside a line that was cut: drop bytes up to its newline.
    skipping: bool,
}

impl<R: BufRead> Lines<R> {
    pub(crate) fn new(reader: R) -> Self {
        Lines {
            reader,
            line: Vec::new(),
            skipping: false,
        }
    }

    /// The next line, without its newline, and whether it was cut: a line
    /// longer than [`LINE_MAX`] is returned as its first `LINE_MAX` bytes
    /// as soon as they are read, and the rest of it is skipped. A last line
    /// without a newline counts. `None` at the end of the stream.
    pub(crate) fn next_line(&mut self) -> io::Result<Option<(&[u8], bool)>> {
        self.line.clear();
        loop {
            let buf = match self.reader.fill_buf() {
                Ok(buf) => buf,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if buf.is_empty() {
                return Ok((!self.line.is_empty()).then_some((&self.line[..], false)));
            }
            let newline = buf.iter().position(|&b| b == b'\n');
            let end = newline.unwrap_or(buf.len());
            let consumed = newline.map_or(buf.len(), |i| i + 1);
            if self.skipping {
                self.skipping = newline.is_none();
                self.reader.consume(consumed);
                continue;
            }
            let room = LINE_MAX - self.line.len();
            if end > room {
                self.line.extend_from_slice(&buf[..room]);
                self.reader.consume(room);
                self.skipping = true;
                return Ok(Some((&self.line[..], true)));
            }
            self.line.extend_from_slice(&buf[..end]);
            self.reader.consume(consumed);
            if newline.is_some() {
                return Ok(Some((&self.line[..], false)));
            }
        }
    }
}

/// A token bucket: [`RATE`] lines per second, [`BURST`] at most at once.
pub(crate) struct RateLimit {
    tokens: f64,
    last: Instant,
    dropped: u64,
}

impl RateLimit {
    pub(crate) fn new(now: Instant) -> Self {
        RateLimit {
            tokens: BURST,
            last: now,
            dropped: 0,
        }
    }

    /// Whether a line read at `now` is logged; one that is not is counted.
    pub(crate) fn admit(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = self.last.max(now);
        self.tokens = (self.tokens + elapsed * RATE).min(BURST);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            self.dropped += 1;
            false
        }
    }

    /// The lines not logged since the last call.
    pub(crate) fn take_dropped(&mut self) -> u64 {
        std::mem::take(&mut self.dropped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn all_lines(input: &[u8]) -> Vec<(Vec<u8>, bool)> {
        // A small buffer, so that lines span many reads.
        let mut lines = Lines::new(BufReader::with_capacity(1000, input));
        let mut out = Vec::new();
        while let Some((line, cut)) = lines.next_line().unwrap() {
            out.push((line.to_vec(), cut));
        }
        out
    }

    #[test]
    fn stderr_lines_are_cut_at_the_limit() {
        let mut input = b"first\n".to_vec();
        input.extend(vec![b'a'; LINE_MAX]);
        input.push(b'\n');
        input.extend(vec![b'b'; LINE_MAX + 1]);
        input.extend(b"\nafter the long one\n");
        input.extend(vec![b'c'; 3 * LINE_MAX]);
        let lines = all_lines(&input);
        assert_eq!(lines.len(), 5);
        assert_eq!(lines[0], (b"first".to_vec(), false));
        assert_eq!(lines[1], (vec![b'a'; LINE_MAX], false));
        assert_eq!(lines[2], (vec![b'b'; LINE_MAX], true));
        assert_eq!(lines[3], (b"after the long one".to_vec(), false));
        // A last line without a newline, cut too.
        assert_eq!(lines[4], (vec![b'c'; LINE_MAX], true));
        assert_eq!(all_lines(b"no newline"), [(b"no newline".to_vec(), false)]);
        assert!(all_lines(b"").is_empty());
    }

    #[test]
    fn stderr_rate_limit_drops_and_counts() {
        let t0 = Instant::now();
        let mut rate = RateLimit::new(t0);
        let admitted = (0..BURST as u64 + 50).filter(|_| rate.admit(t0)).count();
        assert_eq!(admitted, BURST as usize);
        assert_eq!(rate.take_dropped(), 50);
        assert_eq!(rate.take_dropped(), 0);
        // One second later, RATE more lines are let through, no more.
        let t1 = t0 + Duration::from_secs(1);
        let admitted = (0..RATE as u64 + 10).filter(|_| rate.admit(t1)).count();
        assert_eq!(admitted, RATE as usize);
        assert_eq!(rate.take_dropped(), 10);
        // A long quiet period refills up to the burst only.
        let t2 = t1 + Duration::from_secs(3600);
        let admitted = (0..BURST as u64 + 1).filter(|_| rate.admit(t2)).count();
        assert_eq!(admitted, BURST as usize);
    }
}

//! The delivery policy: what a status code means, how long a
//! `Retry-After` makes the next attempt wait, and the jitter on the retry
//! schedule.

use std::hash::{BuildHasher, Hasher};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The longest `Retry-After` honoured; a longer one waits this long.
pub(crate) const MAX_RETRY_AFTER: Duration = Duration::from_secs(86_400);

/// What a status code means under the policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Verdict {
    /// A `success` status (default any 2xx).
    Delivered,
    /// A `discard` status: dropped, delivery goes on.
    Discarded,
    /// 410 Gone (not a `discard` status): the endpoint asked to be removed.
    Gone,
    /// Anything else: attempted again.
    Retry,
}

/// The policy, strictly in order: `success` (default any 2xx), `discard`,
/// 410, anything else is retried.
pub(crate) fn classify(status: u16, success: &[u16], discard: &[u16]) -> Verdict {
    let delivered = if success.is_empty() {
        (200..300).contains(&status)
    } else {
        success.contains(&status)
    };
    if delivered {
        Verdict::Delivered
    } else if discard.contains(&status) {
        Verdict::Discarded
    } else if status == 410 {
        Verdict::Gone
    } else {
        Verdict::Retry
    }
}

/// The wait a `Retry-After` asks for, honoured only on 429 and 503 and at
/// most [`MAX_RETRY_AFTER`].
pub(crate) fn retry_after(status: u16, value: Option<&str>, now: SystemTime) -> Option<Duration> {
    if status != 429 && status != 503 {
        return None;
    }
    parse_retry_after(value?, now).map(|d| d.min(MAX_RETRY_AFTER))
}

/// The jitter of the retry schedule: `d` moved by up to ±10%, differently per process, request and attempt,
/// so that many receivers' retries do not all land at once.
pub fn jitter(d: Duration, id: &str, attempt: usize) -> Duration {
    if d.is_zero() {
        return d;
    }
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write(id.as_bytes());
    h.write_usize(attempt);
    // A fraction in [-0.1, 0.1).
    let permille = (h.finish() % 200) as i64 - 100;
    let ms = d.as_millis().min(u128::from(u64::MAX)) as i64;
    Duration::from_millis((ms + ms * permille / 1000).max(0) as u64)
}

/// `Retry-After`: delay-seconds, or an HTTP date (IMF-fixdate).
fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = parse_imf_fixdate(value)?;
    let now = now.duration_since(UNIX_EPOCH).ok()?.as_secs();
    Some(Duration::from_secs(at.saturating_sub(now)))
}

/// `Sun, 06 Nov 1994 08:49:37 GMT` -> seconds since the epoch.
fn parse_imf_fixdate(s: &str) -> Option<u64> {
    let rest = s.get(5..)?; // "Sun, "
    let mut parts = rest.split(' ');
    let day: u64 = parts.next()?.parse().ok()?;
    let month = match parts.next()? {
        "Jan" => 1,
        "Feb" => 2,
        "Mar" => 3,
        "Apr" => 4,
        "May" => 5,
        "Jun" => 6,
        "Jul" => 7,
        "Aug" => 8,
        "Sep" => 9,
        "Oct" => 10,
        "Nov" => 11,
        "Dec" => 12,
        _ => return None,
    };
    let year: i64 = parts.next()?.parse().ok()?;
    let mut hms = parts.next()?.split(':');
    let h: u64 = hms.next()?.parse().ok()?;
    let m: u64 = hms.next()?.parse().ok()?;
    let sec: u64 = hms.next()?.parse().ok()?;
    if parts.next()? != "GMT" || !(1..=31).contains(&day) || h > 23 || m > 59 || sec > 60 {
        return None;
    }
    // days_from_civil (Howard Hinnant).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(days)
        .ok()
        .map(|d| d * 86_400 + h * 3600 + m * 60 + sec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_classifies_in_order() {
        assert_eq!(classify(200, &[], &[]), Verdict::Delivered);
        assert_eq!(classify(204, &[], &[]), Verdict::Delivered);
        assert_eq!(classify(302, &[], &[]), Verdict::Retry);
        assert_eq!(classify(500, &[], &[]), Verdict::Retry);
        assert_eq!(classify(410, &[], &[]), Verdict::Gone);
        assert_eq!(classify(410, &[], &[410]), Verdict::Discarded);
        assert_eq!(classify(200, &[202], &[]), Verdict::Retry);
        assert_eq!(classify(202, &[202], &[]), Verdict::Delivered);
        assert_eq!(classify(400, &[], &[400, 422]), Verdict::Discarded);
    }

    #[test]
    fn policy_retry_after_forms() {
        let now = UNIX_EPOCH + Duration::from_secs(784_111_777);
        assert_eq!(parse_retry_after("3", now), Some(Duration::from_secs(3)));
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:50:37 GMT", now),
            Some(Duration::from_secs(60))
        );
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(
            parse_imf_fixdate("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(784_111_777)
        );
    }

    #[test]
    fn policy_jitter_stays_within_ten_percent() {
        for attempt in 0..50 {
            let d = jitter(Duration::from_millis(1000), "x", attempt);
            assert!(
                d >= Duration::from_millis(900) && d < Duration::from_millis(1100),
                "{d:?}"
            );
        }
        assert_eq!(jitter(Duration::ZERO, "x", 0), Duration::ZERO);
    }

    #[test]
    fn policy_retry_after_only_on_429_and_503() {
        let now = UNIX_EPOCH;
        assert_eq!(
            retry_after(429, Some("3"), now),
            Some(Duration::from_secs(3))
        );
        assert_eq!(retry_after(503, Some("999999"), now), Some(MAX_RETRY_AFTER));
        assert_eq!(retry_after(500, Some("3"), now), None);
        assert_eq!(retry_after(429, None, now), None);
    }
}

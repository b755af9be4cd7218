//! What a receiver's HTTP status means for the events of the request: the CloudEvents HTTP binding's rules as
//! an edge gateway applies them.

use std::time::Duration;

/// The meaning of one answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// 2xx: the receiver has the events.
    Delivered,
    /// The receiver refuses these events for good (400, 413, 415, 422 and the other 4xx not listed below): they
    /// go to the dead-letter file.
    Refused,
    /// Try again later: 429 and 503 (after `Retry-After` when given), 408 and every other 5xx, and the 4xx that
    /// say the receiver is misconfigured for us rather than that the event is bad (401, 403, 404, 405, 407, 421:
    /// a rotated key or a moved endpoint must not send the whole stream to the dead-letter file).
    Retry {
        /// The wait the receiver asked for.
        after: Option<Duration>,
    },
}

/// Judges a status code; `retry_after` is the header's value, read only for 429 and 503, as delta-seconds or an
/// HTTP date (relative to `now_unix_s`), cut to `max`.
pub fn judge(status: u16, retry_after: Option<&str>, now_unix_s: i64, max: Duration) -> Verdict {
    match status {
        200..=299 => Verdict::Delivered,
        429 | 503 => {
            Verdict::Retry { after: retry_after.and_then(|v| parse_retry_after(v, now_unix_s)).map(|d| d.min(max)) }
        }
        408 | 401 | 403 | 404 | 405 | 407 | 421 => Verdict::Retry { after: None },
        400..=499 => Verdict::Refused,
        _ => Verdict::Retry { after: None },
    }
}

/// Reads `Retry-After`: delta-seconds (`120`) or an HTTP date (`Wed, 21 Oct 2026 07:28:00 GMT`); a date in the
/// past is no wait.
pub fn parse_retry_after(value: &str, now_unix_s: i64) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = chrono::DateTime::parse_from_rfc2822(value).ok()?.timestamp();
    Some(Duration::from_secs(u64::try_from(at.saturating_sub(now_unix_s)).unwrap_or(0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: Duration = Duration::from_secs(300);

    #[test]
    fn statuses_sort_into_delivered_refused_and_retry() {
        assert_eq!(judge(202, None, 0, MAX), Verdict::Delivered);
        assert_eq!(judge(400, None, 0, MAX), Verdict::Refused);
        assert_eq!(judge(413, None, 0, MAX), Verdict::Refused);
        assert_eq!(judge(401, None, 0, MAX), Verdict::Retry { after: None });
        assert_eq!(judge(408, Some("5"), 0, MAX), Verdict::Retry { after: None }, "Retry-After only with 429/503");
        assert_eq!(judge(500, None, 0, MAX), Verdict::Retry { after: None });
        assert_eq!(judge(503, Some("2"), 0, MAX), Verdict::Retry { after: Some(Duration::from_secs(2)) });
        assert_eq!(judge(429, Some("86400"), 0, MAX), Verdict::Retry { after: Some(MAX) }, "cut to the maximum");
        assert_eq!(judge(302, None, 0, MAX), Verdict::Retry { after: None });
    }

    #[test]
    fn retry_after_takes_seconds_or_an_http_date() {
        let now = 1_445_412_470; // Wed, 21 Oct 2015 07:27:50 GMT
        assert_eq!(parse_retry_after(" 7 ", now), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now), Some(Duration::from_secs(10)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:27:00 GMT", now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-3", now), None);
    }
}

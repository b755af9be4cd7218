//! What a runtime's answer means for the event: the status codes of each protocol, sorted into four verdicts.
//!
//! | verdict | gRPC `statuscode` | HTTP `retCode` | TCP header |
//! |---|---|---|---|
//! | [`Verdict::Stored`] | 0 | 0 | `code` 0 |
//! | [`Verdict::Busy`] | 1 overload, 21 over the rate limit | 1 overload, 23 over the rate limit | `desc` "Tps overload, global flow control", or `code` 3 |
//! | [`Verdict::Poison`] | 6 header error, 7 body error | 6, 7, 8 event too big, 24 filtered out | `desc` "event size exceeds the limit", "event is null" |
//! | [`Verdict::Failed`] | anything else | anything else | anything else |

/// How a sender treats one answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Verdict {
    /// The runtime's event store accepted the event.
    Stored,
    /// The runtime is overloaded or rate-limiting: back off, then send again.
    Busy,
    /// The runtime will never accept this event as it is: set it aside with the reason, do not retry.
    Poison,
    /// Something else failed (storage, ACL, an unexpected code): retry with backoff; the event may yet be stored.
    Failed,
}

/// gRPC `statuscode` (`StatusCode.java`).
pub fn grpc_verdict(statuscode: i32) -> Verdict {
    match statuscode {
        0 => Verdict::Stored,
        1 | 21 => Verdict::Busy,
        6 | 7 => Verdict::Poison,
        _ => Verdict::Failed,
    }
}

/// HTTP `retCode` (`EventMeshRetCode.java`); errors come back with HTTP status 200 too.
pub fn http_verdict(ret_code: i32) -> Verdict {
    match ret_code {
        0 => Verdict::Stored,
        1 | 23 => Verdict::Busy,
        6 | 7 | 8 | 24 => Verdict::Poison,
        _ => Verdict::Failed,
    }
}

/// TCP `ASYNC_MESSAGE_TO_SERVER_ACK` header: `code` (`OPStatus`: 0 success, 1 fail, 2 ACL, 3 TPS overload) and
/// `desc`, where the runtime puts the exception text of a failure (rate limiting answers `code` 1 with
/// "Tps overload, global flow control").
pub fn tcp_verdict(code: i32, desc: &str) -> Verdict {
    if code == 0 {
        Verdict::Stored
    } else if code == 3 || desc.contains("Tps overload") {
        Verdict::Busy
    } else if desc.contains("event size exceeds the limit") || desc.contains("event is null") {
        Verdict::Poison
    } else {
        Verdict::Failed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_sort_into_verdicts() {
        assert_eq!(grpc_verdict(0), Verdict::Stored);
        assert_eq!(grpc_verdict(21), Verdict::Busy);
        assert_eq!(grpc_verdict(7), Verdict::Poison);
        assert_eq!(grpc_verdict(14), Verdict::Failed);
        assert_eq!(http_verdict(23), Verdict::Busy);
        assert_eq!(http_verdict(8), Verdict::Poison);
        assert_eq!(http_verdict(15), Verdict::Failed);
        assert_eq!(tcp_verdict(1, "Tps overload, global flow control"), Verdict::Busy);
        assert_eq!(tcp_verdict(1, "java.lang.Exception: event size exceeds the limit: 1000"), Verdict::Poison);
        assert_eq!(tcp_verdict(1, "java.lang.RuntimeException: send failed"), Verdict::Failed);
    }
}

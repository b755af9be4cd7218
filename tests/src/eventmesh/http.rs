//! The HTTP double: the runtime's request-code API for `code: 104` with `protocoltype: cloudevents`
//! (`AbstractHTTPServer`, `SendAsyncMessageProcessor`, the CloudEvents adaptor's `SendMessageRequestProtocolResolver`).
//!
//! Its quirks, kept: only GET and POST (else 405); a `version` header other than 1.0/2.0 is HTTP 400; a missing or
//! unknown `code` is HTTP 400 with `retCode` 2; every other error is HTTP 200 with a non-zero `retCode` (6 header,
//! 7 body, 8 event too big, 1 overload, 23 rate limit); success is `retCode` 0 sent after storing.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::net::TcpListener;

use super::{Decision, MAX_EVENT_SIZE, State, Stored, data_chars};

/// Serves until the double's runtime is dropped.
pub(crate) async fn serve(listener: TcpListener, state: Arc<State>) {
    let app = axum::Router::new().fallback(move |method: Method, headers: HeaderMap, body: Bytes| {
        let state = Arc::clone(&state);
        async move { handle(&state, &method, &headers, &body).await }
    });
    let _ = axum::serve(listener, app).await;
}

fn ret(status: StatusCode, code: i32, message: &str) -> Response {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_millis();
    let body = json!({"retCode": code, "retMsg": message, "resTime": now as u64}).to_string();
    (
        status,
        [
            ("content-type", "text/plain; charset=UTF-8"),
            ("eventmeshcluster", "COMMON"),
            ("eventmeshenv", "PRD"),
            ("eventmeshidc", "DEFAULT"),
        ],
        body,
    )
        .into_response()
}

/// A header as the runtime's `HashMap` lookup sees it (the lowercase name exactly).
fn header<'a>(headers: &'a HeaderMap, name: &str) -> &'a str {
    headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
}

async fn handle(state: &State, method: &Method, headers: &HeaderMap, body: &[u8]) -> Response {
    if method != Method::GET && method != Method::POST {
        return StatusCode::METHOD_NOT_ALLOWED.into_response();
    }
    let version = header(headers, "version");
    if !version.is_empty() && version != "1.0" && version != "2.0" {
        return StatusCode::BAD_REQUEST.into_response();
    }
    if header(headers, "code") != "104" {
        return ret(StatusCode::BAD_REQUEST, 2, "eventMesh requestCode err");
    }
    let pid = header(headers, "pid");
    let header_ok = ["idc", "sys", "pid"].iter().all(|k| !header(headers, k).trim().is_empty())
        && pid.chars().all(|c| c.is_ascii_digit())
        && matches!(header(headers, "protocolversion"), "1.0" | "0.3");
    if !header_ok {
        state.refused.fetch_add(1, Ordering::SeqCst);
        return ret(StatusCode::OK, 6, "eventMesh protocol header err");
    }
    let form: Vec<(String, String)> = form_urlencoded::parse(body).into_owned().collect();
    let field = |name: &str| form.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
    let (Some(content), Some(group)) = (field("content"), field("producergroup")) else {
        state.refused.fetch_add(1, Ordering::SeqCst);
        return ret(StatusCode::OK, 7, "eventMesh protocol body err: content and producergroup are required");
    };
    if header(headers, "protocoltype") != "cloudevents" {
        return ret(StatusCode::OK, 7, "this double speaks protocoltype cloudevents only");
    }
    // The CloudEvents adaptor reads `content` with the JSON event format.
    let event: cloudevents::Event = match serde_json::from_str(content) {
        Ok(e) => e,
        Err(e) => {
            state.refused.fetch_add(1, Ordering::SeqCst);
            return ret(StatusCode::OK, 7, &format!("eventMesh protocol body err: {e}"));
        }
    };
    let json: Value = serde_json::from_str(content).unwrap_or(Value::Null);
    let has = |k: &str| json.get(k).and_then(Value::as_str).is_some_and(|s| !s.is_empty());
    let data_present = json.get("data").is_some_and(|d| !d.is_null()) || json.get("data_base64").is_some();
    let topic = cloudevents::AttributesReader::subject(&event).unwrap_or_default().to_string();
    if !has("bizseqno") || !has("uniqueid") || topic.is_empty() || !data_present {
        state.refused.fetch_add(1, Ordering::SeqCst);
        return ret(
            StatusCode::OK,
            7,
            "eventMesh protocol body err: bizseqno, uniqueid, subject and data are required",
        );
    }
    if data_chars(&json) > MAX_EVENT_SIZE {
        state.refused.fetch_add(1, Ordering::SeqCst);
        return ret(StatusCode::OK, 8, &format!("eventMesh event size exceeds the limit: {MAX_EVENT_SIZE}"));
    }
    match state.decide() {
        Decision::Store => {}
        Decision::Overload => return ret(StatusCode::OK, 1, "eventMesh overload, try later"),
        Decision::RateLimited => return ret(StatusCode::OK, 23, "eventMesh send message speed over limit"),
        Decision::Stall => std::future::pending().await,
    }
    let id = cloudevents::AttributesReader::id(&event).to_string();
    state.store(Stored { event: json, topic: topic.clone(), producer_group: group.to_string() });
    ret(StatusCode::OK, 0, &format!("success SendResult[topic={topic}, messageId={id}]"))
}

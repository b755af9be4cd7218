//! The overview the dashboard shows: connections by protocol, messages in and out (totals, and per second in the
//! feed), refusals by reason, each uplink's health and backlog, the spool's fill and the client list.
//!
//! `GET /api/overview` answers it once; `GET /api/live` is a server-sent-events feed of one `overview` event per
//! second, which ends when the gateway shuts down (so the endpoint can stop).

use std::convert::Infallible;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::routing::get;
use axum::{Json, Router};
use futures::Stream;
use serde_json::{Map, Value, json};

use super::AdminState;
use super::api::client_json;
use crate::metrics::Protocol;

/// How often the feed sends an overview.
const FEED_EVERY: Duration = Duration::from_secs(1);

/// At most this many clients are in an overview (the API lists them all).
const MAX_CLIENTS_SHOWN: usize = 500;

/// The live routes.
pub fn routes(state: AdminState) -> Router {
    Router::new().route("/api/overview", get(overview)).route("/api/live", get(live)).with_state(state)
}

/// Totals the feed turns into rates.
#[derive(Debug, Clone, Copy)]
struct Totals {
    at: Instant,
    messages_in: u64,
    messages_out: u64,
}

fn totals(state: &AdminState) -> Totals {
    Totals {
        at: Instant::now(),
        messages_in: Protocol::ALL.iter().map(|p| state.metrics.messages_in(*p)).sum(),
        messages_out: state.broker.read(|b| b.stats().delivered),
    }
}

/// The overview now; with `previous` totals, the rates since then.
fn snapshot(state: &AdminState, previous: Option<Totals>) -> (Value, Totals) {
    let now = totals(state);
    let mut connections = Map::new();
    for p in Protocol::ALL {
        connections.insert(p.as_str().into(), json!(state.metrics.connections(p).max(0)));
    }
    let rejects: Map<String, Value> =
        state.metrics.rejects_by_reason().into_iter().map(|(reason, n)| (reason.to_string(), json!(n))).collect();
    let rate = |now: u64, then: u64, secs: f64| {
        if secs > 0.0 { ((now.saturating_sub(then) as f64 / secs) * 10.0).round() / 10.0 } else { 0.0 }
    };
    let (in_rate, out_rate) = previous.map_or((0.0, 0.0), |p| {
        let secs = now.at.duration_since(p.at).as_secs_f64();
        (rate(now.messages_in, p.messages_in, secs), rate(now.messages_out, p.messages_out, secs))
    });
    let all = state.clients.all();
    let clients: Vec<Value> = all.iter().take(MAX_CLIENTS_SHOWN).map(|c| client_json(c, &state.broker)).collect();
    let broker = state.broker.read(|b| b.stats());
    let overview = json!({
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_secs": state.started.elapsed().as_secs(),
        "connections": connections,
        "messages_in_total": now.messages_in,
        "messages_out_total": now.messages_out,
        "messages_in_per_second": in_rate,
        "messages_out_per_second": out_rate,
        "rejects": rejects,
        "sessions": broker.sessions,
        "subscriptions": broker.subscriptions,
        "retained": broker.retained,
        "uplinks": state.mesh.uplinks_json(),
        "spool": state.mesh.spool_json(),
        "clients_total": all.len(),
        "clients": clients,
    });
    (overview, now)
}

async fn overview(State(state): State<AdminState>) -> Json<Value> {
    Json(snapshot(&state, None).0)
}

/// What the feed's stream carries from one overview to the next.
struct Feed {
    state: AdminState,
    previous: Option<Totals>,
    first: bool,
}

async fn live(State(state): State<AdminState>) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let feed = Feed { state, previous: None, first: true };
    let stream = futures::stream::unfold(feed, |mut feed| async move {
        if !feed.first {
            let mut shutdown = feed.state.shutdown.clone();
            tokio::select! {
                _ = crate::listener::stopped(&mut shutdown) => return None,
                _ = tokio::time::sleep(FEED_EVERY) => {}
            }
        } else if *feed.state.shutdown.borrow() {
            return None;
        }
        feed.first = false;
        let (overview, totals) = snapshot(&feed.state, feed.previous);
        feed.previous = Some(totals);
        let event = Event::default().event("overview").data(overview.to_string());
        Some((Ok(event), feed))
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}

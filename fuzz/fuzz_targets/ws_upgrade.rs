//! Feeds arbitrary bytes to meshgate's WebSocket upgrade negotiation as the request target and header values
//! (path, Origin, subprotocols, Basic credentials, the token query parameter): it never panics, and an accepted
//! upgrade names a subprotocol the client offered.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshgate_gateway::config::WsListenerConfig;
use meshgate_gateway::ws::upgrade::{Request, Response, negotiate};

fuzz_target!(|data: &[u8]| {
    let mut parts = data.split(|&b| b == 0);
    let (Some(target), Some(protocols), Some(auth), Some(origin)) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return;
    };
    let config = WsListenerConfig {
        path: Some("/events".into()),
        allowed_origins: vec!["https://app.example".into()],
        ..WsListenerConfig::default()
    };
    let Ok(target) = std::str::from_utf8(target) else { return };
    let request = Request::builder()
        .uri(target)
        .header("sec-websocket-protocol", protocols)
        .header("authorization", auth)
        .header("origin", origin)
        .body(());
    let Ok(request) = request else { return };
    if let Ok((response, _)) = negotiate(&config, &request, Response::default()) {
        let chosen = response.headers().get("sec-websocket-protocol").map(|v| v.as_bytes().to_vec()).unwrap_or_default();
        let offered = String::from_utf8_lossy(protocols).into_owned();
        assert!(offered.split(',').any(|p| p.trim().as_bytes() == chosen.as_slice()));
    }
});

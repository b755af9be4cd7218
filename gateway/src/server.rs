//! Process wiring: binds the listeners, starts the pipeline and the admin endpoint, and shuts down in order
//! (stop accepting, let connections send the acknowledgements they owe, drain the pipeline).

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use anyhow::Context as _;
use meshgate_edge_agent::admin::MeshStatus;
use meshgate_edge_agent::pipeline::Pipeline;
use meshgate_edge_agent::trace::Tracing;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::admin::{self, AdminState};
use crate::amqp::{self, AmqpContext};
use crate::broker::{BrokerConfig, LocalBroker};
use crate::clients::Clients;
use crate::config::Config;
use crate::listener::{self, Peer};
use crate::metrics::Metrics;
use crate::mqtt::{self, MqttContext};
use crate::policy::{Policy, PolicyCell};
use crate::reload::{Reloadable, Reloader};
use crate::sys::SysSources;
use crate::ws::{self, WsContext};
use meshgate_edge_agent::admin::{AdminAccess, PlainListener, TlsAdminListener};

async fn bind(addr: SocketAddr, key: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr).await.map_err(|e| {
        if e.kind() == std::io::ErrorKind::AddrInUse {
            anyhow::anyhow!(
                "{key}: {addr} is already in use by another process; set `{key}` to a free address (or port 0 for any free port), e.g. MESHGATE_{}=127.0.0.1:0",
                key.to_ascii_uppercase().replace('.', "__")
            )
        } else {
            anyhow::anyhow!("{key}: cannot listen on {addr}: {e}")
        }
    })
}

async fn bind_opt(addr: Option<SocketAddr>, key: &str) -> anyhow::Result<Option<TcpListener>> {
    match addr {
        Some(a) => bind(a, key).await.map(Some),
        None => Ok(None),
    }
}

/// How a listener serves each accepted connection.
type Serve = Box<dyn Fn(tokio::net::TcpStream) -> crate::tls::Serving + Send>;

/// Boxes a plain connection handler, so plain and TLS listeners have one type.
fn boxed<F, Fut>(serve: F) -> Serve
where
    F: Fn(tokio::net::TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    Box::new(move |s| Box::pin(serve(s)))
}

/// Runs the gateway until `shutdown` resolves. `path` is the configuration file (`None`: the embedded
/// defaults), read again on SIGHUP and `POST /api/reload`.
pub async fn run(config: Config, path: Option<PathBuf>, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    // Before anything else: SIGHUP's default action ends the process, and an operator may send it at any time.
    let hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .context("cannot install the SIGHUP handler")?;
    let started = Instant::now();
    let data_dir = config.gateway.data_dir.clone();
    tokio::fs::create_dir_all(&data_dir)
        .await
        .with_context(|| format!("gateway.data_dir: cannot create {}", data_dir.display()))?;

    let metrics = Arc::new(Metrics::default());
    let traces = Tracing::start(&config.tracing, "meshgate").map_err(anyhow::Error::msg)?;
    let (pipeline, ingest) = Pipeline::start_configured(
        &data_dir,
        &config.uplinks(),
        &config.spool,
        config.forwarder,
        &[crate::broker::durable::CONSUMER],
        &traces,
    )
    .await?;
    let mut first = Policy::of(&config, None).map_err(anyhow::Error::msg)?;
    first.auth = first.auth.with_metrics(Arc::clone(&metrics));
    let policy = Arc::new(PolicyCell::new(first));
    let clients = Arc::new(Clients::default());
    let (stop_tx, stop_rx) = watch::channel(false);

    // Every socket is bound before anything is announced, so a port in use fails the start cleanly.
    let l = &config.listeners;
    let mqtt_listener = bind_opt(l.mqtt.as_ref().map(|c| c.bind), "listeners.mqtt.bind").await?;
    let mqtts_listener = bind_opt(l.mqtt.as_ref().and_then(|c| c.tls_bind), "listeners.mqtt.tls_bind").await?;
    let amqp_listener = bind_opt(l.amqp.as_ref().map(|c| c.bind), "listeners.amqp.bind").await?;
    let amqps_listener = bind_opt(l.amqp.as_ref().and_then(|c| c.tls_bind), "listeners.amqp.tls_bind").await?;
    let ws_listener = bind_opt(l.ws.as_ref().map(|c| c.bind), "listeners.ws.bind").await?;
    let wss_listener = bind_opt(l.ws.as_ref().and_then(|c| c.tls_bind), "listeners.ws.tls_bind").await?;
    let admin_listener = bind_opt(config.admin.as_ref().map(|a| a.bind), "admin.bind").await?;
    let admins_listener = bind_opt(config.admin.as_ref().and_then(|a| a.tls_bind), "admin.tls_bind").await?;
    let tls = config.tls.as_ref().map(crate::tls::ServerTls::new).transpose()?;

    let broker_dir = data_dir.join("broker");
    let broker_config = BrokerConfig::new(&config.broker, &config.limits);
    let broker = Arc::new(
        LocalBroker::open(&broker_dir, broker_config)
            .with_context(|| format!("gateway.data_dir: cannot open the broker state in {}", broker_dir.display()))?,
    );
    broker.recover(pipeline.spool()).with_context(|| {
        format!(
            "gateway.data_dir: cannot route the spool's messages for persistent sessions in {}",
            broker_dir.display()
        )
    })?;
    let maintenance = tokio::spawn(Arc::clone(&broker).run_maintenance(stop_rx.clone()));
    if let (Some(tls), Some(t)) = (&tls, config.tls.as_ref().filter(|t| t.reload_interval_secs > 0)) {
        tokio::spawn(Arc::clone(tls).watch(Duration::from_secs(t.reload_interval_secs), stop_rx.clone()));
    }
    metrics.set_broker(Arc::clone(&broker));
    let downlinks = crate::downlinks::start(&config.downlinks, &ingest, &traces, &stop_rx);
    let mesh =
        Arc::new(MeshStatus::new(pipeline.spool().clone(), config.spool.clone(), pipeline.stats(), downlinks.stats));
    metrics.set_mesh(Arc::clone(&mesh));
    let access = Arc::new(AdminAccess::new(config.admin_secrets()));
    let reloadable = Reloadable {
        policy: Arc::clone(&policy),
        tls: tls.clone(),
        broker: Arc::clone(&broker),
        clients: Arc::clone(&clients),
        metrics: Arc::clone(&metrics),
        admin: Arc::clone(&access),
    };
    let reloader = Arc::new(Reloader::new(path, config.clone(), reloadable));
    let hangup_task = tokio::spawn(reload_on_hangup(hangups, Arc::clone(&reloader), stop_rx.clone()));
    if config.broker.sys_interval_secs > 0 {
        let sources = SysSources {
            broker: Arc::clone(&broker),
            metrics: Arc::clone(&metrics),
            clients: Arc::clone(&clients),
            started,
        };
        let every = Duration::from_secs(config.broker.sys_interval_secs);
        tokio::spawn(crate::sys::run(sources, every, stop_rx.clone()));
    }

    let shared = listener::Shared {
        policy: Arc::clone(&policy),
        clients: Arc::clone(&clients),
        ingest,
        metrics: Arc::clone(&metrics),
        broker: Arc::clone(&broker),
        user_rates: Arc::default(),
        shutdown: stop_rx.clone(),
        traces: traces.clone(),
    };
    let mut listener_tasks = Vec::new();
    let mut spawn = |listener, max: usize, serve| {
        listener_tasks.push(tokio::spawn(listener::run(listener, max, stop_rx.clone(), serve)));
    };
    // MQTT sessions serve the MQTT listener and the `mqtt` subprotocol of the WebSocket listener.
    let mqtt_ctx = (l.mqtt.is_some() || l.ws.is_some()).then(|| {
        Arc::new(MqttContext {
            config: l.mqtt.clone().unwrap_or_default(),
            shared: shared.clone(),
            registry: mqtt::registry::Registry::default(),
            lifecycle_events: config.gateway.lifecycle_events,
        })
    });
    if let (Some(cfg), Some(ctx)) = (&l.mqtt, &mqtt_ctx) {
        let timeout = Duration::from_secs(cfg.connect_timeout_secs);
        if let Some(listener) = mqtt_listener {
            announce("mqtt", &listener)?;
            let ctx = Arc::clone(ctx);
            let serve = move |s| {
                let peer = Peer::of(&s);
                mqtt::connection::serve_as(s, Arc::clone(&ctx), peer)
            };
            spawn(listener, cfg.max_connections, boxed(serve));
        }
        if let (Some(listener), Some(acceptor)) = (mqtts_listener, tls.clone()) {
            announce("mqtts", &listener)?;
            let ctx = Arc::clone(ctx);
            let serve = move |s, id| mqtt::connection::serve_as(s, Arc::clone(&ctx), id);
            spawn(listener, cfg.max_connections, Box::new(crate::tls::over_tls(acceptor, timeout, serve)));
        }
    }
    if let Some(cfg) = &l.amqp {
        let ctx = Arc::new(AmqpContext { config: cfg.clone(), shared: shared.clone() });
        let timeout = Duration::from_secs(cfg.connect_timeout_secs);
        if let Some(listener) = amqp_listener {
            announce("amqp", &listener)?;
            let ctx = Arc::clone(&ctx);
            let serve = move |s| {
                let peer = Peer::of(&s);
                amqp::driver::serve_as(s, Arc::clone(&ctx), peer)
            };
            spawn(listener, cfg.max_connections, boxed(serve));
        }
        if let (Some(listener), Some(acceptor)) = (amqps_listener, tls.clone()) {
            announce("amqps", &listener)?;
            let serve = move |s, id| amqp::driver::serve_as(s, Arc::clone(&ctx), id);
            spawn(listener, cfg.max_connections, Box::new(crate::tls::over_tls(acceptor, timeout, serve)));
        }
    }
    if let (Some(cfg), Some(mqtt_ctx)) = (&l.ws, &mqtt_ctx) {
        let ctx = Arc::new(WsContext { config: cfg.clone(), shared: shared.clone(), mqtt: Arc::clone(mqtt_ctx) });
        let timeout = Duration::from_secs(cfg.handshake_timeout_secs);
        if let Some(listener) = ws_listener {
            announce("ws", &listener)?;
            let ctx = Arc::clone(&ctx);
            let serve = move |s| {
                let peer = Peer::of(&s);
                ws::serve(s, Arc::clone(&ctx), peer)
            };
            spawn(listener, cfg.max_connections, boxed(serve));
        }
        if let (Some(listener), Some(acceptor)) = (wss_listener, tls.clone()) {
            announce("wss", &listener)?;
            let serve = move |s, id| ws::serve(s, Arc::clone(&ctx), id);
            spawn(listener, cfg.max_connections, Box::new(crate::tls::over_tls(acceptor, timeout, serve)));
        }
    }
    let state = AdminState {
        metrics: Arc::clone(&metrics),
        mesh,
        data_dir: data_dir.clone(),
        broker: Arc::clone(&broker),
        clients: Arc::clone(&clients),
        policy: Arc::clone(&policy),
        ingest: shared.ingest.clone(),
        reloader,
        access,
        protect_metrics: config.admin.as_ref().is_some_and(|a| a.protect_metrics),
        started,
        shutdown: stop_rx.clone(),
        traces: traces.clone(),
    };
    // Every ingest handle must be gone once the connections and the admin endpoint are, so the pipeline can drain
    // at shutdown.
    drop(mqtt_ctx);
    drop(shared);
    let mut admin_tasks = Vec::new();
    if let (Some(inner), Some(tls)) = (admins_listener, tls.clone()) {
        announce("admins", &inner)?;
        let acceptor = Arc::new(move || tls.acceptor());
        let listener = TlsAdminListener { inner, acceptor, cert_name: crate::tls::peer_identity };
        admin_tasks.push(tokio::spawn(admin::run(listener, state.clone())));
    }
    // Announced last: scripts and tests wait for this line to know every listener is up.
    if let Some(listener) = admin_listener {
        announce("admin", &listener)?;
        admin_tasks.push(tokio::spawn(admin::run(PlainListener(listener), state)));
    } else {
        drop(state);
    }
    tracing::info!(gateway = %config.gateway.id, data_dir = %data_dir.display(), "meshgate started");

    shutdown.await;
    tracing::info!("shutting down: finishing acknowledgements, then draining the pipeline");
    let _ = stop_tx.send(true);
    let grace = Duration::from_secs(config.gateway.shutdown_grace_secs);
    let listeners_done = async {
        for task in listener_tasks {
            let _ = task.await;
        }
    };
    if tokio::time::timeout(grace, listeners_done).await.is_err() {
        tracing::warn!("connections did not finish within the grace period");
    }
    for task in admin_tasks {
        let _ = task.await;
    }
    let _ = hangup_task.await;
    for task in downlinks.tasks {
        let _ = task.await;
    }
    let _ = maintenance.await;
    let saving = Arc::clone(&broker);
    match tokio::task::spawn_blocking(move || saving.save()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::error!(error = %e, "could not save the broker's sessions and retained messages"),
        Err(e) => tracing::error!(error = %e, "broker save failed"),
    }
    // Every ingest handle is gone now: the spool commits what is queued, the forwarders send what they can.
    if tokio::time::timeout(grace, pipeline.shutdown()).await.is_err() {
        tracing::warn!("forwarders did not catch up within the grace period; the rest stays in the spool");
    }
    traces.shutdown().await;
    tracing::info!("meshgate stopped");
    Ok(())
}

/// Reloads the configuration on every SIGHUP until shutdown (see [`crate::reload`]).
async fn reload_on_hangup(
    mut hangups: tokio::signal::unix::Signal,
    reloader: Arc<Reloader>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = crate::listener::stopped(&mut stop) => return,
            got = hangups.recv() => {
                if got.is_none() {
                    return;
                }
                tracing::info!("SIGHUP: reloading the configuration");
                let reloader = Arc::clone(&reloader);
                // The outcome is logged and counted by the reloader.
                let _ = tokio::task::spawn_blocking(move || reloader.reload()).await;
            }
        }
    }
}

/// Prints the bound address on stdout (`meshgate: mqtt listening on 127.0.0.1:1883`), so scripts and tests that
/// bind port 0 can read it back.
fn announce(what: &str, listener: &TcpListener) -> anyhow::Result<()> {
    use std::io::Write;
    let addr = listener.local_addr()?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "meshgate: {what} listening on {addr}")?;
    out.flush()?;
    Ok(())
}

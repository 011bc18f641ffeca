//! The accept loop, graceful shutdown, and the holder file.
//!
//! Why a hand-written loop rather than `axum::serve`: the idle timeout (a keep-alive connection
//! waiting for its next request's headers) is hyper's `header_read_timeout`, which `axum::serve`
//! does not expose, and shutdown must also end the event feeds, which never finish by
//! themselves.
//!
//! Shutdown (SIGTERM, Ctrl-C, or [`Running::stop`]): stop accepting; tell the event feeds to
//! end; let every request in flight finish (each acknowledged command is already durable: the
//! writer answers only after its frame's fdatasync), for at most the grace period; then close
//! the store (the writer drains its queue and writes a last checkpoint) and remove the holder
//! file.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use axum::http::HeaderName;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use ledger::LedgerOptions;
use projections::WalletService;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::{DefaultOnResponse, TraceLayer};

use crate::api::{self, AppState};
use crate::auth::{RateLimiter, REQUEST_ID_HEADER};
use crate::config::Config;
use crate::keys::Keys;

/// The file walletd writes into the store directory while it holds the store, so that
/// `migrate-tool` can say which endpoint to use instead.
pub const HOLDER_FILE: &str = "walletd.json";

/// A started server.
pub struct Running {
    /// Where it listens (the real port when the configuration said 0).
    pub addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Running {
    /// Starts the shutdown and waits until the store is closed.
    pub async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(true);
        self.task.await.context("the server task failed")?
    }

    /// Waits for the server to end (after a [`Running::stop`] from elsewhere or a failure).
    pub async fn wait(self) -> anyhow::Result<()> {
        self.task.await.context("the server task failed")?
    }
}

/// Opens the store, binds, and serves in the background.
pub async fn start(config: Config) -> anyhow::Result<Running> {
    let keys = Keys::load(&config.keys)?;
    if keys.is_empty() {
        tracing::warn!(keys = %config.keys.display(), "the key file holds no key: every request that needs one gets 401");
    }
    if keys.cursor_secret_ephemeral {
        tracing::warn!(keys = %config.keys.display(), "the key file has no cursor_secret: statement cursors will not survive a restart (`walletd keys add` writes one)");
    }
    let store = config.store.clone();
    let service =
        tokio::task::spawn_blocking(move || WalletService::open(&store, LedgerOptions::default()))
            .await
            .context("opening the store failed")?
            .map_err(|e| anyhow::anyhow!("cannot open store {}: {e}", config.store.display()))?;
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let addr = listener.local_addr()?;
    write_holder(&config.store, addr)?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let tail = crate::feed::Tail::start(service.ledger(), stop_rx.clone());
    let state = Arc::new(AppState {
        tail,
        service,
        keys,
        limiter: RateLimiter::new(config.rate_limit_per_sec),
        config: config.clone(),
        shutdown: stop_rx.clone(),
        metrics: crate::telemetry::metrics_handle(),
    });
    let request_id = HeaderName::from_static(REQUEST_ID_HEADER);
    let app = api::router(Arc::clone(&state))
        .route_layer(axum::middleware::from_fn(crate::telemetry::track))
        .layer(
            tower::ServiceBuilder::new()
                .layer(SetRequestIdLayer::new(request_id.clone(), MakeRequestUuid))
                .layer(
                    TraceLayer::new_for_http()
                        .make_span_with(|request: &axum::http::Request<_>| {
                            let id = request
                                .headers()
                                .get(REQUEST_ID_HEADER)
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("-");
                            tracing::info_span!(
                                "request",
                                request_id = %id,
                                method = %request.method(),
                                path = %request.uri().path(),
                            )
                        })
                        .on_response(DefaultOnResponse::new().level(tracing::Level::INFO)),
                )
                .layer(PropagateRequestIdLayer::new(request_id)),
        );
    tracing::info!(%addr, store = %config.store.display(), "walletd serving");
    let task = tokio::spawn(accept_loop(listener, app, state, stop_rx, config));
    Ok(Running {
        addr,
        stop: stop_tx,
        task,
    })
}

async fn accept_loop(
    listener: TcpListener,
    app: axum::Router,
    state: Arc<AppState>,
    mut stop: watch::Receiver<bool>,
    config: Config,
) -> anyhow::Result<()> {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(config.idle_timeout)
        .keep_alive(true);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, _) = match accepted {
                    Ok(pair) => pair,
                    Err(e) => {
                        // Out of file descriptors and the like: wait a little and go on.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let service = TowerToHyperService::new(app.clone());
                let connection = http.serve_connection(TokioIo::new(stream), service);
                let watched = graceful.watch(connection);
                tokio::spawn(async move {
                    if let Err(e) = watched.await {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                });
            }
            // The guard `wait_for` returns must not live across an await (it is not Send).
            _ = async { let _ = stop.wait_for(|s| *s).await; } => break,
        }
    }
    drop(listener);
    tracing::info!("shutdown: no new connections; finishing the requests in flight");
    if tokio::time::timeout(config.shutdown_grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            grace_ms = config.shutdown_grace.as_millis() as u64,
            "shutdown: requests still in flight after the grace period are cut"
        );
    }
    let store = config.store.clone();
    // Closing the service joins the writer thread: off the async threads.
    tokio::task::spawn_blocking(move || drop(state))
        .await
        .context("closing the store failed")?;
    remove_holder(&store);
    tracing::info!("shutdown: store closed");
    Ok(())
}

/// Runs until SIGTERM or Ctrl-C, then shuts down gracefully. Prints the address first, as
/// `walletd listening on http://ADDR` on stdout (scripts and tests read it).
pub async fn serve(config: Config) -> anyhow::Result<()> {
    let running = start(config).await?;
    println!("walletd listening on http://{}", running.addr);
    use std::io::Write;
    let _ = std::io::stdout().flush();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot watch SIGTERM")?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupt: shutting down"),
    }
    running.stop().await
}

fn holder_path(store: &Path) -> PathBuf {
    store.join(HOLDER_FILE)
}

fn write_holder(store: &Path, addr: SocketAddr) -> anyhow::Result<()> {
    let doc = serde_json::json!({
        "pid": std::process::id(),
        "url": format!("http://{addr}"),
    });
    let path = holder_path(store);
    std::fs::write(&path, format!("{doc}\n"))
        .with_context(|| format!("cannot write {}", path.display()))
}

fn remove_holder(store: &Path) {
    let path = holder_path(store);
    if let Err(e) = std::fs::remove_file(&path) {
        tracing::warn!(path = %path.display(), error = %e, "cannot remove the holder file");
    }
}

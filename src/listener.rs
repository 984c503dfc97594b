//! How connections come in and are served: the socket systemd passes (socket activation) or
//! one the service binds, plain HTTP or TLS, with limits on what a client may send.
//!
//! axum's own `serve` offers no TLS and no header timeout, so connections are served with
//! hyper directly: each gets a bounded TLS handshake, a bounded time to send its headers and
//! a bounded header size, and shutdown waits for the requests under way.

use std::net::SocketAddr;
use std::os::fd::FromRawFd;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::rustls;
use tokio_rustls::TlsAcceptor;

/// How long a client has for the TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client has to send a request's headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// The most connections served at once.
const MAX_CONNECTIONS: usize = 512;
/// The most headers one request may carry.
const MAX_HEADERS: usize = 64;
/// The most bytes of request line and headers buffered for one request.
const MAX_HEADER_BYTES: usize = 16 * 1024;

/// The address a request's connection came from.
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub SocketAddr);

/// Where the listening socket came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Passed by systemd from a `.socket` unit: the port stays open across restarts.
    Activated,
    Bound,
}

/// The socket systemd passed, if exactly one TCP socket was; otherwise binds `addr`.
pub async fn listen(addr: SocketAddr) -> anyhow::Result<(TcpListener, Origin)> {
    let fds: Vec<_> = sd_notify::listen_fds()
        .context("cannot read the sockets systemd passed")?
        .collect();
    match fds.as_slice() {
        [] => {
            let listener = TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr}"))?;
            Ok((listener, Origin::Bound))
        }
        [fd] => {
            // SAFETY: systemd passed this descriptor to this process for it to own (LISTEN_PID
            // was checked by listen_fds), and nothing else in the process uses it.
            let std = unsafe { std::net::TcpListener::from_raw_fd(*fd) };
            std.set_nonblocking(true)
                .context("cannot make the passed socket non-blocking")?;
            let listener = TcpListener::from_std(std)
                .context("the socket systemd passed is not a TCP listening socket")?;
            Ok((listener, Origin::Activated))
        }
        more => anyhow::bail!("systemd passed {} sockets; expected one", more.len()),
    }
}

/// Reads a certificate chain and private key in PEM files into a TLS acceptor.
pub fn tls_acceptor(certificate: &Path, key: &Path) -> anyhow::Result<TlsAcceptor> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};

    let chain = CertificateDer::pem_file_iter(certificate)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .with_context(|| format!("cannot read the certificate {}", certificate.display()))?;
    anyhow::ensure!(
        !chain.is_empty(),
        "{} holds no certificate",
        certificate.display()
    );
    let key = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("cannot read the private key {}", key.display()))?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .context("no TLS protocol version available")?
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .context("the certificate and key do not go together")?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Serves the latest `app` on `listener` until `shutdown` resolves, then waits at most
/// `grace` for the requests under way. Each new connection takes the router current at the
/// time, so a reloaded configuration applies to connections opened after the reload.
pub async fn serve(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    app: tokio::sync::watch::Receiver<Router>,
    shutdown: impl std::future::Future<Output = ()>,
    grace: Duration,
) {
    // `graceful` only counts the connections (each task holds a watcher until it ends);
    // `stop` tells them to finish, see `serve_until_stopped`.
    let graceful = GracefulShutdown::new();
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_headers(MAX_HEADERS)
        .max_buf_size(MAX_HEADER_BYTES);

    // Each connection holds a permit: past the limit, new connections wait in the kernel's
    // backlog instead of exhausting the process's file descriptors, which the service needs
    // for its probes, the bus and systemd's notifications.
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => {
                permit.expect("the connection semaphore is never closed")
            }
            () = &mut shutdown => break,
        };
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of descriptors and the like: pause rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // Each request learns the address it came from, for the log of refused callers.
        let router = app.borrow().clone().layer(axum::Extension(Peer(peer)));
        let service = TowerToHyperService::new(router.into_service::<Incoming>());
        let http = http.clone();
        let watcher = graceful.watcher();
        let stop = stop_rx.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let result = match tls {
                None => {
                    // A connection the kernel handed over is answered even when shutdown
                    // starts now: hyper closes one that has not read a request yet, so the
                    // client's first bytes are waited for (readiness alone can be spurious).
                    let _ = tokio::time::timeout(HEADER_READ_TIMEOUT, tcp.peek(&mut [0; 1])).await;
                    let conn = http.serve_connection(TokioIo::new(tcp), service);
                    serve_until_stopped(conn, stop).await
                }
                Some(tls) => {
                    let stream =
                        match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, tls.accept(tcp)).await {
                            Ok(Ok(stream)) => stream,
                            Ok(Err(e)) => {
                                tracing::debug!(peer = %peer, error = %e, "TLS handshake failed");
                                return;
                            }
                            Err(_) => {
                                tracing::debug!(peer = %peer, "TLS handshake timed out");
                                return;
                            }
                        };
                    let conn = http.serve_connection(TokioIo::new(stream), service);
                    serve_until_stopped(conn, stop).await
                }
            };
            drop(watcher);
            if let Err(e) = result {
                tracing::debug!(peer = %peer, error = %e, "connection ended with an error");
            }
        });
    }

    drop(listener);
    let _ = stop_tx.send(true);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(grace) => {
            tracing::warn!(grace_s = grace.as_secs(), "requests still open at shutdown were dropped");
        }
    }
}

type Service = TowerToHyperService<axum::routing::RouterIntoService<Incoming>>;

/// Serves `conn` until it ends; once `stop` is set, the request under way is answered and the
/// connection closed. The connection is polled before `stop` is looked at, so a request that
/// has arrived is read, and answered, rather than closed with a connection hyper sees idle.
async fn serve_until_stopped<I>(
    conn: hyper::server::conn::http1::Connection<I, Service>,
    mut stop: watch::Receiver<bool>,
) -> hyper::Result<()>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        biased;
        result = conn.as_mut() => return result,
        _ = stop.wait_for(|stop| *stop) => {}
    }
    conn.as_mut().graceful_shutdown();
    conn.await
}

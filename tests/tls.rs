//! The API over https: the listener serves TLS with the configured certificate and key, and
//! a client speaking plain HTTP to it gets no answer from the API.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use axum::routing::get;
use axum::Router;
use galaxyctl_api::listener::{serve, tls_acceptor};
use tokio::net::TcpListener;

/// A self-signed certificate for 127.0.0.1 and its key, made by the openssl command.
fn self_signed(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let status = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ])
        .args(["-nodes", "-days", "1", "-subj", "/CN=127.0.0.1"])
        .args(["-addext", "subjectAltName=IP:127.0.0.1"])
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl runs");
    assert!(status.status.success(), "{status:?}");
    (cert, key)
}

#[tokio::test]
async fn serves_https_with_the_configured_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = self_signed(dir.path());
    let acceptor = tls_acceptor(&cert, &key).expect("the certificate and key load");

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = Router::new().route("/ping", get(|| async { "pong" }));
    let (_router_tx, router_rx) = tokio::sync::watch::channel(app);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(
        listener,
        Some(acceptor),
        router_rx,
        async {
            let _ = stop_rx.await;
        },
        Duration::from_secs(2),
    ));

    // The dashboard does not verify the certificate; this client trusts this one instead.
    let certificate =
        reqwest::Certificate::from_pem(&std::fs::read(&cert).unwrap()).expect("a PEM certificate");
    let client = reqwest::Client::builder()
        .add_root_certificate(certificate)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let answer = client
        .get(format!("https://{addr}/ping"))
        .send()
        .await
        .expect("the https request is answered");
    assert_eq!(answer.status(), 200);
    assert_eq!(answer.text().await.unwrap(), "pong");

    // Plain HTTP on the TLS port is a failed handshake, not an answer.
    let plain = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
        .get(format!("http://{addr}/ping"))
        .send()
        .await;
    assert!(plain.is_err(), "{plain:?}");

    stop_tx.send(()).unwrap();
    server.await.unwrap();
}

#[test]
fn a_key_that_does_not_match_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, _) = self_signed(dir.path());
    let other = dir.path().join("other");
    std::fs::create_dir(&other).unwrap();
    let (_, other_key) = self_signed(&other);
    let Err(error) = tls_acceptor(&cert, &other_key) else {
        panic!("a foreign key is refused");
    };
    assert!(
        format!("{error:#}").contains("do not go together"),
        "{error:#}"
    );

    let Err(missing) = tls_acceptor(&dir.path().join("none.pem"), &other_key) else {
        panic!("a missing certificate is refused");
    };
    assert!(format!("{missing:#}").contains("none.pem"), "{missing:#}");
}

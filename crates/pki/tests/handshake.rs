//! Real TLS handshakes over loopback between configs built by this crate.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

use std::sync::Arc;

use firefleet_pki::{
    client_tls_config, make_agent_csr, node_name_from_cert, server_tls_config, Ca,
};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

const WEEK: std::time::Duration = std::time::Duration::from_secs(7 * 24 * 3600);

/// What the server saw: `Ok(node name of the client certificate, if any)` or the handshake error.
type Seen = Result<Option<String>, String>;

/// Runs one server handshake and one client connection. The server writes one byte after a
/// successful handshake; the client reads it, which fails if the server refused the client
/// (with TLS 1.3 the client learns of the refusal only after its own handshake completes).
async fn handshake(ca: &Ca, client_identity: Option<(&str, &str)>) -> (Seen, Result<(), String>) {
    let server = ca.issue_server_cert(&[], &[]).unwrap();
    let server_config =
        server_tls_config(ca.cert_pem(), &server.cert_pem, &server.key_pem).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = TlsAcceptor::from(Arc::new(server_config));
    let server_task = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut tls = acceptor.accept(tcp).await.map_err(|e| e.to_string())?;
        let (_, conn) = tls.get_ref();
        assert_eq!(conn.alpn_protocol(), Some(&b"h2"[..]));
        let node = match conn.peer_certificates() {
            Some(chain) => Some(node_name_from_cert(&chain[0]).map_err(|e| e.to_string())?),
            None => None,
        };
        tls.write_all(b"!").await.map_err(|e| e.to_string())?;
        tls.shutdown().await.map_err(|e| e.to_string())?;
        Ok::<_, String>(node)
    });

    let client_config = client_tls_config(ca.cert_pem(), client_identity).unwrap();
    let connector = TlsConnector::from(Arc::new(client_config));
    let client = async {
        let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        let mut tls = connector
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .map_err(|e| e.to_string())?;
        let mut byte = [0u8; 1];
        tls.read_exact(&mut byte).await.map_err(|e| e.to_string())?;
        Ok::<_, String>(())
    }
    .await;
    (server_task.await.unwrap(), client)
}

#[tokio::test]
async fn agent_with_a_certificate_from_its_csr_is_accepted_and_named() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::load_or_create(dir.path()).unwrap();
    let (csr, key) = make_agent_csr("edge-1").unwrap();
    let cert = ca.sign_agent_csr(&csr, "edge-1", WEEK).unwrap().cert_pem;
    let (seen, client) = handshake(&ca, Some((&cert, &key))).await;
    assert_eq!(seen, Ok(Some("edge-1".to_owned())));
    assert_eq!(client, Ok(()));
}

#[tokio::test]
async fn client_without_a_certificate_connects_anonymously() {
    let ca = Ca::generate().unwrap();
    let (seen, client) = handshake(&ca, None).await;
    assert_eq!(seen, Ok(None));
    assert_eq!(client, Ok(()));
}

#[tokio::test]
async fn client_certificate_from_another_ca_is_refused() {
    let ca = Ca::generate().unwrap();
    let rogue = Ca::generate().unwrap();
    let (csr, key) = make_agent_csr("edge-1").unwrap();
    let cert = rogue.sign_agent_csr(&csr, "edge-1", WEEK).unwrap().cert_pem;
    let (seen, client) = handshake(&ca, Some((&cert, &key))).await;
    let err = seen.unwrap_err();
    assert!(err.contains("UnknownIssuer"), "{err}");
    assert!(
        client.is_err(),
        "the client must not get data from the server"
    );
}

#[tokio::test]
async fn server_from_another_ca_is_refused_by_the_client() {
    let ca = Ca::generate().unwrap();
    let other = Ca::generate().unwrap();
    let server = other.issue_server_cert(&[], &[]).unwrap();
    let server_config =
        server_tls_config(other.cert_pem(), &server.cert_pem, &server.key_pem).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = TlsAcceptor::from(Arc::new(server_config));
    let server_task = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        acceptor.accept(tcp).await.is_ok()
    });
    let connector = TlsConnector::from(Arc::new(client_tls_config(ca.cert_pem(), None).unwrap()));
    let tcp = TcpStream::connect(addr).await.unwrap();
    let err = connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("UnknownIssuer"), "{err}");
    assert!(!server_task.await.unwrap());
}

#[tokio::test]
async fn reloaded_ca_still_verifies_certificates_issued_before() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = {
        let ca = Ca::load_or_create(dir.path()).unwrap();
        let (csr, key) = make_agent_csr("edge-2").unwrap();
        (
            ca.sign_agent_csr(&csr, "edge-2", WEEK).unwrap().cert_pem,
            key,
        )
    };
    let reloaded = Ca::load_or_create(dir.path()).unwrap();
    let (seen, client) = handshake(&reloaded, Some((&cert, &key))).await;
    assert_eq!(seen, Ok(Some("edge-2".to_owned())));
    assert_eq!(client, Ok(()));
}

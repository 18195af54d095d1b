//! TLS to etcd with client certificates: the right files connect; a missing client
//! certificate, a wrong CA or a client certificate of another CA fail with a clear error;
//! an unreadable file is named.

use std::time::Duration;

use firefleet_store::conformance::ok;
use firefleet_store::etcd::testing::{EtcdCluster, TlsFiles};
use firefleet_store::{EtcdConfig, EtcdError, EtcdStore, EtcdTls, KvStore, StoreError};

/// The whole error chain, as a user would read it.
fn chain(err: &StoreError) -> String {
    let mut text = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

async fn refused(config: EtcdConfig, what: &str) -> String {
    let started = std::time::Instant::now();
    let err = match EtcdStore::connect(config).await {
        Ok(store) => panic!("{what}: connected ({store:?})"),
        Err(err) => err,
    };
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{what}: took {:?}",
        started.elapsed()
    );
    let text = chain(&err);
    eprintln!("{what}: {text}");
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_are_required_and_checked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let good = TlsFiles::generate(dir.path());
    let other_dir = tempfile::tempdir().expect("tempdir");
    let other = TlsFiles::generate(other_dir.path());
    let cluster = EtcdCluster::start_tls(1, &good).await;

    // The right CA and client certificate.
    let store = match EtcdStore::connect(cluster.config("/firefleet/tls")).await {
        Ok(store) => store,
        Err(err) => panic!("connect with TLS: {}", chain(&err)),
    };
    let r = ok(store.put("/k", b"v".to_vec()).await, "put over TLS");
    assert_eq!(
        ok(store.get("/k").await, "get").map(|kv| kv.mod_revision),
        Some(r)
    );

    let endpoints = cluster.endpoints();
    let with_tls = |tls: Option<EtcdTls>| {
        let mut config = EtcdConfig::new(endpoints.clone(), "/firefleet/tls");
        config.tls = tls;
        config.request_timeout = Duration::from_secs(2);
        config
    };

    // No client certificate at all (and no CA: the platform's roots do not know ours).
    let text = refused(with_tls(None), "no client certificate").await;
    assert!(text.contains(&endpoints[0]), "{text}");
    assert!(
        text.to_lowercase().contains("tls") || text.contains("certificate"),
        "{text}"
    );

    // A CA that did not sign the server's certificate.
    let text = refused(
        with_tls(Some(EtcdTls {
            ca: other.ca.clone(),
            ..good.client()
        })),
        "wrong CA",
    )
    .await;
    assert!(
        text.contains("certificate") || text.contains("TLS"),
        "{text}"
    );

    // A client certificate the server's CA did not sign.
    let text = refused(
        with_tls(Some(EtcdTls {
            ca: good.ca.clone(),
            cert: other.client_cert.clone(),
            key: other.client_key.clone(),
        })),
        "client certificate of another CA",
    )
    .await;
    assert!(text.contains(&endpoints[0]), "{text}");

    // A file that cannot be read is named.
    let missing = dir.path().join("missing-key.pem");
    match EtcdStore::connect(with_tls(Some(EtcdTls {
        key: missing.clone(),
        ..good.client()
    })))
    .await
    {
        Err(StoreError::Backend(err)) => {
            assert!(
                matches!(
                    err.downcast_ref::<EtcdError>(),
                    Some(EtcdError::TlsFile { path, .. }) if *path == missing
                ),
                "{err}"
            );
            assert!(err.to_string().contains("missing-key.pem"), "{err}");
        }
        other => panic!("a missing key file: {other:?}"),
    }
    // A file that is not PEM is named too.
    match EtcdStore::connect(with_tls(Some(EtcdTls {
        ca: dir.path().to_path_buf().join("ca-not-pem"),
        ..good.client()
    })))
    .await
    {
        Err(err) => assert!(chain(&err).contains("ca-not-pem"), "{}", chain(&err)),
        Ok(_) => panic!("connected with a CA file that does not exist"),
    }
    std::fs::write(dir.path().join("garbage.pem"), "not a certificate").expect("write");
    match EtcdStore::connect(with_tls(Some(EtcdTls {
        ca: dir.path().join("garbage.pem"),
        ..good.client()
    })))
    .await
    {
        Err(err) => {
            let text = chain(&err);
            assert!(
                text.contains("garbage.pem") && text.contains("not PEM"),
                "{text}"
            );
        }
        Ok(_) => panic!("connected with a CA file that is not PEM"),
    }
}

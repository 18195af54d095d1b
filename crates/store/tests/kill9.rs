//! Crash test: a child process writes in a loop and prints each key only after the write
//! returned `Ok`; the parent kills it with SIGKILL mid-stream, reopens the store, and checks
//! that every acknowledged write is there.
//!
//! The child is this test binary itself, re-executed with `CHILD_ENV` set.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use firefleet_store::{KvStore, Op, SqliteStore};

const CHILD_ENV: &str = "FIREFLEET_STORE_KILL9_CHILD_DB";
const TEST_NAME: &str = "acknowledged_writes_survive_kill9";
const ACKS_BEFORE_KILL: usize = 150;
const CHILD_LIMIT: Duration = Duration::from_secs(120);

fn value_of(i: u64) -> Vec<u8> {
    format!("value-{i}-{}", "x".repeat((i % 97) as usize)).into_bytes()
}

/// Child mode: write until killed (or the time limit, so an orphan cannot run forever).
fn child(db: &Path) {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let store = SqliteStore::open(db).expect("open store");
        let started = Instant::now();
        let mut stdout = std::io::stdout();
        let mut i = 0u64;
        while started.elapsed() < CHILD_LIMIT {
            let key = format!("/kill9/{i:08}");
            // Alternate plain puts and two-key transactions.
            let revision = if i % 2 == 1 {
                let resp = store
                    .txn(
                        vec![],
                        vec![
                            Op::Put {
                                key: key.clone(),
                                value: value_of(i),
                            },
                            Op::Put {
                                key: "/kill9-last".into(),
                                value: i.to_string().into_bytes(),
                            },
                        ],
                        vec![],
                    )
                    .await
                    .expect("txn");
                assert!(resp.succeeded);
                resp.revision
            } else {
                store.put(&key, value_of(i)).await.expect("put")
            };
            // Fails (ending the child) once the parent is gone.
            writeln!(stdout, "ACK {i} {revision}").expect("write ack");
            stdout.flush().expect("flush ack");
            i += 1;
        }
    });
}

#[test]
fn acknowledged_writes_survive_kill9() {
    if let Some(db) = std::env::var_os(CHILD_ENV) {
        child(Path::new(&db));
        return;
    }

    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("store.db");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([TEST_NAME, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, &db)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();

    let mut acked: Vec<(u64, u64)> = Vec::new();
    let parse = |line: &str, acked: &mut Vec<(u64, u64)>| {
        // libtest may print "test <name> ... " on the same line before the first ack.
        if let Some(at) = line.find("ACK ") {
            let (i, rev) = line[at + 4..].split_once(' ').unwrap();
            acked.push((i.parse().unwrap(), rev.parse().unwrap()));
        }
    };
    while acked.len() < ACKS_BEFORE_KILL {
        let line = lines
            .next()
            .expect("child ended before enough writes")
            .unwrap();
        parse(&line, &mut acked);
    }
    child.kill().unwrap(); // SIGKILL
    let status = child.wait().unwrap();
    assert!(!status.success(), "child was killed: {status:?}");
    // Acknowledgements already in the pipe count too.
    for line in lines {
        parse(&line.unwrap(), &mut acked);
    }

    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let store = SqliteStore::open(&db).unwrap();
        let revision = store.revision().await.unwrap();
        assert!(
            revision >= acked.len() as u64,
            "revision {revision} < {} acked",
            acked.len()
        );
        for (n, &(i, rev)) in acked.iter().enumerate() {
            assert_eq!(i, n as u64, "acks are in order");
            assert_eq!(rev, n as u64 + 1, "one revision per write");
            let kv = store
                .get(&format!("/kill9/{i:08}"))
                .await
                .unwrap()
                .unwrap_or_else(|| panic!("acknowledged key {i} lost"));
            assert_eq!(kv.value, value_of(i));
            assert_eq!(kv.mod_revision, rev);
        }
        // Nothing beyond the revision, and the store is consistent and writable.
        let (kvs, list_revision) = store.list("/kill9/").await.unwrap();
        assert_eq!(list_revision, revision);
        assert_eq!(kvs.len() as u64, revision, "one key per committed write");
        assert!(kvs.iter().all(|kv| kv.mod_revision <= revision));
        let mut watch = store.watch("/kill9/", 1).await.unwrap();
        for expected in 1..=revision {
            let event = watch.next().await.unwrap().unwrap();
            assert_eq!(event.revision(), expected);
        }
        assert_eq!(store.put("/after", vec![]).await.unwrap(), revision + 1);
    });
}

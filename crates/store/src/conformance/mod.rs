//! The conformance suite: what every [`KvStore`] backend must do, written against the trait
//! only, so that another backend (etcd) runs it unchanged.
//!
//! Each case takes a fresh, empty store and panics on a violation. [`run_all`] runs every case
//! in [`CASES`], each on a store from `make`. Cases spawn tokio tasks (call them from a tokio
//! runtime, preferably a multi-threaded one) and wait on events with a deadline, never on
//! fixed sleeps.

mod guarded;
mod kv;
mod watch;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;

use crate::{Event, EventKind, KvStore, Revision, StoreError, Watch};

pub use guarded::Guarded;
pub use kv::*;
pub use watch::*;

/// A conformance case, boxed so that cases can be listed.
pub type CaseFn = fn(Arc<dyn KvStore>) -> BoxFuture<'static, ()>;

macro_rules! cases {
    ($($name:ident),* $(,)?) => {
        /// Every case, by name.
        pub const CASES: &[(&str, CaseFn)] = &[
            $((stringify!($name), |store| Box::pin($name(store)))),*
        ];
    };
}

/// Calls `$callback!` with the name of every case, in order: a backend's test file makes one
/// test per case from it (`firefleet_store::conformance_cases!(my_tests);`), and [`CASES`] is
/// made from it too, so a new case cannot be left out.
#[macro_export]
macro_rules! conformance_cases {
    ($callback:ident) => {
        $callback![
            revision_counts_writes,
            get_put_list_prefix,
            key_revisions_and_version,
            cas_success_and_conflict,
            cas_create_only,
            delete_semantics,
            txn_success_applies_all_at_one_revision,
            txn_failure_applies_failure_ops_only,
            invalid_input_rejected_store_unchanged,
            concurrent_cas_one_winner_per_round,
            concurrent_increments_lose_nothing,
            watch_replays_history_then_goes_live,
            watch_from_current_gets_only_new,
            watch_filters_by_prefix,
            watch_delete_events,
            watch_compacted_errors,
            watch_pages_through_large_history,
            watch_during_writes_has_no_gaps,
        ];
    };
}

conformance_cases!(cases);

/// Runs every case in [`CASES`], each against a fresh store from `make`.
pub async fn run_all<F, Fut>(make: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn KvStore>>,
{
    for (name, case) in CASES {
        eprintln!("conformance case {name}");
        case(make().await).await;
    }
}

/// How long a case waits for an expected event.
pub const EVENT_DEADLINE: Duration = Duration::from_secs(20);

/// The next event of `watch`; panics on an error, the end of the stream, or no event within
/// [`EVENT_DEADLINE`].
pub async fn next_event(watch: &mut Watch) -> Event {
    match tokio::time::timeout(EVENT_DEADLINE, watch.next()).await {
        Ok(Some(Ok(event))) => event,
        Ok(Some(Err(err))) => panic!("watch failed: {err}"),
        Ok(None) => panic!("watch ended"),
        Err(_) => panic!("no watch event within {EVENT_DEADLINE:?}"),
    }
}

/// Asserts `event` is a put of `key` = `value` at `revision`.
pub fn assert_put(event: &Event, key: &str, value: &[u8], revision: Revision) {
    assert_eq!(event.kind, EventKind::Put, "{event:?}");
    assert_eq!(event.kv.key, key, "{event:?}");
    assert_eq!(event.kv.value, value, "{event:?}");
    assert_eq!(event.kv.mod_revision, revision, "{event:?}");
}

/// Asserts `event` is a delete of `key` at `revision`.
pub fn assert_delete(event: &Event, key: &str, revision: Revision) {
    assert_eq!(event.kind, EventKind::Delete, "{event:?}");
    assert_eq!(event.kv.key, key, "{event:?}");
    assert!(event.kv.value.is_empty(), "{event:?}");
    assert_eq!(event.kv.mod_revision, revision, "{event:?}");
}

/// Unwraps a store result, naming the operation on failure.
pub fn ok<T>(result: Result<T, StoreError>, what: &str) -> T {
    match result {
        Ok(value) => value,
        Err(err) => panic!("{what} failed: {err} ({err:?})"),
    }
}

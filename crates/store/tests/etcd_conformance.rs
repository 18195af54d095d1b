//! The conformance suite against etcd, unchanged: every case on its own single member and on
//! its own three-member cluster (a case counts revisions from 0, so it needs an etcd of its
//! own).

mod etcd;

use std::sync::Arc;

use etcd::ClusterStore;
use firefleet_store::conformance;
use firefleet_store::KvStore;

async fn single() -> Arc<dyn KvStore> {
    Arc::new(ClusterStore::start(1).await)
}

async fn three() -> Arc<dyn KvStore> {
    Arc::new(ClusterStore::start(3).await)
}

macro_rules! conformance_tests {
    ($($case:ident),* $(,)?) => {
        mod single_member {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $case() {
                    firefleet_store::conformance::$case(super::single().await).await;
                }
            )*
        }

        mod three_members {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $case() {
                    firefleet_store::conformance::$case(super::three().await).await;
                }
            )*
        }

        #[test]
        fn every_case_has_a_test() {
            let tested = [$(stringify!($case)),*];
            let all: Vec<&str> = conformance::CASES.iter().map(|(name, _)| *name).collect();
            assert_eq!(all, tested);
        }
    };
}

conformance_tests![
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

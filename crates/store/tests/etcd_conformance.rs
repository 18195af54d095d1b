//! The conformance suite against etcd, unchanged: every case on its own single member and on
//! its own three-member cluster (a case counts revisions from 0, so it needs an etcd of its
//! own).

mod etcd;

use std::sync::Arc;

use firefleet_store::KvStore;

async fn single() -> Arc<dyn KvStore> {
    Arc::new(etcd::cluster_store(1).await)
}

async fn three() -> Arc<dyn KvStore> {
    Arc::new(etcd::cluster_store(3).await)
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

    };
}

firefleet_store::conformance_cases!(conformance_tests);

//! The control plane's replicas: who this replica is, who leads, and the status and metrics
//! of it. The leadership itself is won and lost in `controllers::leader`; this module only
//! records what that loop reports and answers questions about it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use firefleet_api::{ClusterStatus, LeaderInfo, ReplicaInfo};
use firefleet_store::election::{Candidate, Election};
use firefleet_store::Revision;
use tokio::sync::watch;

use crate::{ApiError, AppState};

/// This replica's place in the control plane.
pub(crate) struct Cluster {
    /// Its id and advertised URL.
    pub me: Candidate,
    /// `sqlite` or `etcd`.
    pub store_kind: &'static str,
    /// The election every replica takes part in.
    pub election: Arc<dyn Election>,
    /// HTTPS client presenting this replica's certificate, for forwarding to the leader.
    pub peer: reqwest::Client,
    /// The term this replica leads in, `None` while it does not.
    term: watch::Sender<Option<Revision>>,
    /// Times this replica took the leadership.
    won: AtomicU64,
    /// Times it lost (or gave up) the leadership.
    lost: AtomicU64,
}

impl Cluster {
    pub(crate) fn new(
        me: Candidate,
        store_kind: &'static str,
        election: Arc<dyn Election>,
        peer: reqwest::Client,
    ) -> Self {
        Self {
            me,
            store_kind,
            election,
            peer,
            term: watch::channel(None).0,
            won: AtomicU64::new(0),
            lost: AtomicU64::new(0),
        }
    }

    /// Whether this is the only replica there can be (SQLite: it leads from the start, and
    /// nothing is forwarded or followed).
    pub(crate) fn single_replica(&self) -> bool {
        self.store_kind == "sqlite"
    }

    /// Records that this replica now leads in `term`.
    pub(crate) fn took(&self, term: Revision) {
        self.won.fetch_add(1, Ordering::Relaxed);
        self.term.send_replace(Some(term));
    }

    /// Records that this replica no longer leads.
    pub(crate) fn stepped_down(&self) {
        if self.term.send_replace(None).is_some() {
            self.lost.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The term this replica leads in, if it does.
    pub(crate) fn term(&self) -> Option<Revision> {
        *self.term.borrow()
    }

    /// Renders the leadership gauges and counters.
    pub(crate) fn render(&self, out: &mut String) {
        use std::fmt::Write;
        let id = crate::metrics::escape(&self.me.id);
        let _ = writeln!(
            out,
            "# HELP firefleet_cluster_leader Whether this replica leads (runs the controllers).\n\
             # TYPE firefleet_cluster_leader gauge\n\
             firefleet_cluster_leader{{replica=\"{id}\"}} {}",
            u8::from(self.term().is_some())
        );
        let _ = writeln!(
            out,
            "# HELP firefleet_cluster_leader_term The term this replica leads in (0: it does not).\n\
             # TYPE firefleet_cluster_leader_term gauge\n\
             firefleet_cluster_leader_term{{replica=\"{id}\"}} {}",
            self.term().unwrap_or(0)
        );
        let _ = writeln!(
            out,
            "# HELP firefleet_cluster_leadership_changes_total Leaderships this replica took and lost.\n\
             # TYPE firefleet_cluster_leadership_changes_total counter\n\
             firefleet_cluster_leadership_changes_total{{replica=\"{id}\",change=\"took\"}} {}\n\
             firefleet_cluster_leadership_changes_total{{replica=\"{id}\",change=\"lost\"}} {}",
            self.won.load(Ordering::Relaxed),
            self.lost.load(Ordering::Relaxed)
        );
    }
}

/// The replicas and the leader, as the store says now.
pub(crate) async fn status(state: &AppState) -> Result<ClusterStatus, ApiError> {
    let cluster = &state.cluster;
    let revision = state.store.revision().await?;
    let leader = cluster.election.leader().await?.map(|l| LeaderInfo {
        id: l.id,
        address: l.address,
        term: l.term,
        since_ms: l.since_ms,
    });
    let mut replicas: Vec<ReplicaInfo> = cluster
        .election
        .replicas()
        .await?
        .into_iter()
        .map(|r| ReplicaInfo {
            leader: leader.as_ref().is_some_and(|l| l.id == r.id),
            id: r.id,
            address: r.address,
        })
        .collect();
    replicas.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(ClusterStatus {
        replica: cluster.me.id.clone(),
        store: cluster.store_kind.to_owned(),
        revision,
        leader,
        replicas,
    })
}

/// Where a call that needs the leader's memory goes: `None` to serve it here (this replica
/// leads, or is the only one), else the leader's URL. `not_leader` when no replica leads now,
/// or when the call was already forwarded once (one hop at most) and this replica does not
/// lead.
pub(crate) async fn leader_to_forward_to(
    state: &AppState,
    forwarded: bool,
) -> Result<Option<String>, ApiError> {
    let cluster = &state.cluster;
    if cluster.single_replica() || cluster.term().is_some() {
        return Ok(None);
    }
    let refuse = |why: String| {
        ApiError::NotLeader(format!(
            "replica {} does not lead and this call is served by the leader: {why}; retry on another replica",
            cluster.me.id
        ))
    };
    if forwarded {
        return Err(refuse("it was forwarded here already".to_owned()));
    }
    match cluster.election.leader().await {
        Ok(Some(l)) if l.id != cluster.me.id => Ok(Some(l.address)),
        Ok(Some(_)) => Err(refuse("its leadership is changing".to_owned())),
        Ok(None) => Err(refuse("no replica leads now".to_owned())),
        Err(e) => Err(ApiError::Store(e)),
    }
}

//! Nodes' enrolment, certificates and removal.
//!
//! A node's record (`/nodes/<name>`) and its certificate record (`/nodecerts/<name>`,
//! [`NodeCertRecord`]: the serial of its current certificate) are written together when it
//! enrols and deleted together when an admin removes it. Every agent request is let in only
//! with the current certificate (or, until that one is first used, the one it superseded by a
//! renewal: see [`NodeCertRecord::previous`]), so a re-enrolment or renewal revokes the older
//! certificates and a removal revokes them all.
//!
//! Join tokens are one-time; one bound to a node name (`node`) enrols only that name, and only
//! such a token re-enrols a name that exists (an agent that lost its disk): any other token is
//! refused (409) for a name that is taken, so no one takes a node over by enrolling its name.

use std::time::Duration;

use firefleet_api::JoinTokenResponse;
use firefleet_store::{Compare, Op, StoreError};
use firefleet_types::{NodeId, NodeInfo, Vm};
use serde::{Deserialize, Serialize};

use super::{
    encode, get_json, hash_secret, list_json, node_key, random_secret, Db, RepoError, NODE_RECORDS,
};

/// How often a transaction that lost a race is tried again before giving up (409).
const TRIES: usize = 16;
/// Prefix of the node certificate records.
const NODE_CERTS: &str = "/nodecerts/";

/// A stored join token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JoinTokenRecord {
    /// Expiry.
    pub expires_ms: u64,
    /// The only node name it enrols (and may re-enrol); none: any name not taken.
    #[serde(default)]
    pub node: Option<NodeId>,
    /// The cordon it gives the node; none: a new node uncordoned, a re-enrolled one as it was.
    #[serde(default)]
    pub cordon: Option<bool>,
}

/// Which certificates of a node are accepted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeCertRecord {
    /// Serial (lowercase hex) of the node's current certificate.
    pub current: String,
    /// The certificate a renewal superseded, still accepted until `current` is first used: an
    /// agent that crashed between the renewal's answer and writing the new certificate to disk
    /// comes back with this one (and renews again). Cleared by the first request with
    /// `current`. Never set by an enrolment.
    #[serde(default)]
    pub previous: Option<String>,
    /// When `current` expires (Unix ms).
    pub not_after_ms: u64,
}

/// What [`check_node_cert`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertStanding {
    /// The node's current certificate.
    Current,
    /// The certificate a renewal superseded, its successor not used yet.
    Previous,
}

pub(crate) fn node_cert_key(id: &NodeId) -> String {
    format!("{NODE_CERTS}{id}")
}

fn join_token_key(token: &str) -> String {
    format!("/jointokens/{}", hash_secret(token))
}

/// Creates a one-time join token, bound to `node` if given, valid for `ttl` from `now_ms`.
pub async fn create_join_token(
    db: &impl Db,
    now_ms: u64,
    ttl: Duration,
    node: Option<NodeId>,
    cordon: Option<bool>,
) -> Result<JoinTokenResponse, RepoError> {
    let token = random_secret("ffj");
    let expires_ms = now_ms + ttl.as_millis() as u64;
    let rec = JoinTokenRecord {
        expires_ms,
        node: node.clone(),
        cordon,
    };
    db.store()
        .compare_and_swap(&join_token_key(&token), 0, encode(&rec)?)
        .await?;
    Ok(JoinTokenResponse {
        token,
        expires_ms,
        node,
    })
}

/// A node asking to enrol: its name, the labels its agent gives, and the certificate it was
/// issued (not valid until this enrolment is stored).
#[derive(Debug, Clone)]
pub struct Enrolment {
    /// The node's name.
    pub node: NodeId,
    /// Its labels (the agent's: every heartbeat sends them again).
    pub labels: firefleet_types::Labels,
    /// Serial of the certificate issued for it.
    pub serial: String,
    /// When that certificate expires (Unix ms).
    pub not_after_ms: u64,
}

/// How an enrolment went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enrolled {
    /// A name that was not enrolled.
    New,
    /// A name that was (with a join token bound to it): the old certificates are revoked.
    Again,
}

/// Consumes a join token (once) and records the node and its certificate in the same
/// transaction.
///
/// Refused: a token that is unknown, expired or used (401); one bound to another name (403); a
/// name that is enrolled, unless the token is bound to it (409, saying how to re-enrol). A
/// re-enrolment keeps what the admin set (the cordon, unless the token sets it) and the node's
/// status until its next heartbeat; the labels are the agent's, as on every heartbeat.
///
/// `now_ms`: the time of the enrolment (the token's expiry is checked against it, and the node
/// is recorded as enrolled then).
pub async fn enroll_node(
    db: &impl Db,
    now_ms: u64,
    join_token: &str,
    enrolment: &Enrolment,
) -> Result<Enrolled, RepoError> {
    let key = join_token_key(join_token);
    let name = &enrolment.node;
    let invalid =
        || RepoError::Unauthorized("join token is invalid, expired or already used".to_owned());
    for _ in 0..TRIES {
        let Some((token, token_rev)) = get_json::<JoinTokenRecord>(db, &key).await? else {
            return Err(invalid());
        };
        if token.expires_ms < now_ms {
            let _ = db.store().delete(&key, Some(token_rev)).await;
            return Err(invalid());
        }
        if let Some(bound) = token.node.as_ref().filter(|bound| *bound != name) {
            return Err(RepoError::Forbidden(format!(
                "this join token can only enrol node {bound}, not {name}"
            )));
        }
        let existing = get_json::<NodeInfo>(db, &node_key(name)).await?;
        let (node, node_compare, outcome) = match existing {
            Some((old, rev)) => {
                if token.node.is_none() {
                    tracing::warn!(node = %name, "enrolment refused: the name is taken");
                    return Err(RepoError::Conflict(format!(
                        "node {name} is already enrolled; to enrol it again (an agent that lost \
                         its data directory), use a join token made for it \
                         (`firefleet join-token create --node {name}`), or remove the node \
                         first (`firefleet node rm {name}`)"
                    )));
                }
                let node = NodeInfo {
                    labels: enrolment.labels.clone(),
                    cordoned: token.cordon.unwrap_or(old.cordoned),
                    enrolled_ms: now_ms,
                    ..old
                };
                let compare = Compare::ModRevision {
                    key: node_key(name),
                    equals: rev,
                };
                (node, compare, Enrolled::Again)
            }
            None => {
                let node = NodeInfo {
                    id: name.clone(),
                    labels: enrolment.labels.clone(),
                    cordoned: token.cordon.unwrap_or(false),
                    enrolled_ms: now_ms,
                    status: firefleet_types::node::NodeStatus {
                        readiness: firefleet_types::node::NodeReadiness::NotReady,
                        last_heartbeat_ms: 0,
                        facts: None,
                    },
                };
                let compare = Compare::Absent {
                    key: node_key(name),
                };
                (node, compare, Enrolled::New)
            }
        };
        let cert = NodeCertRecord {
            current: enrolment.serial.clone(),
            previous: None,
            not_after_ms: enrolment.not_after_ms,
        };
        let resp = db
            .store()
            .txn(
                vec![
                    Compare::ModRevision {
                        key: key.clone(),
                        equals: token_rev,
                    },
                    node_compare,
                ],
                vec![
                    Op::Delete { key: key.clone() },
                    Op::Put {
                        key: node_key(name),
                        value: encode(&node)?,
                    },
                    Op::Put {
                        key: node_cert_key(name),
                        value: encode(&cert)?,
                    },
                ],
                vec![],
            )
            .await?;
        if resp.succeeded {
            return Ok(outcome);
        }
        // The token was used meanwhile (the next read says so), or the node record changed (a
        // heartbeat of the old agent): read again.
    }
    Err(RepoError::Conflict(format!(
        "node {name} kept changing during its enrolment; try again"
    )))
}

/// Whether `serial` is a certificate node `id` may use now. A node enrolled before certificates
/// were recorded has its first certificate seen adopted as the current one.
pub async fn check_node_cert(
    db: &impl Db,
    id: &NodeId,
    serial: &str,
) -> Result<CertStanding, RepoError> {
    let revoked = || {
        RepoError::Unauthorized(format!(
            "this certificate of node {id} was superseded or revoked; enrol the node again with \
             a join token made for it (`firefleet join-token create --node {id}`)"
        ))
    };
    let key = node_cert_key(id);
    let Some((rec, rev)) = get_json::<NodeCertRecord>(db, &key).await? else {
        let Some((_, node_rev)) = get_json::<NodeInfo>(db, &node_key(id)).await? else {
            return Err(RepoError::Forbidden(format!(
                "node {id} is not enrolled (or was removed)"
            )));
        };
        let rec = NodeCertRecord {
            current: serial.to_owned(),
            previous: None,
            not_after_ms: 0,
        };
        let resp = db
            .store()
            .txn(
                vec![
                    Compare::Absent { key: key.clone() },
                    Compare::ModRevision {
                        key: node_key(id),
                        equals: node_rev,
                    },
                ],
                vec![Op::Put {
                    key,
                    value: encode(&rec)?,
                }],
                vec![],
            )
            .await?;
        if !resp.succeeded {
            return Err(RepoError::Unauthorized(format!(
                "node {id} changed while its certificate was checked; try again"
            )));
        }
        tracing::warn!(node = %id, %serial, "adopted the certificate of a node enrolled before certificates were recorded");
        return Ok(CertStanding::Current);
    };
    if rec.current == serial {
        if rec.previous.is_some() {
            // The renewed certificate is in use: the one it replaced is revoked from now on.
            let cleared = NodeCertRecord {
                previous: None,
                ..rec
            };
            match db
                .store()
                .compare_and_swap(&key, rev, encode(&cleared)?)
                .await
            {
                Ok(_) | Err(StoreError::Conflict { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        return Ok(CertStanding::Current);
    }
    if rec.previous.as_deref() == Some(serial) {
        return Ok(CertStanding::Previous);
    }
    Err(revoked())
}

/// Makes the certificate `serial` (issued by a renewal asked for with the certificate
/// `presented`) node `id`'s current one; `presented` stays accepted until `serial` is first
/// used. Refused (401) when `presented` is no longer accepted (revoked meanwhile).
pub async fn renew_node_cert(
    db: &impl Db,
    id: &NodeId,
    presented: &str,
    serial: &str,
    not_after_ms: u64,
) -> Result<(), RepoError> {
    let key = node_cert_key(id);
    for _ in 0..TRIES {
        let Some((rec, rev)) = get_json::<NodeCertRecord>(db, &key).await? else {
            return Err(RepoError::Forbidden(format!(
                "node {id} is not enrolled (or was removed)"
            )));
        };
        if rec.current != presented && rec.previous.as_deref() != Some(presented) {
            return Err(RepoError::Unauthorized(format!(
                "this certificate of node {id} was superseded or revoked"
            )));
        }
        let next = NodeCertRecord {
            current: serial.to_owned(),
            previous: Some(presented.to_owned()),
            not_after_ms,
        };
        match db.store().compare_and_swap(&key, rev, encode(&next)?).await {
            Ok(_) => return Ok(()),
            Err(StoreError::Conflict { .. }) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(RepoError::Conflict(format!(
        "the certificate record of node {id} kept changing; try again"
    )))
}

/// Removes node `id` (admin): its record, its certificate record (so every certificate it was
/// issued is refused from then on) and its compliance record, in one transaction. Refused
/// (409) while VMs are placed on it or migrations involve it: drain it or delete them first.
pub async fn remove_node(db: &impl Db, id: &NodeId) -> Result<NodeInfo, RepoError> {
    for _ in 0..TRIES {
        let Some((node, rev)) = get_json::<NodeInfo>(db, &node_key(id)).await? else {
            return Err(RepoError::not_found("node", id.as_str()));
        };
        let (vms, _) = list_json::<Vm>(db, "/vms/").await?;
        let placed: Vec<String> = vms
            .iter()
            .filter(|vm| vm.status.node.as_ref() == Some(id))
            .map(|vm| format!("{} ({}/{})", vm.id, vm.spec.tenant, vm.spec.name))
            .collect();
        if !placed.is_empty() {
            let shown = placed
                .iter()
                .take(10)
                .cloned()
                .collect::<Vec<_>>()
                .join(", ");
            let more = placed.len().saturating_sub(10);
            let more = if more > 0 {
                format!(" and {more} more")
            } else {
                String::new()
            };
            return Err(RepoError::Conflict(format!(
                "node {id} still holds {} VM(s): {shown}{more}; drain it (`firefleet node drain \
                 {id}`) or delete them first",
                placed.len()
            )));
        }
        let (migrations, _) = list_json::<firefleet_types::Migration>(db, "/migrations/").await?;
        if let Some(m) = migrations
            .iter()
            .find(|m| !m.phase.is_terminal() && (&m.from == id || &m.to == id))
        {
            return Err(RepoError::Conflict(format!(
                "node {id} takes part in the migration of VM {}; wait for it to end",
                m.vm
            )));
        }
        let resp = db
            .store()
            .txn(
                vec![Compare::ModRevision {
                    key: node_key(id),
                    equals: rev,
                }],
                vec![
                    Op::Delete { key: node_key(id) },
                    Op::Delete {
                        key: node_cert_key(id),
                    },
                    Op::Delete {
                        key: format!("{}{id}", NODE_RECORDS),
                    },
                ],
                vec![],
            )
            .await?;
        if resp.succeeded {
            return Ok(node);
        }
    }
    Err(RepoError::Conflict(format!(
        "node {id} kept changing during its removal; try again"
    )))
}

/// Applies `f` to a node with compare-and-swap.
pub async fn update_node<F>(db: &impl Db, id: &NodeId, mut f: F) -> Result<NodeInfo, RepoError>
where
    F: FnMut(&mut NodeInfo) -> bool,
{
    loop {
        let Some((mut node, rev)) = get_json::<NodeInfo>(db, &node_key(id)).await? else {
            return Err(RepoError::not_found("node", id.as_str()));
        };
        if !f(&mut node) {
            return Ok(node);
        }
        match db
            .store()
            .compare_and_swap(&node_key(id), rev, encode(&node)?)
            .await
        {
            Ok(_) => return Ok(node),
            Err(StoreError::Conflict { .. }) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

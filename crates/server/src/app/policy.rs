//! Policies in force: the stored policy set (`/policies/<name>`, versioned by `/policy-head`),
//! compiled once per version; tenants' attributes (`/tenants/<id>`); admission of VM and
//! function specs; and the compliance records (`/compliance/{vm,node}/<id>`) the admission and
//! the compliance controller write.
//!
//! The first start installs the built-in bundle (`policies/`) as version 1. Every apply or
//! removal makes a new set version, in one transaction with the policy's record, after the
//! whole new set compiled: the store never holds a set that does not compile.

use std::sync::Arc;

use firefleet_api::{
    ApplyPolicyRequest, ComplianceControl, ComplianceRecord, PolicyRecord, PolicyViolation,
    TenantRecord,
};
use firefleet_policy::{Evaluation, Mode, PolicyDoc, PolicySet};
use firefleet_store::{Compare, Op};
use firefleet_types::{NodeInfo, TenantId, VmSpec};
use serde::{Deserialize, Serialize};
use sha2::Digest;

use crate::{now_ms, repo, ApiError, AppState};

const HEAD: &str = "/policy-head";
const POLICIES: &str = "/policies/";
const TENANTS: &str = "/tenants/";
const TRIES: usize = 8;

/// The policy set's version.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct Head {
    version: u64,
}

/// A compliance record with the digest of the input it was evaluated on (a changed spec or
/// changed facts make it stale as surely as a new policy version).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredRecord {
    /// The record.
    pub record: ComplianceRecord,
    /// sha256 of the evaluated input.
    pub input_digest: String,
}

/// The compiled set of one version, shared by admission and the compliance controller.
#[derive(Default)]
pub struct Policies {
    compiled: std::sync::Mutex<Option<(u64, PolicySet)>>,
}

impl Policies {
    fn cached(&self, version: u64) -> Option<PolicySet> {
        let guard = self.compiled.lock().ok()?;
        guard
            .as_ref()
            .filter(|(v, _)| *v == version)
            .map(|(_, s)| s.clone())
    }

    fn store(&self, version: u64, set: &PolicySet) {
        if let Ok(mut guard) = self.compiled.lock() {
            *guard = Some((version, set.clone()));
        }
    }
}

fn policy_key(name: &str) -> String {
    format!("{POLICIES}{name}")
}

fn doc(r: &PolicyRecord) -> Result<PolicyDoc, ApiError> {
    Ok(PolicyDoc {
        name: r.name.clone(),
        source: r.source.clone(),
        mode: Some(parse_mode(&r.mode)?),
    })
}

fn parse_mode(s: &str) -> Result<Mode, ApiError> {
    s.parse::<Mode>().map_err(|e| ApiError::BadRequest {
        message: e.to_string(),
        field: Some("mode".to_owned()),
    })
}

fn policy_error(e: firefleet_policy::PolicyError) -> ApiError {
    ApiError::BadRequest {
        message: e.to_string(),
        field: Some("source".to_owned()),
    }
}

/// Installs the built-in bundle as version 1 on the first start (nothing when a set exists).
pub async fn install_builtin(state: &AppState) -> Result<(), ApiError> {
    if state.store.get(HEAD).await?.is_some() {
        return Ok(());
    }
    let docs = firefleet_policy::builtin();
    let set = PolicySet::compile(&docs).map_err(|e| ApiError::Internal(e.to_string()))?;
    let now = now_ms();
    let mut ops = vec![Op::Put {
        key: HEAD.to_owned(),
        value: repo::encode(&Head { version: 1 })?,
    }];
    for info in set.policies() {
        let source = docs
            .iter()
            .find(|d| d.name == info.name)
            .map(|d| d.source.clone())
            .unwrap_or_default();
        ops.push(Op::Put {
            key: policy_key(&info.name),
            value: repo::encode(&PolicyRecord {
                name: info.name.clone(),
                kind: info.kind.to_string(),
                package: info.package.clone(),
                mode: info.mode.to_string(),
                version: 1,
                set_version: 1,
                source,
                builtin: true,
                tests: info.tests.clone(),
                applied_ms: now,
            })?,
        });
    }
    state
        .store
        .txn(
            vec![Compare::Absent {
                key: HEAD.to_owned(),
            }],
            ops,
            vec![],
        )
        .await?;
    Ok(())
}

/// Every stored policy, by name, and the set version.
pub async fn list(state: &AppState) -> Result<(u64, Vec<PolicyRecord>), ApiError> {
    let (records, _) = repo::list_json::<PolicyRecord>(state, POLICIES).await?;
    Ok((version(state).await?, records))
}

/// The policy set's version (0 before the built-in bundle is installed).
pub async fn version(state: &AppState) -> Result<u64, ApiError> {
    Ok(head(state).await?.map_or(0, |(h, _)| h.version))
}

async fn head(state: &AppState) -> Result<Option<(Head, firefleet_store::Revision)>, ApiError> {
    Ok(repo::get_json::<Head>(state, HEAD).await?)
}

/// The set in force and its version (compiled once per version).
pub async fn current(state: &AppState) -> Result<(u64, PolicySet), ApiError> {
    for _ in 0..TRIES {
        let version = version(state).await?;
        if let Some(set) = state.policies.cached(version) {
            return Ok((version, set));
        }
        let (records, _) = repo::list_json::<PolicyRecord>(state, POLICIES).await?;
        // The records must be those of `version`: re-read the head after listing.
        if self::version(state).await? != version {
            continue;
        }
        let docs = records.iter().map(doc).collect::<Result<Vec<_>, _>>()?;
        let set = off_async(move || PolicySet::compile(&docs))
            .await?
            .map_err(|e| ApiError::Internal(format!("the stored policy set: {e}")))?;
        state.policies.store(version, &set);
        return Ok((version, set));
    }
    Err(ApiError::Internal(
        "the policy set kept changing while it was read".to_owned(),
    ))
}

/// Adds or replaces a policy: checked alone and with the rest of the set, then stored with a
/// new set version.
pub async fn apply(state: &AppState, req: &ApplyPolicyRequest) -> Result<PolicyRecord, ApiError> {
    let mode = req.mode.as_deref().map(parse_mode).transpose()?;
    if req.name.is_empty()
        || req.name.len() > 128
        || !req
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c))
        || req.name.starts_with('/')
        || req.name.contains("..")
    {
        return Err(ApiError::BadRequest {
            message: format!(
                "invalid policy name {:?}: 1-128 characters of letters, digits, `-_./`",
                req.name
            ),
            field: Some("name".to_owned()),
        });
    }
    let new_doc = PolicyDoc {
        name: req.name.clone(),
        source: req.source.clone(),
        mode,
    };
    let info = firefleet_policy::inspect(&new_doc).map_err(policy_error)?;
    change(state, &req.name, Some((new_doc, info)))
        .await?
        .ok_or_else(|| ApiError::Internal("a policy apply stored nothing".to_owned()))
}

/// Removes a policy (a new set version).
pub async fn remove(state: &AppState, name: &str) -> Result<(), ApiError> {
    change(state, name, None).await.map(|_| ())
}

async fn change(
    state: &AppState,
    name: &str,
    new: Option<(PolicyDoc, firefleet_policy::PolicyInfo)>,
) -> Result<Option<PolicyRecord>, ApiError> {
    for _ in 0..TRIES {
        let Some((h, head_rev)) = head(state).await? else {
            install_builtin(state).await?;
            continue;
        };
        let (records, _) = repo::list_json::<PolicyRecord>(state, POLICIES).await?;
        let old = records.iter().find(|r| r.name == name);
        if new.is_none() && old.is_none() {
            return Err(ApiError::not_found("policy", name));
        }
        let mut docs = records
            .iter()
            .filter(|r| r.name != name)
            .map(doc)
            .collect::<Result<Vec<_>, _>>()?;
        if let Some((d, _)) = &new {
            docs.push(d.clone());
        }
        off_async(move || PolicySet::compile(&docs).map(drop))
            .await?
            .map_err(policy_error)?;
        let version = h.version + 1;
        let mut ops = vec![Op::Put {
            key: HEAD.to_owned(),
            value: repo::encode(&Head { version })?,
        }];
        let record = new.as_ref().map(|(d, info)| PolicyRecord {
            name: name.to_owned(),
            kind: info.kind.to_string(),
            package: info.package.clone(),
            mode: info.mode.to_string(),
            version: old.map_or(1, |o| o.version + 1),
            set_version: version,
            source: d.source.clone(),
            builtin: false,
            tests: info.tests.clone(),
            applied_ms: now_ms(),
        });
        match &record {
            Some(r) => ops.push(Op::Put {
                key: policy_key(name),
                value: repo::encode(r)?,
            }),
            None => ops.push(Op::Delete {
                key: policy_key(name),
            }),
        }
        let resp = state
            .store
            .txn(
                vec![Compare::ModRevision {
                    key: HEAD.to_owned(),
                    equals: head_rev,
                }],
                ops,
                vec![],
            )
            .await?;
        if resp.succeeded {
            state.kick.notify_waiters();
            return Ok(record);
        }
    }
    Err(ApiError::Conflict(
        "the policy set kept changing; try again".to_owned(),
    ))
}

/// A tenant's attributes (`standard` class, no residency, when never set).
pub async fn tenant(state: &AppState, id: &TenantId) -> Result<TenantRecord, ApiError> {
    Ok(
        repo::get_json::<TenantRecord>(state, &format!("{TENANTS}{id}"))
            .await?
            .map(|(t, _)| t)
            .unwrap_or_else(|| TenantRecord {
                id: id.to_string(),
                class: "standard".to_owned(),
                regions: Vec::new(),
                quota: None,
            }),
    )
}

/// Sets a tenant's attributes.
pub async fn put_tenant(state: &AppState, t: &TenantRecord) -> Result<(), ApiError> {
    let id: TenantId = t.id.parse().map_err(ApiError::Validation)?;
    firefleet_types::validate::check_name("class", &t.class)?;
    for (i, r) in t.regions.iter().enumerate() {
        firefleet_types::validate::check_name(&format!("regions[{i}]"), r)?;
    }
    state
        .store
        .put(&format!("{TENANTS}{id}"), repo::encode(t)?)
        .await?;
    state.kick.notify_waiters();
    Ok(())
}

/// Every tenant with attributes set.
pub async fn tenants(state: &AppState) -> Result<Vec<TenantRecord>, ApiError> {
    Ok(repo::list_json::<TenantRecord>(state, TENANTS).await?.0)
}

/// What admission decided about one spec.
pub struct Admission {
    /// The record to store with the object.
    pub record: StoredRecord,
    /// Messages of violated policies in `deny` mode (refused when not empty).
    pub denied: Vec<String>,
    /// Messages of violated policies in `warn` mode.
    pub warnings: Vec<String>,
    /// Messages of violated policies in `audit` mode.
    pub audited: Vec<String>,
}

/// The digest an input's record is kept with.
pub fn digest(input: &serde_json::Value) -> String {
    hex::encode(sha2::Sha256::digest(input.to_string().as_bytes()))
}

/// The admission input of a VM spec.
pub async fn vm_input(state: &AppState, spec: &VmSpec) -> Result<serde_json::Value, ApiError> {
    let tenant = tenant(state, &spec.tenant).await?;
    Ok(serde_json::json!({ "vm": spec, "tenant": tenant }))
}

fn record_from(
    kind: &str,
    subject: String,
    name: String,
    tenant: Option<String>,
    version: u64,
    eval: &Evaluation,
) -> ComplianceRecord {
    let mut violations = Vec::new();
    let mut controls = Vec::new();
    for r in &eval.results {
        for m in &r.violations {
            violations.push(PolicyViolation {
                policy: r.policy.clone(),
                mode: r.mode.to_string(),
                message: m.clone(),
            });
        }
        for c in &r.controls {
            controls.push(ComplianceControl {
                policy: r.policy.clone(),
                id: c.id.clone(),
                name: c.name.clone(),
                passed: c.passed,
                evidence: c.evidence.clone(),
            });
        }
    }
    ComplianceRecord {
        kind: kind.to_owned(),
        subject,
        name,
        tenant,
        policy_version: version,
        passed: !eval.denied(),
        violations,
        controls,
        evaluated_ms: now_ms(),
        remediation: None,
    }
}

/// Evaluates a VM spec (`id`: the VM's, or empty before it has one) against the admission
/// policies of `set` at `version`.
pub fn evaluate_vm(
    set: &PolicySet,
    version: u64,
    id: &str,
    spec: &VmSpec,
    input: &serde_json::Value,
) -> Admission {
    let eval = set.admit(input);
    let record = record_from(
        "vm",
        id.to_owned(),
        spec.name.clone(),
        Some(spec.tenant.to_string()),
        version,
        &eval,
    );
    Admission {
        record: StoredRecord {
            record,
            input_digest: digest(input),
        },
        denied: eval.messages(Mode::Deny),
        warnings: eval.messages(Mode::Warn),
        audited: eval.messages(Mode::Audit),
    }
}

/// Admits a VM spec at the current policy version: `Err(PolicyDenied)` when a `deny` policy
/// refuses it (recorded in the audit log); otherwise the record to store with the VM and the
/// warnings.
pub async fn admit_vm(state: &AppState, spec: &VmSpec) -> Result<Admission, ApiError> {
    admit(state, spec, None).await
}

/// Admits a function: its spec (`input.function`) with the spec of one of its instances
/// (`input.vm`), so VM policies hold for functions too.
pub async fn admit_function(
    state: &AppState,
    function: &firefleet_types::FunctionSpec,
    instance: &VmSpec,
) -> Result<Admission, ApiError> {
    admit(state, instance, Some(function)).await
}

async fn admit(
    state: &AppState,
    spec: &VmSpec,
    function: Option<&firefleet_types::FunctionSpec>,
) -> Result<Admission, ApiError> {
    let (version, set) = current(state).await?;
    let mut input = vm_input(state, spec).await?;
    if let (Some(f), Some(obj)) = (function, input.as_object_mut()) {
        obj.insert(
            "function".to_owned(),
            serde_json::to_value(f).map_err(|e| ApiError::Internal(e.to_string()))?,
        );
    }
    let started = std::time::Instant::now();
    let admission = {
        let spec = spec.clone();
        off_async(move || evaluate_vm(&set, version, "", &spec, &input)).await?
    };
    state.metrics.admission_ns.fetch_add(
        started.elapsed().as_nanos() as u64,
        std::sync::atomic::Ordering::Relaxed,
    );
    state
        .metrics
        .admissions
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    if !admission.denied.is_empty() || !admission.audited.is_empty() {
        let outcome = if admission.denied.is_empty() {
            "audited"
        } else {
            "denied"
        };
        let mut event = firefleet_audit::Event::new(
            now_ms(),
            "controller:admission",
            if function.is_some() {
                "admission.function"
            } else {
                "admission.vm"
            },
            match function {
                Some(f) => format!("function/{}/{}", f.tenant, f.name),
                None => format!("vm/{}/{}", spec.tenant, spec.name),
            },
            outcome,
        )
        .with("policy_version", version.to_string());
        for (i, m) in admission
            .denied
            .iter()
            .chain(&admission.audited)
            .enumerate()
        {
            event = event.with(format!("violation.{i}"), m.clone());
        }
        state.audit.record(state, event).await;
    }
    if !admission.denied.is_empty() {
        return Err(ApiError::PolicyDenied(admission.denied));
    }
    Ok(admission)
}

/// The input of a node's host policies.
pub fn node_input(node: &NodeInfo) -> serde_json::Value {
    serde_json::json!({ "node": {
        "id": node.id.to_string(),
        "labels": node.labels,
        "facts": node.status.facts,
    }})
}

/// Evaluates a node (`input`: its [`node_input`]) against the host policies.
pub fn evaluate_node(
    set: &PolicySet,
    version: u64,
    node: &NodeInfo,
    input: &serde_json::Value,
) -> StoredRecord {
    let eval = set.check_host(input);
    StoredRecord {
        record: record_from(
            "node",
            node.id.to_string(),
            node.id.to_string(),
            None,
            version,
            &eval,
        ),
        input_digest: digest(input),
    }
}

/// Every stored record under `prefix`.
pub async fn records(state: &AppState, prefix: &str) -> Result<Vec<StoredRecord>, ApiError> {
    Ok(repo::list_json::<StoredRecord>(state, prefix).await?.0)
}

/// Stores a record.
pub async fn put_record(state: &AppState, key: String, r: &StoredRecord) -> Result<(), ApiError> {
    state.store.put(&key, repo::encode(r)?).await?;
    Ok(())
}

/// Runs a Rego compilation or evaluation on the blocking pool: each is bounded by the policy
/// crate's budget, and none holds an async worker (so `/healthz` and other calls are answered
/// while an admin's slow policy is evaluated).
pub async fn off_async<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::Internal(format!("policy evaluation: {e}")))
}

/// Shared handle type kept in the app state.
pub type Shared = Arc<Policies>;

//! The application layer: the server's domain operations, one module per domain (as Omicron's
//! nexus `app/`). HTTP handlers parse and authorise a request, call one function here and
//! render its answer; controllers call the same functions on their timers.
//!
//! What may import what: `app` uses `repo` (storage), `audit`, `metrics` and the engines'
//! crates; it never imports `http` or `controllers`. Everything a write needs first
//! (admission, quarantine, quotas) happens here, before `repo` stores it.

pub(crate) mod agents;
pub(crate) mod cluster;
pub(crate) mod compliance;
pub(crate) mod exec;
pub(crate) mod functions;
pub(crate) mod migrations;
pub(crate) mod nodes;
pub(crate) mod placement;
pub(crate) mod plan;
pub(crate) mod policy;
pub(crate) mod quota;
pub(crate) mod snapshots;
pub(crate) mod threats;
pub(crate) mod tokens;
pub(crate) mod vms;

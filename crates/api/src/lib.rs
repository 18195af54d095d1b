//! The wire contract of the FireFleet REST API: request and response bodies, shared by the
//! server (which derives the OpenAPI document from them) and the client. Types only: no HTTP
//! stack, no I/O. Requests refuse unknown fields.
//!
//! One module per resource of the public API (`vms`, `exec`, `stats`, `nodes`, `snapshots`,
//! `migrations`, `plan`, `functions`, `threats`, `audit`, `policy`, `tenants`, `compliance`,
//! `tokens`), `agent` for what only agents and the server exchange, `error` and `meta` for what
//! every request shares. Every type is re-exported at the crate root, which is the one path
//! other crates use.

mod agent;
mod audit;
mod compliance;
mod error;
mod exec;
mod functions;
mod meta;
mod migrations;
mod nodes;
mod plan;
mod policy;
mod snapshots;
mod stats;
mod tenants;
mod threats;
mod tokens;
mod vms;

pub use agent::*;
pub use audit::*;
pub use compliance::*;
pub use error::*;
pub use exec::*;
pub use functions::*;
pub use meta::*;
pub use migrations::*;
pub use nodes::*;
pub use plan::*;
pub use policy::*;
pub use snapshots::*;
pub use stats::*;
pub use tenants::*;
pub use threats::*;
pub use tokens::*;
pub use vms::*;

pub use firefleet_types::schema::{
    CommandRequest, LabelRequest, NameRequest, ResourceRequest, DIGEST_PATTERN, NAME_PATTERN,
};

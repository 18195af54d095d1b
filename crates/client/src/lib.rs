//! Typed HTTPS client for the FireFleet API, used by the CLI and the agent. It trusts only the
//! cluster CA, authenticates with a bearer token (people, scripts) or a client certificate
//! (agents), and turns error bodies into [`ClientError::Api`] carrying the server's message.
//!
//! A client holds every server replica's URL and fails over between them (`failover`: which
//! failures, which requests are sent again, for how long).
//!
//! `transport` is the core (connection, TLS, request building, error bodies, streaming); every
//! other module is one resource's `impl Client` block and builds on it alone.

mod agent;
mod audit;
mod cluster;
mod failover;
mod functions;
mod meta;
mod migrations;
mod nodes;
mod plan;
mod policy;
mod snapshots;
mod threats;
mod tokens;
mod transport;
mod vms;

pub use failover::{parse_server_list, Failover};
pub use transport::{Client, ClientError, Connection};

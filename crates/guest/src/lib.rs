//! firefleet-guest: PID 1 inside every microVM, and the host<->guest channel protocol.
//!
//! The library half is what the host needs to talk to a guest: the wire protocol ([`proto`]),
//! the guest configuration passed on the kernel command line ([`config`]) and the exact console
//! lines the guest prints ([`console`]). It depends on serde, serde_json and base64 only, so the
//! host side (`firefleet-vmm`) can use it without pulling in anything guest specific.
//!
//! The binary half (`src/main.rs`) is the init process itself. It must never panic on bad input.

pub mod config;
pub mod console;
pub mod proto;

pub use config::{ConfigError, GuestConfig};
pub use proto::{DecodeError, Decoded, LineReader, Message, ReadLine, PROTO_VERSION};

/// The name of the virtio-serial port the guest agent speaks [`proto`] on.
pub const AGENT_PORT_NAME: &str = "org.firefleet.agent";

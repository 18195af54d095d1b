//! The node agent: enrolls, heartbeats, reconciles local VMs to the intents for its node.

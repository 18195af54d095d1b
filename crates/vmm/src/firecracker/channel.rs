//! The host end of the guest channel over vsock: the guest connects to the host (CID 2) on
//! port 1024, Firecracker forwards that connection to the Unix socket `vsock.sock_1024` in the
//! VM's state directory, where [`Channels::ensure`] listens. The routing (requests in flight at
//! once, answers by id, reconnects) is the shared core in [`crate::channel::mux`].

pub use crate::channel::mux::{ChannelStatus, Channels};

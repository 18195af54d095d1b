//! firefleet-guest: PID 1 inside every microVM, and the host<->guest channel protocol.

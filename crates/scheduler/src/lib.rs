//! Placement engine (pure: no I/O, no async, no clock).

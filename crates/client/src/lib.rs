//! Typed HTTPS client for the FireFleet REST API.

//! Request and response types of the FireFleet REST API (the wire contract).

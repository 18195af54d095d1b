//! Revisioned key-value store (etcd model) with the SQLite backend and a backend conformance suite.

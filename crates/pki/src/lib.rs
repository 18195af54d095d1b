//! The cluster's certificate authority: CA, server and agent certificates, rustls configs.

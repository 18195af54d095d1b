//! The control plane: REST API, authentication, controllers.

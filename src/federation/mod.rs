//! The federation transport below the service layer: the TLS listener, server
//! discovery and the outbound client that signs requests (`X-Matrix`). It
//! names no service: inbound request authentication and the server-key cache
//! need the database and are `service::federation::auth` and
//! `service::server_keys`.

pub mod client;
pub mod discovery;
pub mod tls;

//! Federation plumbing shared by the Server-Server API handlers and the workers:
//! the TLS listener, server discovery, the signing outbound client, inbound
//! request authentication and the server-key cache.

pub mod auth;
pub mod client;
pub mod discovery;
pub mod keys;
pub mod tls;

//! End-to-end tests: the real server on a random loopback port, a real PostgreSQL.
//! One test binary, so the server is linked once.

mod accounts;
mod admin;
mod attacks;
mod authz;
mod cli;
mod clients;
mod crash;
mod deploy;
mod devices;
mod e2ee;
mod embedded;
mod errors;
mod federation;
mod fedir;
mod harness;
mod hidden_history;
mod hostile;
mod joinsync;
mod limits;
mod media;
mod outbound;
mod push;
mod redaction;
mod remote_media;
mod rooms;
pub mod sdk;
mod sliding;
mod social;
mod sweep;
mod synapse;
mod sync;
mod timeline;
mod tokens;
mod unsigned;

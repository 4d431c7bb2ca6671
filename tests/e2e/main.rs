//! End-to-end tests: the real server on a random loopback port, a real PostgreSQL.
//! One test binary, so the server is linked once.

mod accounts;
mod admin;
mod authz;
mod cli;
mod crash;
mod deploy;
mod devices;
mod e2ee;
mod embedded;
mod errors;
mod federation;
mod harness;
mod limits;
mod media;
mod push;
mod rooms;
pub mod sdk;
mod sliding;
mod social;
mod sweep;
mod synapse;
mod sync;
mod timeline;

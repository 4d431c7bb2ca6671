//! Lattice, a Matrix homeserver on PostgreSQL.
//!
//! Module map (dependencies point one way: `api → service → {domain, storage}`):
//! - [`api`]: HTTP only. Typed ruma endpoints, authentication extractors, errors.
//! - [`service`]: use cases; owns transactions.
//! - [`domain`]: pure rules (identifiers, passwords, tokens), no I/O.
//! - [`storage`]: the only module that imports sqlx; also runs the embedded cluster.
//! - [`app`]: state, listeners, workers, graceful shutdown.
//! - [`config`]: file + `LATTICE__*` environment configuration.
//! - [`federation`]: TLS, discovery, the signing client, request auth, server keys.
//! - [`outbound`]: the one HTTP client builder and the address policy every
//!   outbound request (federation, push gateways, URL previews) goes through.
//!
//! See `docs/architecture.md` for the data flows.

pub mod api;
pub mod app;
pub mod cli;
pub mod config;
pub mod domain;
pub mod error;
pub mod federation;
pub mod metrics;
pub mod notify;
pub mod outbound;
pub mod service;
pub mod storage;

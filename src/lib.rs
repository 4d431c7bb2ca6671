//! Lattice, a Matrix homeserver on PostgreSQL.
//!
//! Module map (dependencies point one way: `api → service → {domain, storage}`):
//! - [`api`]: HTTP only. Typed ruma endpoints, authentication extractors, errors.
//! - [`service`]: use cases; owns transactions.
//! - [`domain`]: pure rules (identifiers, passwords, tokens), no I/O.
//! - [`storage`]: the only module that imports sqlx (it re-exports the few
//!   sqlx types others name: `DbError`, `Executor`, `Transaction`, `Postgres`);
//!   also runs the embedded cluster.
//! - [`clock`]: the wall clock (`now_ms`).
//! - [`app`]: state, listeners, workers, graceful shutdown.
//! - [`config`]: file + `LATTICE__*` environment configuration.
//! - [`federation`]: TLS, discovery, the signing client, request auth, server keys.
//! - [`outbound`]: the one HTTP client builder and the address policy every
//!   outbound request (federation, push gateways, URL previews) goes through.
//!
//! `tests/layers.rs` holds these rules: no `sqlx` outside `storage/` (and the
//! `lattice-bench` tool), no `storage::` in `api/`, no I/O in `domain/`.
//!
//! See `docs/architecture.md` for the data flows.

pub mod api;
pub mod app;
pub mod cli;
pub mod clock;
pub mod config;
pub mod domain;
pub mod error;
pub mod federation;
pub mod metrics;
pub mod notify;
pub mod outbound;
pub mod service;
pub mod storage;

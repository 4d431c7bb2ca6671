//! Lattice, a Matrix homeserver on PostgreSQL.
//!
//! Module map, by layer (a module names only modules of its own layer or
//! below; `tests/layers.rs` holds it):
//! - [`cli`]: the binary's commands.
//! - [`server`]: listeners, workers, graceful shutdown.
//! - [`api`]: HTTP only. Typed ruma endpoints, authentication extractors, errors.
//! - [`service`]: use cases; owns transactions. Defines [`service::AppState`].
//! - [`federation`]: the federation transport (TLS, discovery, the signing client).
//! - the base: [`domain`] (pure rules, no I/O), [`storage`] (the only module
//!   that imports sqlx; it re-exports the few sqlx types others name:
//!   `DbError`, `Executor`, `Transaction`, `Postgres`; also runs the embedded
//!   cluster), [`config`] (file + `LATTICE__*` environment), [`error`],
//!   [`clock`] (the system clock, or a test's), [`outbound`] (the one HTTP
//!   client builder and the address policy every outbound request goes
//!   through), [`notify`] (stream positions), [`metrics`].
//!
//! `tests/layers.rs` also holds: no `sqlx` outside `storage/` (and the
//! `lattice-bench` tool), no `storage::` in `api/`, no I/O in `domain/`.
//!
//! See `docs/architecture.md` for the data flows.

pub mod api;
pub mod cli;
pub mod clock;
pub mod config;
pub mod domain;
pub mod error;
pub mod federation;
pub mod metrics;
pub mod notify;
pub mod outbound;
pub mod server;
pub mod service;
pub mod storage;

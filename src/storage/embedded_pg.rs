//! The embedded default: a private PostgreSQL cluster under `<data_dir>/postgres`,
//! initialised on first start with the installed `initdb`, run with `postgres` on a
//! unix socket only (no TCP), and stopped on shutdown.
//!
//! When Lattice runs as root the cluster runs as an unprivileged OS user
//! (`database.embedded_os_user`, default `postgres`), because PostgreSQL refuses to
//! run as root. A postmaster left running by a Lattice that was killed is adopted,
//! not started twice.

use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use nix::{
    sys::signal::{Signal, kill},
    unistd::{Pid, Uid, User},
};
use sqlx::{ConnectOptions, postgres::PgConnectOptions};
use tokio::process::Command;

const DB_NAME: &str = "lattice";
const DB_USER: &str = "lattice";

/// A running embedded cluster. Call [`EmbeddedPostgres::stop`] on shutdown.
#[derive(Debug)]
pub struct EmbeddedPostgres {
    pgdata: PathBuf,
    socket_dir: PathBuf,
    pid: Pid,
    started_here: bool,
}

struct Binaries {
    initdb: PathBuf,
    postgres: PathBuf,
}

impl EmbeddedPostgres {
    /// Initialise (first time) and start the cluster under `root`, then make sure
    /// the `lattice` database exists.
    pub async fn start(root: &Path, os_user: &str) -> anyhow::Result<Self> {
        Self::start_with(root, os_user, false).await
    }

    /// Like [`start`](Self::start); with `die_with_parent`, the postmaster gets a fast
    /// shutdown when the calling thread ends (used by test harnesses, which have no
    /// shutdown hook of their own).
    pub async fn start_with(
        root: &Path,
        os_user: &str,
        die_with_parent: bool,
    ) -> anyhow::Result<Self> {
        let bins = find_binaries()?;
        let run_as = if Uid::effective().is_root() {
            let user = User::from_name(os_user)
                .context("looking up the embedded database OS user")?
                .with_context(|| {
                    format!(
                        "Lattice runs as root and PostgreSQL refuses to; the OS user \
                         `{os_user}` (database.embedded_os_user) does not exist. Create it \
                         or set database.url"
                    )
                })?;
            Some(user)
        } else {
            None
        };

        std::fs::create_dir_all(root)
            .with_context(|| format!("creating data directory {}", root.display()))?;
        let root = root.canonicalize()?;
        let pgdata = root.join("postgres");
        let socket_dir = root.join("pg-socket");
        for dir in [&pgdata, &socket_dir] {
            std::fs::create_dir_all(dir)?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
            if let Some(user) = &run_as {
                std::os::unix::fs::chown(dir, Some(user.uid.as_raw()), Some(user.gid.as_raw()))?;
            }
        }
        if socket_dir.as_os_str().len() > 90 {
            bail!(
                "the data directory path {} is too long for a unix socket; use a shorter \
                 data_dir or set database.url",
                root.display()
            );
        }

        if !pgdata.join("PG_VERSION").exists() {
            tracing::info!(pgdata = %pgdata.display(), "initialising the embedded PostgreSQL cluster");
            let mut cmd = Command::new(&bins.initdb);
            cmd.arg("-D")
                .arg(&pgdata)
                .args([
                    "-U",
                    DB_USER,
                    "--auth=trust",
                    "-E",
                    "UTF8",
                    "--locale=C",
                    "--no-instructions",
                ])
                .stdin(Stdio::null());
            as_user(&mut cmd, run_as.as_ref());
            let out = cmd.output().await.context("running initdb")?;
            if !out.status.success() {
                bail!(
                    "initdb failed ({}): {}{}",
                    out.status,
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }

        let adopted = running_postmaster(&pgdata);
        let pid = match adopted {
            Some(pid) => {
                tracing::info!(%pid, "using the embedded PostgreSQL already running");
                pid
            }
            None => {
                let _ = std::fs::remove_file(pgdata.join("postmaster.pid"));
                let log = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(root.join("postgres.log"))?;
                if let Some(user) = &run_as {
                    std::os::unix::fs::chown(
                        root.join("postgres.log"),
                        Some(user.uid.as_raw()),
                        Some(user.gid.as_raw()),
                    )?;
                }
                let mut cmd = Command::new(&bins.postgres);
                cmd.arg("-D")
                    .arg(&pgdata)
                    .args(["-c", "listen_addresses="])
                    .arg("-c")
                    .arg(format!("unix_socket_directories={}", socket_dir.display()))
                    .args(["-c", "unix_socket_permissions=0700"])
                    .stdin(Stdio::null())
                    .stdout(log.try_clone()?)
                    .stderr(log)
                    // Our own process group: a ctrl-c at the terminal must reach Lattice,
                    // which then stops the cluster in order.
                    .process_group(0)
                    .kill_on_drop(false);
                as_user(&mut cmd, run_as.as_ref());
                if die_with_parent {
                    // SAFETY: prctl is async-signal-safe; nothing else runs in the
                    // child between fork and exec. It runs after the uid change, which
                    // would otherwise clear the setting.
                    unsafe {
                        cmd.pre_exec(|| {
                            nix::sys::prctl::set_pdeathsig(Signal::SIGINT)
                                .map_err(std::io::Error::from)
                        });
                    }
                }
                let child = cmd.spawn().context("starting postgres")?;
                let pid = Pid::from_raw(child.id().context("postgres exited at once")? as i32);
                // The postmaster outlives this handle; we stop it by signal.
                drop(child);
                pid
            }
        };

        let this = Self {
            pgdata,
            socket_dir,
            pid,
            started_here: adopted.is_none(),
        };
        this.wait_ready(Duration::from_secs(60)).await?;
        this.ensure_database().await?;
        Ok(this)
    }

    /// Whether this process started the postmaster (rather than finding it running).
    pub fn started_here(&self) -> bool {
        self.started_here
    }

    /// Connection options for the `lattice` database over the unix socket.
    pub fn connect_options(&self) -> PgConnectOptions {
        self.options_for(DB_NAME)
    }

    fn options_for(&self, db: &str) -> PgConnectOptions {
        PgConnectOptions::new()
            .socket(&self.socket_dir)
            .username(DB_USER)
            .database(db)
            .disable_statement_logging()
    }

    async fn wait_ready(&self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.options_for("postgres").connect().await {
                Ok(conn) => {
                    drop(conn);
                    return Ok(());
                }
                Err(e) => {
                    if kill(self.pid, None).is_err() {
                        bail!(
                            "the embedded postgres exited during start; see {}",
                            self.pgdata.with_file_name("postgres.log").display()
                        );
                    }
                    if Instant::now() > deadline {
                        bail!("the embedded postgres did not accept connections in time: {e}");
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    async fn ensure_database(&self) -> anyhow::Result<()> {
        use sqlx::Connection;
        let mut conn = self.options_for("postgres").connect().await?;
        let exists: bool =
            sqlx::query_scalar("select exists (select 1 from pg_database where datname = $1)")
                .bind(DB_NAME)
                .fetch_one(&mut conn)
                .await?;
        if !exists {
            sqlx::query(&format!("create database {DB_NAME}"))
                .execute(&mut conn)
                .await?;
        }
        conn.close().await?;
        Ok(())
    }

    /// Fast shutdown (SIGINT): roll back open transactions, checkpoint, exit.
    pub async fn stop(self) {
        if kill(self.pid, Signal::SIGINT).is_err() {
            return;
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while kill(self.pid, None).is_ok() && Instant::now() < deadline {
            // The postmaster is our child only when we started it; reap if so.
            let _ = nix::sys::wait::waitpid(self.pid, Some(nix::sys::wait::WaitPidFlag::WNOHANG));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tracing::info!("embedded PostgreSQL stopped");
    }
}

fn as_user(cmd: &mut Command, user: Option<&User>) {
    if let Some(user) = user {
        cmd.uid(user.uid.as_raw()).gid(user.gid.as_raw());
        cmd.env("HOME", &user.dir).env("USER", &user.name);
    }
}

/// The pid in `postmaster.pid`, if that process is alive.
fn running_postmaster(pgdata: &Path) -> Option<Pid> {
    let text = std::fs::read_to_string(pgdata.join("postmaster.pid")).ok()?;
    let pid: i32 = text.lines().next()?.trim().parse().ok()?;
    let pid = Pid::from_raw(pid);
    // Signal 0 checks existence. A recycled pid of another program is possible in
    // theory; postgres would then refuse to start and say so in its log.
    let alive = kill(pid, None).is_ok();
    let is_postgres = std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
        .map(|c| c.contains("postgres"))
        .unwrap_or(false);
    (alive && is_postgres).then_some(pid)
}

/// `initdb` and `postgres` on PATH, or under /usr/lib/postgresql/<newest>/bin.
fn find_binaries() -> anyhow::Result<Binaries> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    if let Ok(entries) = std::fs::read_dir("/usr/lib/postgresql") {
        let mut versions: Vec<(u32, PathBuf)> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let v = e.file_name().to_str()?.parse().ok()?;
                Some((v, e.path().join("bin")))
            })
            .collect();
        versions.sort_by_key(|v| std::cmp::Reverse(v.0));
        dirs.extend(versions.into_iter().map(|(_, p)| p));
    }
    find_binaries_in(&dirs)
}

fn find_binaries_in(dirs: &[PathBuf]) -> anyhow::Result<Binaries> {
    for dir in dirs {
        let (initdb, postgres) = (dir.join("initdb"), dir.join("postgres"));
        if initdb.is_file() && postgres.is_file() {
            return Ok(Binaries { initdb, postgres });
        }
    }
    bail!(
        "no database configured and the PostgreSQL server binaries (initdb, postgres) were \
         not found on PATH or under /usr/lib/postgresql/*/bin. Install them (Debian/Ubuntu: \
         `apt-get install postgresql`; Fedora: `dnf install postgresql-server`; macOS: `brew \
         install postgresql`) or set database.url (LATTICE__DATABASE__URL) to an existing server"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_binaries_say_how_to_fix_it() {
        let empty = tempfile::tempdir().unwrap();
        let err = find_binaries_in(&[empty.path().to_owned()])
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("apt-get install postgresql"), "{err}");
        assert!(err.contains("database.url"), "{err}");
    }

    #[test]
    fn finds_binaries_in_a_directory_that_has_both() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("initdb"), "").unwrap();
        assert!(find_binaries_in(&[dir.path().to_owned()]).is_err());
        std::fs::write(dir.path().join("postgres"), "").unwrap();
        let found = find_binaries_in(&[dir.path().to_owned()]).unwrap();
        assert_eq!(found.postgres, dir.path().join("postgres"));
    }
}

//! Command line: `lattice [serve]`, `lattice migrate`, `lattice generate-config`,
//! `lattice admin …`.

use std::{path::PathBuf, process::ExitCode};

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::{
    config::Config,
    domain::token,
    server,
    service::AppState,
    service::account,
    storage::{Database, registration_tokens},
};

/// The example configuration, printed by `lattice generate-config`.
pub const EXAMPLE_CONFIG: &str = include_str!("../config/lattice.example.toml");

#[derive(Parser)]
#[command(name = "lattice", version, about = "A Matrix homeserver on PostgreSQL")]
struct Cli {
    /// Configuration file. Default: config/lattice.toml when it exists, otherwise
    /// built-in defaults; LATTICE__SECTION__KEY variables override either.
    #[arg(long, short, env = "LATTICE_CONFIG", global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (the default).
    Serve,
    /// Apply database migrations and exit.
    Migrate,
    /// Print a fully commented configuration file.
    GenerateConfig {
        /// Write to this file instead of standard output.
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
    /// Write a throwaway certificate authority and a TLS certificate it signed,
    /// for development and test set-ups (peers must be told to trust its ca.pem).
    GenerateTlsCert {
        /// Directory for ca.pem, <name>.crt and <name>.key (an existing CA there
        /// is reused).
        #[arg(long, default_value = "data/tls")]
        dir: PathBuf,
        /// Base name of the certificate and key files.
        #[arg(long, default_value = "lattice")]
        name: String,
        /// Host names and IP addresses the certificate is valid for.
        #[arg(long = "host", default_values_t = ["localhost".to_string(), "127.0.0.1".to_string()])]
        hosts: Vec<String>,
    },
    /// Administration.
    #[command(subcommand)]
    Admin(Admin),
}

#[derive(Subcommand)]
enum Admin {
    /// Create a user.
    RegisterUser {
        /// Localpart (`alice`) or full user ID (`@alice:example.org`).
        username: String,
        /// Password; read from LATTICE_PASSWORD when not given.
        #[arg(long, env = "LATTICE_PASSWORD", hide_env_values = true)]
        password: String,
        /// Make the user a server administrator.
        #[arg(long)]
        admin: bool,
    },
    /// Manage registration tokens.
    #[command(subcommand)]
    RegistrationToken(TokenCommand),
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Create a token and print it.
    Create {
        /// The token (default: 16 random characters).
        #[arg(long)]
        token: Option<String>,
        /// How many registrations it allows (default: unlimited).
        #[arg(long)]
        uses: Option<i32>,
        /// Expire after this many hours (default: never).
        #[arg(long)]
        expires_in_hours: Option<u64>,
    },
    /// List tokens with their use counts.
    List,
    /// Delete a token.
    Delete { token: String },
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    if let Some(Command::GenerateConfig { output }) = &cli.command {
        return match output {
            Some(path) => std::fs::write(path, EXAMPLE_CONFIG)
                .with_context(|| format!("writing {}", path.display())),
            None => {
                print!("{EXAMPLE_CONFIG}");
                Ok(())
            }
        };
    }
    if let Some(Command::GenerateTlsCert { dir, name, hosts }) = &cli.command {
        let written = crate::federation::tls::generate_dev_certificates(dir, name, hosts)?;
        println!("certificate authority: {}", written.ca.display());
        println!("certificate:           {}", written.cert.display());
        println!("private key:           {}", written.key.display());
        return Ok(());
    }
    let file = cli.config.clone().or_else(|| {
        let default = PathBuf::from("config/lattice.toml");
        default.exists().then_some(default)
    });
    let config = Config::load(file.as_deref())?;
    init_tracing(&config.log);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        match cli.command.unwrap_or(Command::Serve) {
            Command::Serve => server::serve(config, file).await,
            Command::Migrate => {
                let db = Database::open(&config).await?;
                let result = db.migrate().await;
                db.close_if_started_here().await;
                result?;
                println!("migrations applied");
                Ok(())
            }
            Command::Admin(admin) => run_admin(config, admin).await,
            Command::GenerateConfig { .. } | Command::GenerateTlsCert { .. } => {
                unreachable!("handled above")
            }
        }
    })
}

fn init_tracing(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(filter))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only on a terminal: `docker logs`, journald and log collectors
    // get plain lines (NO_COLOR turns them off on a terminal too).
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .init();
}

async fn run_admin(config: Config, command: Admin) -> anyhow::Result<()> {
    let db = Database::open(&config).await?;
    db.migrate().await?;
    let state = AppState::load(config, db.pool.clone()).await?;
    let result = admin(&state, command).await;
    db.close_if_started_here().await;
    result
}

async fn admin(state: &AppState, command: Admin) -> anyhow::Result<()> {
    match command {
        Admin::RegisterUser {
            username,
            password,
            admin,
        } => {
            if password.is_empty() {
                anyhow::bail!("the password may not be empty");
            }
            let registered = account::create_by_admin(state, &username, &password, admin, false)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            println!(
                "created {}{}",
                registered.user_id,
                if admin { " (admin)" } else { "" }
            );
        }
        Admin::RegistrationToken(TokenCommand::Create {
            token,
            uses,
            expires_in_hours,
        }) => {
            let token = token.unwrap_or_else(|| token::random_string(16));
            if token.is_empty()
                || token.len() > 64
                || !token
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._~-".contains(c))
            {
                anyhow::bail!("a token is 1-64 characters of [A-Za-z0-9._~-]");
            }
            let expiry = expires_in_hours.map(|h| state.clock.now_ms() + (h * 3_600_000) as i64);
            if !registration_tokens::insert(&state.db, &token, uses, expiry, state.clock.now_ms())
                .await?
            {
                anyhow::bail!("token {token} already exists");
            }
            println!("{token}");
        }
        Admin::RegistrationToken(TokenCommand::List) => {
            for t in registration_tokens::list(&state.db).await? {
                println!(
                    "{}\tuses_allowed={}\tpending={}\tcompleted={}\texpiry_ts={}",
                    t.token,
                    t.uses_allowed.map_or("unlimited".into(), |u| u.to_string()),
                    t.pending,
                    t.completed,
                    t.expiry_ts.map_or("never".into(), |e| e.to_string()),
                );
            }
        }
        Admin::RegistrationToken(TokenCommand::Delete { token }) => {
            if !registration_tokens::delete(&state.db, &token).await? {
                anyhow::bail!("no token {token}");
            }
            println!("deleted {token}");
        }
    }
    Ok(())
}

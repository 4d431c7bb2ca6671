//! Service-level tests: the services called directly on a fresh, migrated
//! database (on `DATABASE_URL`'s server, or the private cluster the e2e
//! harness starts), with no HTTP in between. For what is slow to set up end to
//! end: state resolution over stored forks, push rule evaluation in the event
//! path, and the federation backoff schedule under a clock the test moves.

#[path = "../e2e/harness.rs"]
#[allow(dead_code)]
mod harness;

mod backoff;
mod push;
mod state_res;

use lattice::{
    config::Config,
    service::{
        AppState, account,
        room::{self, CreateRoom, Preset},
    },
    storage::Database,
};
use ruma::{OwnedRoomId, OwnedUserId, UserId};

/// The state over a fresh database with the e2e tests' settings.
pub async fn state() -> AppState {
    state_with(harness::test_config()).await
}

/// The state over a fresh database (already migrated: it is cloned from the
/// harness's migrated template) with `config`.
pub async fn state_with(mut config: Config) -> AppState {
    config.database.url = Some(harness::fresh_database_url().await);
    let db = Database::open(&config)
        .await
        .expect("opening the test database");
    db.migrate().await.expect("migrations");
    AppState::load(config, db.pool.clone())
        .await
        .expect("building the state")
}

/// A new local user.
pub async fn user(app: &AppState, localpart: &str) -> OwnedUserId {
    account::create_by_admin(app, localpart, "a password", false, false)
        .await
        .expect("creating a user")
        .user_id
}

/// A room `creator` makes with the private chat preset.
pub async fn room(app: &AppState, creator: &UserId, version: &str) -> OwnedRoomId {
    room::create(
        app,
        creator,
        CreateRoom {
            room_version: Some(version.try_into().unwrap()),
            preset: Some(Preset::PrivateChat),
            public: false,
            creation_content: None,
            power_level_content_override: None,
            initial_state: Vec::new(),
            name: None,
            topic: None,
            room_alias_name: None,
            invite: Vec::new(),
            is_direct: false,
        },
    )
    .await
    .expect("creating a room")
}

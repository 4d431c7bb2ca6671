//! Discovery and server capabilities:
//! `GET /_matrix/client/versions`, `GET /.well-known/matrix/client`,
//! `GET /.well-known/matrix/server`, `GET /.well-known/matrix/support`,
//! `GET /_matrix/client/v3/capabilities` (spec: "Server Discovery", "Server
//! support discovery", "Capabilities negotiation"), and `GET /health`.

use axum::{Json, Router, extract::State, routing::get};
use ruma::api::client::discovery::{
    discover_homeserver, discover_support, get_capabilities, get_supported_versions,
};
use serde_json::{Value, json};

use crate::{
    api::{
        auth::AuthUser,
        ruma::{RouterExt, Ruma, RumaResponse},
    },
    domain::room_version,
    error::{Error, Result},
    service::AppState,
};

/// The spec versions whose endpoints Lattice serves. Raised as features land.
/// v1.11 tells clients to use the authenticated media endpoints (the legacy
/// ones are off by default).
const VERSIONS: &[&str] = &[
    "r0.5.0", "r0.6.0", "r0.6.1", "v1.1", "v1.2", "v1.3", "v1.4", "v1.5", "v1.6", "v1.7", "v1.8",
    "v1.9", "v1.10", "v1.11",
];

pub fn router() -> Router<AppState> {
    Router::new()
        .ruma::<get_supported_versions::Request, _, _>(versions)
        .ruma::<get_capabilities::v3::Request, _, _>(capabilities)
        .ruma::<discover_homeserver::Request, _, _>(well_known_client)
        .route("/.well-known/matrix/server", get(well_known_server))
        .ruma::<discover_support::Request, _, _>(well_known_support)
        .route("/health", get(health))
}

/// How long `/health` waits for the database before answering 503.
const HEALTH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

/// `GET /health` (as Synapse has it, for load balancers and container health
/// checks): `200 OK` while the database answers, `503` otherwise.
async fn health(State(state): State<AppState>) -> (axum::http::StatusCode, &'static str) {
    // With the database down, the pool keeps retrying a refused connection until
    // its acquire timeout (10 s); a prober (the image's HEALTHCHECK allows 5 s)
    // should get its 503 sooner.
    let probe = crate::service::database_reachable(&state);
    match tokio::time::timeout(HEALTH_TIMEOUT, probe).await {
        Ok(Ok(())) => (axum::http::StatusCode::OK, "OK"),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "health check: database unreachable");
            (
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                "database unreachable",
            )
        }
        Err(_) => {
            tracing::warn!("health check: no database connection within {HEALTH_TIMEOUT:?}");
            (
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                "database unreachable",
            )
        }
    }
}

/// Unstable features advertised in `/versions`: each one's feature works
/// (tests/e2e/clients.rs calls every one of them). Features whose stable form
/// came with a spec version listed above need no flag; these are the ones
/// clients still look for by name.
const UNSTABLE_FEATURES: &[&str] = &[
    // Cross-signing: Element sets it up only when this is present.
    "org.matrix.e2e_cross_signing",
    // Local aliases in `m.room.canonical_alias` must point at the room.
    "org.matrix.msc2432",
    // Private read receipts (`m.read.private`).
    "org.matrix.msc2285.stable",
    // Threads: `/threads`, `m.thread` relations and bundled summaries.
    "org.matrix.msc3440.stable",
    // Threaded read receipts (`thread_id` on receipts).
    "org.matrix.msc3771",
    // Per-thread notification counts (`unread_thread_notifications`).
    "org.matrix.msc3773",
    // Room summaries (`/room_summary`, and im.nheko.summary's paths).
    "org.matrix.msc3266",
    // Mutual rooms (unstable and `/v1/mutual_rooms`).
    "uk.half-shot.msc2666.query_mutual_rooms",
    "uk.half-shot.msc2666.query_mutual_rooms.stable",
    // Deleting account data (MSC3391: `DELETE` under its unstable prefix, and
    // `PUT` with `{}`), as Synapse advertises it when enabled.
    "org.matrix.msc3391",
    // Profile fields beyond name and avatar on the stable paths (MSC4133, in
    // spec v1.16), as Synapse advertises it.
    "uk.tcpip.msc4133.stable",
    // Simplified sliding sync (MSC4186), as Synapse advertises it.
    "org.matrix.simplified_msc3575",
];

async fn versions(
    Ruma(_): Ruma<get_supported_versions::Request>,
) -> RumaResponse<get_supported_versions::Response> {
    let mut response =
        get_supported_versions::Response::new(VERSIONS.iter().map(|v| (*v).to_owned()).collect());
    for feature in UNSTABLE_FEATURES {
        response
            .unstable_features
            .insert((*feature).to_owned(), true);
    }
    RumaResponse(response)
}

/// Only capabilities that hold today: password changes work; the room versions
/// Lattice creates and joins; every profile field may be changed; third-party
/// IDs (email addresses) can be added and removed when the server sends email;
/// login tokens for other devices when `auth.login_via_existing_session` is on.
///
/// Answered as JSON, not ruma's response: ruma leaves out every capability
/// equal to the spec's default (`m.change_password` enabled, for one), and
/// SyTest requires `m.change_password` present, as Synapse always sends it.
async fn capabilities(
    State(state): State<AppState>,
    AuthUser(_): AuthUser,
    Ruma(_): Ruma<get_capabilities::v3::Request>,
) -> Json<Value> {
    let available: serde_json::Map<String, Value> = room_version::SUPPORTED
        .iter()
        .map(|v| ((*v).to_owned(), Value::from("stable")))
        .collect();
    Json(json!({
        "capabilities": {
            "m.room_versions": {
                "default": state.config.rooms.default_version,
                "available": available,
            },
            "m.change_password": { "enabled": true },
            "m.profile_fields": { "enabled": true },
            "m.set_displayname": { "enabled": true },
            "m.set_avatar_url": { "enabled": true },
            "m.3pid_changes": { "enabled": state.mailer.is_some() },
            "m.get_login_token": { "enabled": state.config.auth.login_via_existing_session },
        }
    }))
}

async fn well_known_client(
    State(state): State<AppState>,
    Ruma(_): Ruma<discover_homeserver::Request>,
) -> RumaResponse<discover_homeserver::Response> {
    RumaResponse(discover_homeserver::Response::new(
        discover_homeserver::HomeserverInfo::new(state.config.public_baseurl()),
    ))
}

/// Served only when `federation_delegate` is configured; otherwise other servers
/// fall back to SRV records and port 8448, as the spec's discovery says.
/// Answered as JSON, not ruma's (federation) response: that one needs a valid
/// server name, and the setting is served as configured.
async fn well_known_server(State(state): State<AppState>) -> Result<Json<Value>> {
    match &state.config.federation_delegate {
        Some(delegate) => Ok(Json(json!({ "m.server": delegate }))),
        None => Err(Error::not_found("No federation delegation configured")),
    }
}

/// From the `[support]` settings; `404` when none are set, as the spec allows
/// ("No server support information available").
async fn well_known_support(
    State(state): State<AppState>,
    Ruma(_): Ruma<discover_support::Request>,
) -> Result<RumaResponse<discover_support::Response>> {
    let support = &state.config.support;
    if support.contacts.is_empty() && support.support_page.is_none() {
        return Err(Error::not_found("No support information configured"));
    }
    let mut contacts = Vec::new();
    for c in &support.contacts {
        let role = discover_support::ContactRole::from(c.role.as_str());
        // The configuration checked each contact at load: a valid user ID,
        // and a matrix ID or an email address.
        let matrix_id = c
            .matrix_id
            .as_deref()
            .map(ruma::UserId::parse)
            .transpose()
            .map_err(|e| anyhow::anyhow!("support contact: {e}"))?;
        contacts.push(match (&c.email_address, matrix_id) {
            (Some(email), id) => {
                let mut contact =
                    discover_support::Contact::with_email_address(role, email.clone());
                contact.matrix_id = id;
                contact
            }
            (None, Some(id)) => discover_support::Contact::with_matrix_id(role, id),
            (None, None) => continue,
        });
    }
    let mut response = discover_support::Response::with_contacts(contacts);
    response.support_page.clone_from(&support.support_page);
    Ok(RumaResponse(response))
}

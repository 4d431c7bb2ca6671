//! Our side of a `make_*` / `send_*` exchange with a resident server, shared by
//! joins, leaves and knocks of rooms this server is not in: the template asked
//! for and checked, signed and sent back, the resident's refusal passed
//! through to the client, and the resulting membership recorded.

use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, OwnedEventId, RoomId, RoomVersionId, ServerName,
    UserId, signatures::hash_and_sign_event,
};
use serde_json::Value;

use super::ingest::{self, Checked, enc};
use crate::{
    domain::{pdu, room_version},
    error::{Error, ErrorKind, Result},
    federation::client::FedError,
    service::AppState,
    storage::{federation as fed_store, rooms},
};

/// Room versions this server can join, for `make_join`'s `ver`: every version
/// it supports.
pub(super) fn supported_versions() -> Vec<String> {
    room_version::SUPPORTED
        .iter()
        .map(|v| (*v).to_owned())
        .collect()
}

pub(super) enum JoinError {
    /// The resident server said no: do not try others.
    Refused(Error),
    Failed(String),
}

impl From<crate::storage::DbError> for JoinError {
    fn from(e: crate::storage::DbError) -> Self {
        Self::Failed(e.to_string())
    }
}

impl From<crate::error::Error> for JoinError {
    fn from(e: crate::error::Error) -> Self {
        Self::Failed(e.to_string())
    }
}

/// Completes a `make_join`/`make_leave` template as ours: timestamp and origin,
/// hashes and our signature; returns the event and its ID.
pub fn sign_template(
    app: &AppState,
    mut event: Value,
    rules: &ruma::room_version_rules::RoomVersionRules,
) -> std::result::Result<(CanonicalJsonObject, OwnedEventId), String> {
    event["origin_server_ts"] = app.clock.now_ms().into();
    event["origin"] = app.server_name.as_str().into();
    let mut object: CanonicalJsonObject = match CanonicalJsonValue::try_from(event) {
        Ok(CanonicalJsonValue::Object(o)) => o,
        _ => return Err("the template is not an event object".into()),
    };
    for field in ["event_id", "signatures", "hashes", "unsigned"] {
        object.remove(field);
    }
    if pdu::is_v1_format(rules) {
        // Event format v1: the event is ours, so is its ID (the template's,
        // if any, was the resident server's).
        let so_far = serde_json::to_value(&object).map_err(|e| e.to_string())?;
        let id = pdu::local_v1_event_id(&so_far, app.server_name.as_str());
        object.insert("event_id".into(), CanonicalJsonValue::String(id));
    }
    hash_and_sign_event(
        app.server_name.as_str(),
        &app.signing_key.pair,
        &mut object,
        &rules.redaction,
    )
    .map_err(|e| format!("signing the event: {e}"))?;
    let event_id = pdu::received_event_id(rules, &object)?;
    Ok((object, event_id))
}

/// A `make_*` / `send_*` exchange done: our signed event, its ID, the room's
/// version and rules, and the `send_*` answer.
pub(super) struct Handshake {
    pub(super) object: CanonicalJsonObject,
    pub(super) event_id: OwnedEventId,
    pub(super) version: RoomVersionId,
    pub(super) rules: ruma::room_version_rules::RoomVersionRules,
    pub(super) reply: Value,
}

/// Our side of a membership change in a room this server is not in: asks
/// `server` for a `membership` template (`make_join`, `make_leave`,
/// `make_knock`), checks it is the event we asked for, adds `extra` content,
/// signs it and sends it back (`send_*`, falling back to the deprecated v1
/// when the server does not know v2). The room's refusal (see
/// [`make_failure`], [`send_failure`]) or an unsupported room version is the
/// answer (`Refused`); anything else may go better elsewhere.
pub(super) async fn handshake(
    app: &AppState,
    server: &ServerName,
    room_id: &RoomId,
    user: &UserId,
    membership: &str,
    extra: serde_json::Map<String, Value>,
    omit_members: bool,
) -> std::result::Result<Handshake, JoinError> {
    // `send_join` and `send_leave` have a deprecated v1, tried when the
    // server does not know v2.
    let (make, send, send_v1) = match membership {
        "join" => ("v1/make_join", "v2/send_join", Some("v1/send_join")),
        "leave" => ("v1/make_leave", "v2/send_leave", Some("v1/send_leave")),
        _ => ("v1/make_knock", "v1/send_knock", None),
    };
    let query = if membership == "leave" {
        String::new()
    } else {
        let vers: Vec<String> = supported_versions()
            .iter()
            .map(|v| format!("ver={v}"))
            .collect();
        format!("?{}", vers.join("&"))
    };
    let path = format!(
        "/_matrix/federation/{make}/{}/{}{query}",
        enc(room_id.as_str()),
        enc(user.as_str())
    );
    let template = app
        .federation
        .request_json(server, http::Method::GET, &path, None)
        .await
        .map_err(|e| make_failure(membership, e))?;
    let version = template["room_version"].as_str().unwrap_or("1");
    let version = RoomVersionId::try_from(version)
        .ok()
        .filter(room_version::is_supported)
        .ok_or_else(|| {
            JoinError::Refused(Error::new(
                ErrorKind::UnsupportedRoomVersion,
                format!("Room version {version} is not supported"),
            ))
        })?;
    let rules = version.rules().expect("supported versions have rules");
    let mut event = template["event"].clone();
    if event["type"] != "m.room.member"
        || event["state_key"] != user.as_str()
        || event["sender"] != user.as_str()
        || event["content"]["membership"] != membership
    {
        return Err(JoinError::Failed(format!(
            "make_{membership} returned a different event"
        )));
    }
    for (key, value) in extra {
        event["content"][key] = value;
    }
    let (object, event_id) = sign_template(app, event, &rules).map_err(JoinError::Failed)?;
    let send_path = |send: &str| {
        format!(
            "/_matrix/federation/{send}/{}/{}",
            enc(room_id.as_str()),
            enc(event_id.as_str())
        )
    };
    let body = serde_json::to_value(&object).map_err(|e| JoinError::Failed(e.to_string()))?;
    // Faster joins: the state without most memberships, the rest fetched in
    // the background (`super::partial_state`). v1 has no such answer.
    let v2_path = if omit_members {
        format!("{}?omit_members=true", send_path(send))
    } else {
        send_path(send)
    };
    let sent = app
        .federation
        .request_json(server, http::Method::PUT, &v2_path, Some(&body))
        .await;
    let reply = match (sent, send_v1) {
        (Ok(reply), _) => reply,
        (Err(e), Some(send_v1)) if e.is_unknown_endpoint() => {
            let reply = app
                .federation
                .request_json(server, http::Method::PUT, &send_path(send_v1), Some(&body))
                .await
                .map_err(|e| send_failure(membership, e))?;
            v1_answer(reply).ok_or_else(|| {
                JoinError::Failed(format!(
                    "{send_v1} answered something else than [200, {{…}}]"
                ))
            })?
        }
        (Err(e), _) => return Err(send_failure(membership, e)),
    };
    Ok(Handshake {
        object,
        event_id,
        version,
        rules,
        reply,
    })
}

/// The body of a deprecated v1 answer (`send_join`, `send_leave`, `invite`):
/// `[200, {…}]`, an accident of history kept on the wire.
pub(super) fn v1_answer(reply: Value) -> Option<Value> {
    match reply {
        Value::Array(mut items) if items.len() == 2 && items[1].is_object() => {
            Some(items.remove(1))
        }
        _ => None,
    }
}

/// Errcodes with which a resident server says another server might do better
/// (restricted rooms: it cannot authorise the join, another one may).
const TRY_ELSEWHERE: [&str; 2] = ["M_UNABLE_TO_AUTHORISE_JOIN", "M_UNABLE_TO_GRANT_JOIN"];

/// A failed `make_*`. The room's answer — a 4xx other than "unknown room" or
/// a request to try elsewhere — is passed through to the client, as the spec
/// asks ("The error should be passed through to clients"); anything else may
/// go better with another server.
pub(super) fn make_failure(membership: &str, e: FedError) -> JoinError {
    let FedError::Remote { status, body } = &e else {
        return JoinError::Failed(e.to_string());
    };
    let errcode = e.errcode();
    let try_elsewhere = matches!(status, 401 | 404 | 408 | 429)
        || errcode
            .as_deref()
            .is_some_and(|c| TRY_ELSEWHERE.contains(&c));
    if !(400..500).contains(status) || try_elsewhere {
        return JoinError::Failed(e.to_string());
    }
    JoinError::Refused(passed_through(membership, *status, body))
}

/// A failed `send_*`: a 403 is the room's refusal; anything else may go
/// better with another server.
pub(super) fn send_failure(membership: &str, e: FedError) -> JoinError {
    match &e {
        FedError::Remote { status: 403, body } => {
            JoinError::Refused(passed_through(membership, 403, body))
        }
        _ => JoinError::Failed(e.to_string()),
    }
}

/// Another server's 4xx error as our client's: its status, errcode (when it
/// is one: `M_…` or namespaced, upper case) and message; `room_version` kept
/// for `M_INCOMPATIBLE_ROOM_VERSION`.
pub(super) fn passed_through(membership: &str, status: u16, body: &str) -> Error {
    let body: Value = serde_json::from_str(body).unwrap_or_default();
    let message = body["error"].as_str().unwrap_or("no reason given");
    let message: String = message.chars().take(500).collect();
    let message = format!("The room's server refused the {membership}: {message}");
    let errcode = body["errcode"].as_str().filter(|c| {
        (1..=128).contains(&c.len())
            && c.bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_' || b == b'.')
    });
    let room_version = body["room_version"]
        .as_str()
        .filter(|v| (1..=32).contains(&v.len()));
    let kind = match (status, errcode, room_version) {
        (400, Some("M_INCOMPATIBLE_ROOM_VERSION"), Some(v)) => ErrorKind::IncompatibleRoomVersion {
            room_version: v.to_owned(),
        },
        (403, Some("M_FORBIDDEN") | None, _) => ErrorKind::Forbidden,
        _ => ErrorKind::Remote {
            status: http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::BAD_REQUEST),
            errcode: errcode.unwrap_or("M_UNKNOWN").to_owned(),
        },
    };
    Error::new(kind, message)
}

/// Records a local user's membership of a room this server is not in: the
/// membership event as an outlier, the user's `room_members` row at a new
/// stream position, and what is needed to act on it later (`remote`: an invite
/// or knock kept; `None`: any earlier one forgotten).
pub async fn record_remote_membership(
    app: &AppState,
    checked: &Checked,
    membership: &str,
    remote: Option<fed_store::RemoteMembership>,
) -> Result<()> {
    let (room_id, user) = (
        checked.pdu.room_id.as_str(),
        checked.pdu.state_key.as_deref().unwrap_or_default(),
    );
    let mut tx = app.db.begin().await?;
    fed_store::delete_outlier(&mut *tx, checked.event_id.as_str()).await?;
    ingest::store_outlier(&mut *tx, checked, false).await?;
    match &remote {
        Some(r) => fed_store::upsert_remote_membership(&mut *tx, room_id, user, r).await?,
        None => fed_store::delete_remote_membership(&mut *tx, room_id, user).await?,
    }
    let (position, guard) = crate::service::stream::take(&mut tx, app).await?;
    rooms::set_membership(
        &mut *tx,
        room_id,
        user,
        membership,
        checked.event_id.as_str(),
        position,
    )
    .await?;
    // An invite into a room none of our users is in does not pass through
    // the event writer: appservices interested in the invitee (or the room)
    // get it here, in the same transaction.
    if let Some(r) = &remote
        && membership == "invite"
        && !app.appservices.current().is_empty()
        && let Some(rules) = RoomVersionId::try_from(r.room_version.as_str())
            .ok()
            .and_then(|v| v.rules())
    {
        let text = serde_json::to_string(&checked.object).map_err(|e| anyhow::anyhow!("{e}"))?;
        crate::service::appservice::enqueue(
            &mut tx,
            app,
            &rules,
            &checked.pdu.room_id,
            checked.event_id.as_str(),
            &text,
            &checked.pdu,
        )
        .await?;
    }
    tx.commit().await?;
    drop(guard);
    Ok(())
}

//! Our side of a `make_*` / `send_*` exchange with a resident server, shared by
//! joins, leaves and knocks of rooms this server is not in: the template asked
//! for and checked, signed and sent back, the resident's refusal passed
//! through to the client, and the resulting membership recorded.

use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, EventId, OwnedEventId, RoomId, RoomVersionId,
    ServerName, UserId,
    api::federation::membership::{
        create_join_event, create_knock_event, create_leave_event, prepare_join_event,
        prepare_knock_event, prepare_leave_event,
    },
    signatures::hash_and_sign_event,
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
    pub(super) reply: SendAnswer,
}

/// A `send_*` answer as the joining side reads it: v2's through ruma's types,
/// the deprecated v1's `[200, {…}]` leniently (fields of the wrong type read
/// as absent). A leave's is empty; a knock's has only `knock_room_state`.
#[derive(Default)]
pub(super) struct SendAnswer {
    pub(super) state: Vec<Value>,
    pub(super) auth_chain: Vec<Value>,
    pub(super) members_omitted: bool,
    /// As listed, not yet checked to be server names.
    pub(super) servers_in_room: Vec<String>,
    /// The join signed by the authorising server too (restricted joins).
    pub(super) event: Option<Value>,
    pub(super) knock_room_state: Vec<Value>,
}

impl SendAnswer {
    fn from_join(room_state: create_join_event::v2::RoomState) -> Self {
        Self {
            state: super::pdu_values(&room_state.state),
            auth_chain: super::pdu_values(&room_state.auth_chain),
            members_omitted: room_state.members_omitted,
            servers_in_room: room_state.servers_in_room.unwrap_or_default(),
            event: room_state
                .event
                .and_then(|e| serde_json::from_str(e.get()).ok()),
            knock_room_state: Vec::new(),
        }
    }

    /// The body of a v1 `send_join` answer (`send_leave`'s is `{}`).
    fn from_v1(body: &Value) -> Self {
        let list = |v: &Value| v.as_array().cloned().unwrap_or_default();
        Self {
            state: list(&body["state"]),
            auth_chain: list(&body["auth_chain"]),
            members_omitted: body["members_omitted"] == true,
            servers_in_room: list(&body["servers_in_room"])
                .iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect(),
            event: body.get("event").cloned(),
            knock_room_state: Vec::new(),
        }
    }
}

/// A `make_*` answer: the room's version (absent: "1") and the template.
async fn make_template(
    app: &AppState,
    server: &ServerName,
    room_id: &RoomId,
    user: &UserId,
    membership: &str,
) -> std::result::Result<(Option<RoomVersionId>, Value), JoinError> {
    let failure = |e| make_failure(membership, e);
    let (version, event) = match membership {
        "join" => {
            let mut request =
                prepare_join_event::v1::Request::new(room_id.to_owned(), user.to_owned());
            request.ver = supported_room_versions();
            let answer = app
                .federation
                .send(server, request)
                .await
                .map_err(failure)?;
            (answer.room_version, answer.event)
        }
        "leave" => {
            let request =
                prepare_leave_event::v1::Request::new(room_id.to_owned(), user.to_owned());
            let answer = app
                .federation
                .send(server, request)
                .await
                .map_err(failure)?;
            (answer.room_version, answer.event)
        }
        _ => {
            let mut request =
                prepare_knock_event::v1::Request::new(room_id.to_owned(), user.to_owned());
            request.ver = supported_room_versions();
            let answer = app
                .federation
                .send(server, request)
                .await
                .map_err(failure)?;
            (Some(answer.room_version), answer.event)
        }
    };
    let event = serde_json::from_str(event.get()).map_err(|e| JoinError::Failed(e.to_string()))?;
    Ok((version, event))
}

/// [`supported_versions`] as ruma's type.
fn supported_room_versions() -> Vec<RoomVersionId> {
    supported_versions()
        .iter()
        .filter_map(|v| RoomVersionId::try_from(v.as_str()).ok())
        .collect()
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
    let (version, mut event) = make_template(app, server, room_id, user, membership).await?;
    let version = version.unwrap_or(RoomVersionId::V1);
    if !room_version::is_supported(&version) {
        return Err(JoinError::Refused(Error::new(
            ErrorKind::UnsupportedRoomVersion,
            format!("Room version {version} is not supported"),
        )));
    }
    let rules = version.rules().expect("supported versions have rules");
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
    let pdu =
        serde_json::value::to_raw_value(&object).map_err(|e| JoinError::Failed(e.to_string()))?;
    let (room, id) = (room_id.to_owned(), event_id.clone());
    // `send_join` and `send_leave` have a deprecated v1, tried when the
    // server does not know v2.
    let sent = match membership {
        "join" => {
            let mut request = create_join_event::v2::Request::new(room, id, pdu);
            // Faster joins: the state without most memberships, the rest
            // fetched in the background (`super::partial_state`). v1 has no
            // such answer.
            request.omit_members = omit_members;
            app.federation
                .send(server, request)
                .await
                .map(|answer| SendAnswer::from_join(answer.room_state))
        }
        "leave" => {
            let request = create_leave_event::v2::Request::new(room, id, pdu);
            app.federation
                .send(server, request)
                .await
                .map(|_| SendAnswer::default())
        }
        _ => {
            let request = create_knock_event::v1::Request::new(room, id, pdu);
            let answer = app
                .federation
                .send(server, request)
                .await
                .map_err(|e| send_failure(membership, e))?;
            let knock_room_state = answer
                .knock_room_state
                .iter()
                .filter_map(|s| serde_json::to_value(s).ok())
                .collect();
            Ok(SendAnswer {
                knock_room_state,
                ..SendAnswer::default()
            })
        }
    };
    let reply = match sent {
        Ok(reply) => reply,
        Err(e) if e.is_unknown_endpoint() => {
            send_v1(app, server, room_id, &event_id, membership, &object).await?
        }
        Err(e) => return Err(send_failure(membership, e)),
    };
    Ok(Handshake {
        object,
        event_id,
        version,
        rules,
        reply,
    })
}

/// The deprecated v1 `send_join` / `send_leave`, answered `[200, {…}]`. Not
/// ruma's: it has no v1 types for them.
async fn send_v1(
    app: &AppState,
    server: &ServerName,
    room_id: &RoomId,
    event_id: &EventId,
    membership: &str,
    object: &CanonicalJsonObject,
) -> std::result::Result<SendAnswer, JoinError> {
    let send_v1 = if membership == "join" {
        "v1/send_join"
    } else {
        "v1/send_leave"
    };
    let path = format!(
        "/_matrix/federation/{send_v1}/{}/{}",
        enc(room_id.as_str()),
        enc(event_id.as_str())
    );
    let body = serde_json::to_value(object).map_err(|e| JoinError::Failed(e.to_string()))?;
    let reply = app
        .federation
        .request_json(server, http::Method::PUT, &path, Some(&body))
        .await
        .map_err(|e| send_failure(membership, e))?;
    let body = v1_answer(reply).ok_or_else(|| {
        JoinError::Failed(format!(
            "{send_v1} answered something else than [200, {{…}}]"
        ))
    })?;
    Ok(SendAnswer::from_v1(&body))
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
    // the event writer: the invitee's push rules see it here, and
    // appservices interested in the invitee (or the room) get it here, in
    // the same transaction.
    if let Some(r) = &remote
        && membership == "invite"
    {
        crate::service::push::record_invite_actions(
            &mut tx,
            app,
            &checked.pdu,
            checked.event_id.as_str(),
            position,
            &r.stripped_state,
        )
        .await?;
        if !app.appservices.current().is_empty()
            && let Some(rules) = RoomVersionId::try_from(r.room_version.as_str())
                .ok()
                .and_then(|v| v.rules())
        {
            let text =
                serde_json::to_string(&checked.object).map_err(|e| anyhow::anyhow!("{e}"))?;
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
    }
    tx.commit().await?;
    drop(guard);
    Ok(())
}

//! Joins over federation: as the joining server (`make_join` → sign → `send_join`
//! → verify the returned state and auth chain → persist → live) and as the
//! resident server (the join template, accepting the signed join, answering
//! with the room's state and its auth chain).

use std::collections::{HashMap, HashSet};

use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, EventId, MilliSecondsSinceUnixEpoch, OwnedEventId,
    OwnedRoomId, OwnedServerName, RoomId, RoomVersionId, ServerName, UserId,
    events::TimelineEventType, signatures::hash_and_sign_event,
};
use serde_json::{Value, json};

use super::ingest::{self, Checked, Outcome, enc};
use crate::{
    domain::{
        auth,
        pdu::{self, Built, Pdu},
        room_version,
    },
    error::{Error, ErrorKind, Result},
    federation::client::FedError,
    service::AppState,
    service::event::{self, Placement, RoomCtx},
    storage::{events, federation as fed_store, rooms},
};

/// Room versions this server can join, for `make_join`'s `ver`: every version
/// it supports.
fn supported_versions() -> Vec<String> {
    room_version::SUPPORTED
        .iter()
        .map(|v| (*v).to_owned())
        .collect()
}

/// Joins `user` to a room hosted elsewhere, trying `servers` in order.
pub async fn remote_join(
    app: &AppState,
    user: &UserId,
    room_id: &RoomId,
    servers: &[OwnedServerName],
    extra: crate::service::membership::JoinContent,
) -> Result<OwnedRoomId> {
    if !app.config.federation.enabled {
        return Err(Error::not_found("No known servers for this room"));
    }
    let mut last_error = String::from("no servers to join through");
    for server in servers.iter().filter(|s| *s != &app.server_name) {
        match join_via(app, user, room_id, server, &extra).await {
            Ok(()) => return Ok(room_id.to_owned()),
            Err(JoinError::Refused(e)) => return Err(e),
            Err(JoinError::Failed(e)) => {
                tracing::info!(%room_id, %server, error = %e, "remote join failed");
                last_error = format!("{server}: {e}");
            }
        }
    }
    Err(Error::not_found(format!(
        "No server could be joined through ({last_error})"
    )))
}

enum JoinError {
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

async fn join_via(
    app: &AppState,
    user: &UserId,
    room_id: &RoomId,
    server: &ServerName,
    content: &crate::service::membership::JoinContent,
) -> std::result::Result<(), JoinError> {
    let mut extra = serde_json::Map::new();
    if let Ok(p) = crate::service::profile::get(app, user).await {
        if let Some(name) = p.displayname {
            extra.insert("displayname".into(), name.into());
        }
        if let Some(url) = p.avatar_url {
            extra.insert("avatar_url".into(), url.into());
        }
    }
    content.apply_to(&mut extra);
    // Partial state only for a first join: a room already partial-stated
    // here is joined with the whole state (its snapshot is the one the
    // resync fills).
    let ask_partial = app.config.federation.faster_joins
        && !crate::storage::partial_state::is_partial(&app.db, room_id.as_str()).await?;
    let Handshake {
        mut object,
        event_id,
        version,
        rules,
        reply,
    } = handshake(app, server, room_id, user, "join", extra, ask_partial).await?;
    let partial = ask_partial && reply["members_omitted"] == true;
    // A restricted join comes back signed by the authorising server too.
    if let Some(signed) = reply.get("event").filter(|e| e.is_object()) {
        let signed_object: CanonicalJsonObject =
            serde_json::from_value(signed.clone()).map_err(|e| JoinError::Failed(e.to_string()))?;
        if pdu::received_event_id(&rules, &signed_object).ok().as_ref() == Some(&event_id) {
            object = signed_object;
        }
    }

    // The room's state and auth chain: signatures, hashes and auth checked.
    let mut all: Vec<Value> = reply["auth_chain"].as_array().cloned().unwrap_or_default();
    let state_values: Vec<Value> = reply["state"].as_array().cloned().unwrap_or_default();
    all.extend(state_values.iter().cloned());
    let accepted = ingest::store_auth_events(app, &rules, room_id, &all)
        .await
        .map_err(JoinError::Failed)?;
    let mut state_map: HashMap<(String, String), String> = HashMap::new();
    for value in &state_values {
        let Ok(checked) = ingest::check_pdu(app, &rules, value).await else {
            continue;
        };
        if !accepted.contains(&checked.event_id) {
            continue;
        }
        if let Some(k) = &checked.pdu.state_key {
            state_map.insert(
                (checked.pdu.kind.to_string(), k.clone()),
                checked.event_id.to_string(),
            );
        }
    }
    let create_key = ("m.room.create".to_owned(), String::new());
    if !partial && reply["members_omitted"] == true {
        return Err(JoinError::Failed(
            "the answer is a partial state we did not ask for".into(),
        ));
    }
    let Some(create_id) = state_map.get(&create_key).cloned() else {
        return Err(JoinError::Failed(
            "the returned state has no create event".into(),
        ));
    };

    let text = serde_json::to_string(&object).map_err(|e| JoinError::Failed(e.to_string()))?;
    let pdu = Pdu::from_json(&event_id, &text).map_err(|e| JoinError::Failed(e.to_string()))?;
    let mut tx = app
        .db
        .begin()
        .await
        .map_err(|e| JoinError::Failed(e.to_string()))?;
    let creator = {
        let create = events::get(&mut *tx, &create_id)
            .await?
            .ok_or_else(|| JoinError::Failed("create event vanished".into()))?;
        create.sender
    };
    if rooms::get(&mut *tx, room_id.as_str()).await?.is_none() {
        rooms::insert(
            &mut *tx,
            room_id.as_str(),
            version.as_str(),
            &creator,
            app.clock.now_ms(),
        )
        .await?;
    }
    let Some(mut room) = RoomCtx::lock(&mut tx, room_id).await? else {
        return Err(JoinError::Failed("room row vanished".into()));
    };
    let state_before = event::write_snapshot(&mut tx, room_id.as_str(), state_map.clone()).await?;
    let before = ingest::full_state_pdus(&mut tx, room_id, Some(state_before)).await?;
    let auth_ids: Vec<String> = ingest::auth_ids_of(&pdu, &rules)
        .iter()
        .map(|e| e.to_string())
        .collect();
    let auth_events: HashMap<OwnedEventId, Pdu> = ingest::load_pdus(&mut *tx, room_id, &auth_ids)
        .await?
        .into_iter()
        .map(|(id, (p, _))| (id, p))
        .collect();
    auth::authorize_with(&rules, &pdu, &auth_events, &before)
        .map_err(|e| JoinError::Failed(format!("our join fails auth against the room: {e}")))?;
    // Everyone's membership as of the join, then the join itself.
    let members: Vec<(String, String)> = state_map
        .iter()
        .filter(|((t, _), _)| t == "m.room.member")
        .map(|((_, k), id)| (k.clone(), id.clone()))
        .collect();
    for (member, id) in &members {
        if let Some((p, _)) = EventId::parse(id).ok().and_then(|i| {
            before
                .values()
                .find(|p| p.event_id == i)
                .map(|p| (p.clone(), ()))
        }) {
            let content: Value = serde_json::from_str(p.content.get()).unwrap_or_default();
            let membership = content["membership"].as_str().unwrap_or("leave");
            rooms::set_membership(&mut *tx, room_id.as_str(), member, membership, id, 0).await?;
        }
    }
    let group = event::new_state_group(
        &mut tx,
        room_id.as_str(),
        Some(state_before),
        ("m.room.member".to_owned(), user.to_string()),
        event_id.as_str(),
    )
    .await?;
    let old_extremities = room.extremities.clone();
    event::write_event(
        &mut tx,
        app,
        &mut room,
        Built {
            event_id: event_id.clone(),
            room_id: room_id.to_owned(),
            json: object,
            pdu,
        },
        Placement {
            state_group: Some(group),
            replaces_extremities: &old_extremities,
            current_state_group: Some(group),
            membership: true,
        },
    )
    .await?;
    if partial {
        let servers = resync_servers(app, server, &reply["servers_in_room"]);
        crate::storage::partial_state::insert(
            &mut *tx,
            &crate::storage::partial_state::PartialRoom {
                room_id: room_id.to_string(),
                join_event_id: event_id.to_string(),
                state_group: state_before,
                servers,
                attempts: 0,
            },
            app.clock.now_ms(),
        )
        .await?;
    }
    tx.commit()
        .await
        .map_err(|e| JoinError::Failed(e.to_string()))?;
    event::release(room);
    if partial {
        app.metrics.partial_join(false);
        app.partial_state.wake.notify_one();
    }
    tracing::info!(%room_id, %server, %user, partial, "joined over federation");
    Ok(())
}

/// Where a partial state is completed from: the server joined through, then
/// the answer's `servers_in_room` (valid server names, ours left out, at
/// most [`super::partial_state::MAX_SERVERS`]).
fn resync_servers(app: &AppState, joined_through: &ServerName, listed: &Value) -> Vec<String> {
    let mut servers = vec![joined_through.to_string()];
    for s in listed.as_array().into_iter().flatten() {
        let Some(name) = s.as_str().and_then(|s| ServerName::parse(s).ok()) else {
            continue;
        };
        if name != app.server_name && !servers.iter().any(|k| k == name.as_str()) {
            servers.push(name.to_string());
        }
        if servers.len() >= super::partial_state::MAX_SERVERS {
            break;
        }
    }
    servers
}

/// `make_join` as the resident server: a join template for `user` on the
/// room's current state, if the auth rules would let them join.
pub async fn make_join(
    app: &AppState,
    origin: &ServerName,
    room_id: &RoomId,
    user: &UserId,
    versions: &[String],
) -> Result<Value> {
    membership_template(app, origin, room_id, user, "join", Some(versions)).await
}

/// `make_leave` as the resident server: a leave template for `user`, if the
/// auth rules would let them leave (they are joined, invited or knocking).
pub async fn make_leave(
    app: &AppState,
    origin: &ServerName,
    room_id: &RoomId,
    user: &UserId,
) -> Result<Value> {
    membership_template(app, origin, room_id, user, "leave", None).await
}

/// `make_knock` as the resident server: a knock template for `user`, if the
/// room's version knows knocking and the auth rules would allow it.
pub async fn make_knock(
    app: &AppState,
    origin: &ServerName,
    room_id: &RoomId,
    user: &UserId,
    versions: &[String],
) -> Result<Value> {
    membership_template(app, origin, room_id, user, "knock", Some(versions)).await
}

/// The `make_*` answer: a `membership` event template for `user` (of the
/// requesting server) on the room's current state, when the requester supports
/// the room's version (`versions`, for joins and knocks) and the auth rules
/// would allow the event.
async fn membership_template(
    app: &AppState,
    origin: &ServerName,
    room_id: &RoomId,
    user: &UserId,
    membership: &str,
    versions: Option<&[String]>,
) -> Result<Value> {
    if user.server_name() != origin {
        return Err(Error::forbidden("The user is not on the requesting server"));
    }
    let mut tx = app.db.begin().await?;
    let Some(room) = RoomCtx::lock(&mut tx, room_id).await? else {
        return Err(Error::not_found("Unknown room"));
    };
    drop(tx);
    // A room all our users have left is one this server no longer takes part
    // in: it cannot vouch for its current state (Synapse: "Not an active room
    // on this server"). Leaving needs no such vouching.
    if membership != "leave"
        && !rooms::has_joined_members_of(&app.db, room_id.as_str(), app.server_name.as_str())
            .await?
    {
        return Err(Error::not_found("Not an active room on this server"));
    }
    // Joined with partial state: it knows too few memberships to vouch for
    // the room (Synapse answers 404 too; the joiner tries another server).
    if membership != "leave"
        && crate::storage::partial_state::is_partial(&app.db, room_id.as_str()).await?
    {
        return Err(Error::not_found(
            "This server is not fully joined to the room yet",
        ));
    }
    let version = room.version.to_string();
    let unsupported = versions.is_some_and(|v| !v.iter().any(|v| v == &version));
    let no_knocking = membership == "knock" && !room.rules.authorization.knocking;
    if unsupported || no_knocking {
        let message = if membership == "knock" {
            "Your server does not support knocking in this room's version"
        } else {
            "Your server does not support this room's version"
        };
        return Err(Error::new(
            ErrorKind::IncompatibleRoomVersion {
                room_version: version,
            },
            message,
        ));
    }
    let mut content = json!({ "membership": membership });
    if membership == "join" {
        let mut tx = app.db.begin().await?;
        if let Some(authoriser) = restricted_authoriser(&mut tx, app, &room, user).await? {
            content["join_authorised_via_users_server"] = authoriser.into();
        }
    }
    let template = template_for(
        app,
        &room,
        user,
        "m.room.member",
        Some(user.as_str()),
        content,
    )
    .await?;
    Ok(json!({"room_version": version, "event": template}))
}

/// For a restricted room, the local member who authorises `user`'s join
/// (spec "Restricted rooms": the resident server picks one who may invite and
/// signs the join); none when the room is not restricted or the user is
/// already joined or invited. An error when this server cannot authorise it:
/// `M_UNABLE_TO_AUTHORISE_JOIN` when an allowed room is one it is not in (the
/// joining server tries another), `M_FORBIDDEN` when the user is in none of
/// the allowed rooms it knows, `M_UNABLE_TO_GRANT_JOIN` when no local member
/// may invite.
async fn restricted_authoriser(
    tx: &mut crate::storage::Transaction<'_, crate::storage::Postgres>,
    app: &AppState,
    room: &RoomCtx,
    user: &UserId,
) -> Result<Option<String>> {
    let current = rooms::membership(&mut **tx, room.room_id().as_str(), user.as_str()).await?;
    if matches!(current.as_deref(), Some("join" | "invite")) {
        return Ok(None);
    }
    use crate::service::membership::Restricted;
    match crate::service::membership::restricted_join(tx, app, room, user).await? {
        Restricted::Open => Ok(None),
        Restricted::Authorised(member) => Ok(Some(member)),
        Restricted::NotAllowed { unknown: true } => Err(Error::new(
            ErrorKind::UnableToAuthoriseJoin,
            "This server cannot tell whether the user is in an allowed room",
        )),
        Restricted::NotAllowed { unknown: false } => Err(Error::forbidden(
            "You do not belong to any of the rooms this room allows",
        )),
        Restricted::NoAuthoriser => Err(Error::new(
            ErrorKind::UnableToGrantJoin,
            "No user of this server may authorise the join",
        )),
    }
}

/// An unsigned event on the room's current state, checked against the auth
/// rules as far as the missing signature allows.
async fn template_for(
    app: &AppState,
    room: &RoomCtx,
    sender: &UserId,
    kind: &str,
    state_key: Option<&str>,
    content: Value,
) -> Result<Value> {
    let kind_t: TimelineEventType = kind.into();
    let raw = serde_json::value::to_raw_value(&content).map_err(|e| anyhow::anyhow!("{e}"))?;
    let keys = event::auth_keys(&room.rules, &kind_t, sender, state_key, &raw)?;
    let mut tx = app.db.begin().await?;
    let state = event::state_events(&mut tx, room.state_group, &keys).await?;
    let auth_ids = event::auth_event_ids(&room.rules, &state);
    // Event format v1 references events as `[id, {"sha256": hash}]` pairs.
    let (prev_events, auth_events) = if pdu::is_v1_format(&room.rules) {
        let mut ids = room.extremities.clone();
        ids.extend(auth_ids.iter().cloned());
        let hashes = event::reference_hashes(&mut tx, &room.rules, &ids).await?;
        let pairs = |ids: &[OwnedEventId]| -> Value {
            ids.iter()
                .map(|id| json!([id, { "sha256": hashes.get(id) }]))
                .collect()
        };
        (pairs(&room.extremities), pairs(&auth_ids))
    } else {
        (json!(room.extremities), json!(auth_ids))
    };
    drop(tx);
    let mut template = json!({
        "type": kind,
        "content": content,
        "sender": sender,
        "room_id": room.room_id(),
        "prev_events": prev_events,
        "auth_events": auth_events,
        "depth": room.depth + 1,
        "origin_server_ts": MilliSecondsSinceUnixEpoch::now(),
        "origin": app.server_name.as_str(),
    });
    if let Some(k) = state_key {
        template["state_key"] = k.into();
    }
    let placeholder = EventId::parse("$template").map_err(|e| anyhow::anyhow!("{e}"))?;
    let pdu = Pdu::from_json(&placeholder, &template.to_string())
        .map_err(|e| anyhow::anyhow!("template: {e}"))?;
    auth::authorize(&room.rules, &pdu, &state)
        .map_err(|reason| Error::forbidden(format!("Not allowed: {reason}")))?;
    Ok(template)
}

/// What the resident server answers a `send_join` with: the room's state
/// before the join and that state's auth chain, as PDUs.
pub struct JoinedState {
    pub state: Vec<Value>,
    pub auth_chain: Vec<Value>,
    /// The join with this server's signature added, when it authorised a
    /// restricted join (`send_join`'s `event`).
    pub event: Option<Value>,
    /// When membership events were left out of `state` (`omit_members`):
    /// the servers with joined members before the join.
    pub servers_in_room: Option<Vec<String>>,
}

/// `send_join` (v1 and v2) as the resident server: accepts the signed join
/// like any received PDU, sends it on to the other servers in the room, and
/// answers with the state before it and the auth chain of that state — with
/// `omit_members` (v2 only), the reduced answer of faster joins (see
/// [`super::faster_join`]). Nothing of the room is read before the join is
/// accepted: a refused join learns what a full `send_join` would tell it.
pub async fn send_join(
    app: &AppState,
    origin: &ServerName,
    room_id: &RoomId,
    event_id: &EventId,
    body: &Value,
    omit_members: bool,
) -> Result<JoinedState> {
    // A restricted join this server authorises gets its signature first (the
    // auth rules require it).
    let countersigned = authorise_restricted(app, origin, room_id, body).await?;
    let body = countersigned.as_ref().unwrap_or(body);
    let (rules, joiner) = accept_membership(app, origin, room_id, event_id, body, "join").await?;
    // Only a join that is the user's membership now is answered: the same
    // join sent again after it was rejected or soft-failed (held, so "already
    // known"), or after the user left, gets no state.
    let current = rooms::member_event(&app.db, room_id.as_str(), joiner.as_str()).await?;
    if current.as_ref().map(|(m, id)| (m.as_str(), id.as_str()))
        != Some(("join", event_id.as_str()))
    {
        return Err(Error::forbidden("The join was not accepted"));
    }
    let stored = events::get(&app.db, event_id.as_str())
        .await?
        .ok_or_else(|| Error::forbidden("The join was not accepted"))?;
    let pdu = Pdu::from_json(event_id, &stored.json).map_err(|e| anyhow::anyhow!("{e}"))?;
    // The reduced answer only where the joining server can fetch the rest:
    // the state at the join's prev events, which it may read when it may see
    // them (not, say, before its join in a `joined`-visibility room).
    let omit_members = omit_members
        && super::faster_join::prev_events_readable(app, origin, room_id, &pdu).await?;
    app.metrics.send_join_answered(omit_members);
    if !omit_members {
        let (state, auth_chain) = state_and_auth_chain_before(app, &rules, room_id, &pdu).await?;
        return Ok(JoinedState {
            state,
            auth_chain,
            event: countersigned,
            servers_in_room: None,
        });
    }
    let partial =
        super::faster_join::partial_state_before(app, &rules, room_id, event_id, &joiner, &pdu)
            .await?;
    tracing::info!(
        %room_id, %origin, state = partial.state.len(), auth_chain = partial.auth_chain.len(),
        "send_join answered with members omitted"
    );
    Ok(JoinedState {
        state: jsons(app, &partial.state).await?,
        auth_chain: jsons(app, &partial.auth_chain).await?,
        event: countersigned,
        servers_in_room: Some(partial.servers_in_room),
    })
}

/// The join `body` with this server's signature added, when it names one of
/// our users in `join_authorised_via_users_server`: only if this server would
/// authorise that join itself now (the user is in an allowed room it knows,
/// and the named member may invite), so no server gets a join signed that
/// `make_join` would have refused. `None` when it names no user of ours.
async fn authorise_restricted(
    app: &AppState,
    origin: &ServerName,
    room_id: &RoomId,
    body: &Value,
) -> Result<Option<Value>> {
    let Some(authoriser) = body["content"]["join_authorised_via_users_server"].as_str() else {
        return Ok(None);
    };
    let Ok(authoriser) = UserId::parse(authoriser) else {
        return Err(Error::bad_json("Invalid join_authorised_via_users_server"));
    };
    if authoriser.server_name() != app.server_name {
        return Ok(None);
    }
    let Some(user) = body["state_key"]
        .as_str()
        .and_then(|u| UserId::parse(u).ok())
    else {
        return Err(Error::bad_json(
            "A join needs the joining user as state_key",
        ));
    };
    if user.server_name() != origin {
        return Err(Error::forbidden("The user is not on the requesting server"));
    }
    let mut tx = app.db.begin().await?;
    let Some(room) = RoomCtx::load_unlocked(&mut tx, room_id).await? else {
        return Err(Error::not_found("Unknown room"));
    };
    let chosen = restricted_authoriser(&mut tx, app, &room, &user).await?;
    let rules = room.rules.clone();
    drop(tx);
    if chosen.is_none() {
        return Err(Error::forbidden(
            "This server authorises no such join: the room is not restricted, or the user is in it",
        ));
    }
    // Any local member who may invite will do (the auth rules check the
    // named one's membership and power).
    let mut object: CanonicalJsonObject = serde_json::from_value(body.clone())
        .map_err(|e| Error::bad_json(format!("Invalid join event: {e}")))?;
    super::invite::countersign(app, &rules, &mut object)?;
    Ok(Some(
        serde_json::to_value(&object).map_err(|e| anyhow::anyhow!("{e}"))?,
    ))
}

/// `send_leave` (v1 and v2) as the resident server: accepts the signed leave
/// like any received PDU and sends it on to the other servers in the room.
pub async fn send_leave(
    app: &AppState,
    origin: &ServerName,
    room_id: &RoomId,
    event_id: &EventId,
    body: &Value,
) -> Result<()> {
    accept_membership(app, origin, room_id, event_id, body, "leave").await?;
    Ok(())
}

/// `send_knock` as the resident server: accepts the signed knock like any
/// received PDU, sends it on, and answers with the room's stripped state.
pub async fn send_knock(
    app: &AppState,
    origin: &ServerName,
    room_id: &RoomId,
    event_id: &EventId,
    body: &Value,
) -> Result<Value> {
    let (_, knocker) = accept_membership(app, origin, room_id, event_id, body, "knock").await?;
    let mut tx = app.db.begin().await?;
    let Some(room) = RoomCtx::load_unlocked(&mut tx, room_id).await? else {
        return Err(Error::not_found("Unknown room"));
    };
    let state = super::invite::invite_room_state(&mut tx, &room, &knocker).await?;
    drop(tx);
    Ok(json!({ "knock_room_state": state }))
}

/// The `send_*` side of the resident server: the event must be the requesting
/// server's user's own `membership` event with this ID; it goes through the
/// receipt checks like any PDU and is then sent on to the room's other servers.
/// Returns the room's rules and the event's sender.
async fn accept_membership(
    app: &AppState,
    origin: &ServerName,
    room_id: &RoomId,
    event_id: &EventId,
    body: &Value,
    membership: &str,
) -> Result<(
    ruma::room_version_rules::RoomVersionRules,
    ruma::OwnedUserId,
)> {
    let Some(room) = rooms::get(&app.db, room_id.as_str()).await? else {
        return Err(Error::not_found("Unknown room"));
    };
    let rules = RoomVersionId::try_from(room.room_version.as_str())
        .ok()
        .and_then(|v| v.rules())
        .ok_or_else(|| anyhow::anyhow!("stored room version"))?;
    let checked: Checked = ingest::check_pdu(app, &rules, body)
        .await
        .map_err(|e| match e {
            ingest::PduError::Format(e) => {
                Error::bad_json(format!("Invalid {membership} event: {e}"))
            }
            ingest::PduError::Signature(e) => {
                Error::forbidden(format!("The {membership} event is not signed: {e}"))
            }
        })?;
    // Only a server's own users' membership: another server's event, even
    // one it signed (a join replayed after its user left), is not the
    // requester's to send.
    if checked.pdu.sender.server_name() != origin {
        return Err(Error::forbidden(format!(
            "Not allowed to send a {membership} on behalf of another server"
        )));
    }
    let content: Value = serde_json::from_str(checked.pdu.content.get()).unwrap_or_default();
    if checked.event_id != event_id
        || checked.pdu.kind != TimelineEventType::RoomMember
        || checked.pdu.state_key.as_deref() != Some(checked.pdu.sender.as_str())
        || content["membership"] != membership
    {
        return Err(Error::bad_json(format!(
            "Not a {membership} event of the requesting server for this ID"
        )));
    }
    // Guests are a local concept, so the joining server marks a guest's join
    // (`"kind": "guest"`) and the room's servers hold it to the room's
    // `m.room.guest_access`, as Synapse does.
    if membership == "join" && content["kind"] == "guest" && !guests_may_join(app, room_id).await? {
        return Err(Error::new(
            ErrorKind::GuestAccessForbidden,
            "Guests may not join this room",
        ));
    }
    let sender = checked.pdu.sender.clone();
    match ingest::receive_checked_pub(app, origin, &rules, room_id, checked).await {
        Ok(Outcome::Accepted | Outcome::AlreadyKnown) => {}
        Ok(Outcome::SoftFailed) => {
            return Err(Error::forbidden(format!(
                "The {membership} is not allowed now"
            )));
        }
        Err(e) => {
            return Err(Error::forbidden(format!(
                "The {membership} is not allowed: {e}"
            )));
        }
    }
    let mut others = rooms::joined_servers(&app.db, room_id.as_str()).await?;
    others.retain(|s| s != app.server_name.as_str() && s != origin.as_str());
    if !others.is_empty() {
        let now = app.clock.now_ms();
        fed_store::enqueue_pdu(
            &app.db,
            &others,
            event_id.as_str(),
            room_id.as_str(),
            now,
            super::down_before(app, now),
        )
        .await?;
        app.federation_wake.notify_one();
    }
    Ok((rules, sender))
}

/// Whether the room's current `m.room.guest_access` is `can_join`.
async fn guests_may_join(app: &AppState, room_id: &RoomId) -> Result<bool> {
    let access =
        crate::service::read::state_content(app, room_id, None, "m.room.guest_access").await?;
    Ok(access.is_some_and(|c| c["guest_access"] == "can_join"))
}

/// The state before an event (resolved over its prev events) and the auth chain
/// of that state, as PDU JSON.
pub async fn state_and_auth_chain_before(
    app: &AppState,
    rules: &ruma::room_version_rules::RoomVersionRules,
    room_id: &RoomId,
    pdu: &Pdu,
) -> Result<(Vec<Value>, Vec<Value>)> {
    let ids = state_ids_before(app, rules, room_id, pdu).await?;
    let chain = auth_chain_ids(app, room_id, &ids).await?;
    Ok((jsons(app, &ids).await?, jsons(app, &chain).await?))
}

/// The IDs of the state before an event.
pub async fn state_ids_before(
    app: &AppState,
    rules: &ruma::room_version_rules::RoomVersionRules,
    room_id: &RoomId,
    pdu: &Pdu,
) -> Result<Vec<String>> {
    Ok(keyed_state_before(app, rules, room_id, pdu)
        .await?
        .into_iter()
        .map(|(_, id)| id)
        .collect())
}

/// The state before an event: `(type, state_key)` → event ID.
pub async fn keyed_state_before(
    app: &AppState,
    rules: &ruma::room_version_rules::RoomVersionRules,
    room_id: &RoomId,
    pdu: &Pdu,
) -> Result<Vec<crate::storage::state::Entry>> {
    let prev: Vec<String> = pdu.prev_events.iter().map(|e| e.to_string()).collect();
    let mut tx = app.db.begin().await?;
    // Prev events held as outliers (soft-failed, or rejected: the state
    // before them) count with the state they were kept with.
    let groups = ingest::prev_state_groups(&mut tx, room_id, &prev).await?;
    let group = ingest::resolved_group(&mut tx, rules, room_id, &groups).await?;
    let entries = match group {
        Some(g) => crate::storage::state::full_state(&mut *tx, g).await?,
        None => Vec::new(),
    };
    tx.commit().await?;
    Ok(entries)
}

/// Every event reachable through `auth_events` from `ids` (not `ids` themselves
/// unless reachable).
pub async fn auth_chain_ids(
    app: &AppState,
    room_id: &RoomId,
    ids: &[String],
) -> Result<Vec<String>> {
    let mut seen: HashSet<String> = HashSet::new();
    let mut todo: Vec<String> = ids.to_vec();
    while !todo.is_empty() {
        let loaded = ingest::load_pdus(&app.db, room_id, &todo).await?;
        todo.clear();
        for (_, (pdu, _)) in loaded {
            for a in pdu.auth_events {
                if seen.insert(a.to_string()) {
                    todo.push(a.to_string());
                }
            }
        }
    }
    Ok(seen.into_iter().collect())
}

/// The stored PDU JSON of each event.
pub async fn jsons(app: &AppState, ids: &[String]) -> Result<Vec<Value>> {
    Ok(events::get_many(&app.db, ids)
        .await?
        .into_iter()
        .filter_map(|e| serde_json::from_str(&e.json).ok())
        .collect())
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
struct Handshake {
    object: CanonicalJsonObject,
    event_id: OwnedEventId,
    version: RoomVersionId,
    rules: ruma::room_version_rules::RoomVersionRules,
    reply: Value,
}

/// Our side of a membership change in a room this server is not in: asks
/// `server` for a `membership` template (`make_join`, `make_leave`,
/// `make_knock`), checks it is the event we asked for, adds `extra` content,
/// signs it and sends it back (`send_*`, falling back to the deprecated v1
/// when the server does not know v2). The room's refusal (see
/// [`make_failure`], [`send_failure`]) or an unsupported room version is the
/// answer (`Refused`); anything else may go better elsewhere.
async fn handshake(
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
fn make_failure(membership: &str, e: FedError) -> JoinError {
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
fn send_failure(membership: &str, e: FedError) -> JoinError {
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
fn passed_through(membership: &str, status: u16, body: &str) -> Error {
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

fn checked_of(object: CanonicalJsonObject, event_id: OwnedEventId) -> Result<Checked> {
    let text = serde_json::to_string(&object).map_err(|e| anyhow::anyhow!("{e}"))?;
    let pdu = Pdu::from_json(&event_id, &text).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(Checked {
        event_id,
        object,
        pdu,
    })
}

/// Rejects an invite to (or withdraws a knock on) a room this server is not
/// in, through the inviting (or knocked-through) server: `make_leave`, sign,
/// `send_leave`; the user's membership becomes `leave` (the leave event kept as
/// an outlier).
pub async fn leave_remote(
    app: &AppState,
    user: &UserId,
    room_id: &RoomId,
    server: &ServerName,
    reason: Option<String>,
) -> Result<()> {
    let mut extra = serde_json::Map::new();
    if let Some(reason) = reason {
        extra.insert("reason".into(), reason.into());
    }
    let done = handshake(app, server, room_id, user, "leave", extra, false)
        .await
        .map_err(|e| {
            let e = match e {
                JoinError::Refused(e) => e.to_string(),
                JoinError::Failed(e) => e,
            };
            Error::new(
                ErrorKind::Unknown,
                format!("Leaving through {server} failed: {e}"),
            )
        })?;
    let checked = checked_of(done.object, done.event_id)?;
    record_remote_membership(app, &checked, "leave", None).await
}

/// Rejects an invite to (or withdraws a knock on) a room this server is not
/// in when the room's server cannot do it (unreachable, or refusing): a leave
/// of our own after the invite or knock, kept as an outlier, so the user is out
/// of it here; the room's servers never hear of it (Synapse's "out-of-band"
/// leave).
pub async fn leave_out_of_band(
    app: &AppState,
    user: &UserId,
    room_id: &RoomId,
    remote: &fed_store::RemoteMembership,
    reason: Option<String>,
) -> Result<()> {
    let rules = RoomVersionId::try_from(remote.room_version.as_str())
        .ok()
        .and_then(|v| v.rules())
        .ok_or_else(|| anyhow::anyhow!("stored room version {}", remote.room_version))?;
    let before_id = EventId::parse(&remote.event_id).map_err(|e| anyhow::anyhow!("{e}"))?;
    let before = events::get(&app.db, before_id.as_str())
        .await?
        .ok_or_else(|| anyhow::anyhow!("the {} event is gone", remote.membership))?;
    // Event format v1 references events with their reference hashes.
    let reference = if pdu::is_v1_format(&rules) {
        let mut tx = app.db.begin().await?;
        let hashes =
            event::reference_hashes(&mut tx, &rules, std::slice::from_ref(&before_id)).await?;
        drop(tx);
        json!([[before_id, { "sha256": hashes.get(&before_id) }]])
    } else {
        json!([before_id])
    };
    let mut content = json!({ "membership": "leave" });
    if let Some(reason) = reason {
        content["reason"] = reason.into();
    }
    let template = json!({
        "type": "m.room.member",
        "state_key": user,
        "sender": user,
        "room_id": room_id,
        "content": content,
        "prev_events": reference,
        "auth_events": reference,
        "depth": before.depth + 1,
    });
    let (object, event_id) =
        sign_template(app, template, &rules).map_err(|e| anyhow::anyhow!(e))?;
    let checked = checked_of(object, event_id)?;
    record_remote_membership(app, &checked, "leave", None).await
}

/// Knocks on a room this server is not in, through the first of `servers`
/// that accepts: `make_knock`, sign, `send_knock`; the knock is kept as an
/// outlier with the stripped state the server sent, and the user's membership
/// becomes `knock`.
pub async fn knock_remote(
    app: &AppState,
    user: &UserId,
    room_id: &RoomId,
    servers: &[OwnedServerName],
    reason: Option<String>,
) -> Result<()> {
    let mut extra = serde_json::Map::new();
    if let Some(reason) = reason {
        extra.insert("reason".into(), reason.into());
    }
    let mut last_error = String::from("no servers to knock through");
    for server in servers {
        let done = match handshake(app, server, room_id, user, "knock", extra.clone(), false).await
        {
            Ok(done) => done,
            Err(JoinError::Refused(e)) => return Err(e),
            Err(JoinError::Failed(e)) => {
                last_error = format!("{server}: {e}");
                continue;
            }
        };
        let mut state: Vec<Value> = done.reply["knock_room_state"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        state.retain(Value::is_object);
        let remote = fed_store::RemoteMembership {
            membership: "knock".into(),
            event_id: done.event_id.to_string(),
            room_version: done.version.to_string(),
            via_server: server.to_string(),
            stripped_state: Value::Array(state),
        };
        let checked = checked_of(done.object, done.event_id)?;
        return record_remote_membership(app, &checked, "knock", Some(remote)).await;
    }
    Err(Error::not_found(format!(
        "No server could be knocked through ({last_error})"
    )))
}

//! The resident server's side of joins, leaves and knocks: the `make_*`
//! templates (restricted joins authorised by a local member), and accepting
//! the signed `send_*` event (answering a join with the room's state and its
//! auth chain).

use ruma::{
    CanonicalJsonObject, EventId, MilliSecondsSinceUnixEpoch, OwnedEventId, RoomId, RoomVersionId,
    ServerName, UserId, events::TimelineEventType,
};
use serde_json::{Value, json};

use super::ingest::{self, Checked, Outcome};
use super::state_before::{jsons, state_and_auth_chain_before};
use crate::{
    domain::{
        auth,
        pdu::{self, Pdu},
    },
    error::{Error, ErrorKind, Result},
    service::AppState,
    service::event::{self, RoomCtx},
    storage::{events, federation as fed_store, rooms},
};

/// `make_join` as the resident server: a join template for `user` on the
/// room's current state, if the auth rules would let them join.
pub async fn make_join(
    app: &AppState,
    origin: &ServerName,
    room_id: &RoomId,
    user: &UserId,
    versions: &[RoomVersionId],
) -> Result<Template> {
    membership_template(app, origin, room_id, user, "join", Some(versions)).await
}

/// `make_leave` as the resident server: a leave template for `user`, if the
/// auth rules would let them leave (they are joined, invited or knocking).
pub async fn make_leave(
    app: &AppState,
    origin: &ServerName,
    room_id: &RoomId,
    user: &UserId,
) -> Result<Template> {
    membership_template(app, origin, room_id, user, "leave", None).await
}

/// `make_knock` as the resident server: a knock template for `user`, if the
/// room's version knows knocking and the auth rules would allow it.
pub async fn make_knock(
    app: &AppState,
    origin: &ServerName,
    room_id: &RoomId,
    user: &UserId,
    versions: &[RoomVersionId],
) -> Result<Template> {
    membership_template(app, origin, room_id, user, "knock", Some(versions)).await
}

/// A `make_*` answer: the room's version and the event template, for the
/// requesting server to fill in and sign.
pub struct Template {
    pub room_version: RoomVersionId,
    pub event: Value,
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
    versions: Option<&[RoomVersionId]>,
) -> Result<Template> {
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
    let version = room.version.clone();
    let unsupported = versions.is_some_and(|v| !v.contains(&version));
    let no_knocking = membership == "knock" && !room.rules.authorization.knocking;
    if unsupported || no_knocking {
        let message = if membership == "knock" {
            "Your server does not support knocking in this room's version"
        } else {
            "Your server does not support this room's version"
        };
        return Err(Error::new(
            ErrorKind::IncompatibleRoomVersion {
                room_version: version.to_string(),
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
    Ok(Template {
        room_version: version,
        event: template,
    })
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
/// received PDU, sends it on, and answers with the room's stripped state
/// (full PDUs, as invites carry it).
pub async fn send_knock(
    app: &AppState,
    origin: &ServerName,
    room_id: &RoomId,
    event_id: &EventId,
    body: &Value,
) -> Result<Vec<Value>> {
    let (_, knocker) = accept_membership(app, origin, room_id, event_id, body, "knock").await?;
    let mut tx = app.db.begin().await?;
    let Some(room) = RoomCtx::load_unlocked(&mut tx, room_id).await? else {
        return Err(Error::not_found("Unknown room"));
    };
    let state = super::invite::invite_room_state(&mut tx, &room, &knocker).await?;
    drop(tx);
    Ok(state)
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

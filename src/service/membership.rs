//! Membership changes: join, leave, invite, kick, ban, unban, knock, forget.
//! Each is one `m.room.member` event through the local event path; the room
//! version's auth rules decide whether it is allowed.

use ruma::{OwnedRoomId, RoomId, UserId};
use serde_json::{Value, json};

use super::event::{self, RoomCtx};
use crate::{
    domain::pdu::NewEvent,
    error::{Error, ErrorKind, Result},
    service::AppState,
    storage::{rooms, users},
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    Invite,
    Kick,
    Ban,
    Unban,
}

/// Refuses membership changes that bring local users into a room an
/// administrator blocked (joins, invites of local users).
pub async fn ensure_not_blocked(app: &AppState, room_id: &RoomId) -> Result<()> {
    if rooms::blocked_by(&app.db, room_id.as_str())
        .await?
        .is_some()
    {
        return Err(Error::forbidden(
            "This room has been blocked on this server",
        ));
    }
    Ok(())
}

/// Whether one of our users is joined to the room (so this server is in it).
async fn resident(app: &AppState, room_id: &RoomId) -> Result<bool> {
    Ok(rooms::has_joined_members_of(&app.db, room_id.as_str(), app.server_name.as_str()).await?)
}

/// What a joining client puts in its member event beyond `membership`: the
/// join body's keys (`reason`, and any custom content, which Synapse keeps),
/// but never the keys the server owns.
#[derive(Debug, Clone, Default)]
pub struct JoinContent(serde_json::Map<String, Value>);

impl JoinContent {
    /// From the body of `POST /join/{roomIdOrAlias}` or `/rooms/{roomId}/join`.
    pub fn from_body(mut body: serde_json::Map<String, Value>) -> Self {
        for owned in [
            "membership",
            "join_authorised_via_users_server",
            "third_party_signed",
            "third_party_invite",
        ] {
            body.remove(owned);
        }
        Self(body)
    }

    /// Marks the join as a guest's (`"kind": "guest"`, as Synapse sends it
    /// over federation): the resident server, which alone knows the room's
    /// `m.room.guest_access`, refuses it unless guests may join.
    pub fn as_guest(mut self) -> Self {
        self.0.insert("kind".into(), "guest".into());
        self
    }

    /// Adds these keys to a member event's content, over what is there
    /// (the profile; a client may join with a per-room name, as with Synapse).
    pub fn apply_to(&self, content: &mut serde_json::Map<String, Value>) {
        for (key, value) in &self.0 {
            content.insert(key.clone(), value.clone());
        }
    }
}

/// Joins a room: locally when this server is in it, otherwise over federation
/// through `servers` (and the room ID's server, for room versions that have one).
pub async fn join_via(
    app: &AppState,
    user: &UserId,
    room_id: &RoomId,
    extra: JoinContent,
    servers: &[ruma::OwnedServerName],
) -> Result<OwnedRoomId> {
    ensure_not_blocked(app, room_id).await?;
    // A room joined with partial state: this server cannot vouch for the
    // joiner's membership (it may not know of a ban), so the join goes
    // through a resident server, as Synapse's does.
    let local_members = resident(app, room_id).await?
        && !crate::storage::partial_state::is_partial(&app.db, room_id.as_str()).await?;
    let known = rooms::get(&app.db, room_id.as_str()).await?.is_some();
    // A room we left whole is joined again through the server that invited
    // us back: our copy of its state stopped with our leave.
    let invited_from_afar = !local_members
        && crate::storage::federation::remote_membership(&app.db, room_id.as_str(), user.as_str())
            .await?
            .is_some();
    if known && (local_members || (servers.is_empty() && !invited_from_afar)) {
        return join(app, user, room_id, extra).await;
    }
    // A guest may join only where m.room.guest_access says can_join, which
    // only a server in the room can read: the join says it is a guest's, and
    // the resident server checks (as between Synapses).
    let extra = if users::get(&app.db, user.as_str())
        .await?
        .is_some_and(|u| u.is_guest)
    {
        extra.as_guest()
    } else {
        extra
    };
    let mut candidates: Vec<ruma::OwnedServerName> = servers.to_vec();
    // An invite from (or a knock through) another server: that server is in
    // the room.
    if let Some(remote) =
        crate::storage::federation::remote_membership(&app.db, room_id.as_str(), user.as_str())
            .await?
        && let Ok(server) = ruma::OwnedServerName::try_from(remote.via_server)
    {
        candidates.insert(0, server);
    }
    if let Some(server) = room_id.server_name() {
        candidates.push(server.to_owned());
    }
    // Servers of members we know of (an invite names its sender's server).
    for (member, _) in rooms::members(&app.db, room_id.as_str(), "join").await? {
        if let Ok(u) = UserId::parse(member.as_str()) {
            candidates.push(u.server_name().to_owned());
        }
    }
    // A room joined with partial state: the servers its resident named.
    for server in crate::storage::partial_state::servers(&app.db, room_id.as_str()).await? {
        if let Ok(server) = ruma::OwnedServerName::try_from(server) {
            candidates.push(server);
        }
    }
    let mut seen = std::collections::HashSet::new();
    candidates.retain(|s| seen.insert(s.clone()) && s != &app.server_name);
    if candidates.is_empty() {
        return Err(Error::not_found("No known servers for this room"));
    }
    let joined =
        super::federation::join::remote_join(app, user, room_id, &candidates, extra).await?;
    crate::storage::federation::delete_remote_membership(&app.db, room_id.as_str(), user.as_str())
        .await?;
    super::upgrade::carry_over_on_join(app, user, &joined, None, true).await?;
    Ok(joined)
}

/// Joins a local room (through [`join_via`], which has refused blocked rooms).
/// For `restricted` rooms the join is authorised by a local member who may
/// invite, when the user is in one of the allowed rooms.
async fn join(
    app: &AppState,
    user: &UserId,
    room_id: &RoomId,
    extra: JoinContent,
) -> Result<OwnedRoomId> {
    let mut tx = app.db.begin().await?;
    let Some(mut room) = RoomCtx::lock(&mut tx, room_id).await? else {
        return Err(Error::not_found("No known servers for this room"));
    };
    let current = rooms::membership(&mut *tx, room_id.as_str(), user.as_str()).await?;
    if current.as_deref() == Some("ban") {
        return Err(Error::forbidden("You are banned from this room"));
    }
    let guest = users::get(&mut *tx, user.as_str())
        .await?
        .is_some_and(|u| u.is_guest);
    if guest && !guests_can_join(&mut tx, &room).await? {
        return Err(guests_not_allowed());
    }
    let mut content = json!({ "membership": "join" });
    super::profile::decorate(&mut tx, user.as_str(), &mut content).await?;
    if let Some(object) = content.as_object_mut() {
        extra.apply_to(object);
    }
    if !matches!(current.as_deref(), Some("join" | "invite"))
        && let Restricted::Authorised(authoriser) =
            restricted_join(&mut tx, app, &room, user).await?
    {
        content["join_authorised_via_users_server"] = authoriser.into();
    }
    let event = NewEvent {
        origin_server_ts: None,
        kind: "m.room.member".into(),
        content,
        state_key: Some(user.to_string()),
        redacts: None,
    };
    // Joining again with the same profile changes nothing (as Synapse).
    if current.as_deref() == Some("join")
        && event::unchanged_state(&mut tx, &room, user, &event)
            .await?
            .is_some()
    {
        return Ok(room_id.to_owned());
    }
    event::append(&mut tx, app, &mut room, user, event).await?;
    tx.commit().await?;
    let group = room.state_group;
    event::release(room);
    if current.as_deref() != Some("join") {
        super::upgrade::carry_over_on_join(app, user, room_id, group, false).await?;
    }
    Ok(room_id.to_owned())
}

/// Spec "Guest access": guests join only rooms whose `m.room.guest_access` is
/// `can_join`.
async fn guests_can_join(
    tx: &mut crate::storage::Transaction<'_, crate::storage::Postgres>,
    room: &RoomCtx,
) -> Result<bool> {
    let key = ("m.room.guest_access".to_owned(), String::new());
    let state = event::state_events(tx, room.state_group, std::slice::from_ref(&key)).await?;
    Ok(state.get(&key).is_some_and(|e| {
        serde_json::from_str::<Value>(e.content.get())
            .is_ok_and(|c| c["guest_access"] == "can_join")
    }))
}

/// When a room stops letting guests join, its local guests leave it (as
/// Synapse does; the spec's "Guest access" leaves revocation to servers).
/// Runs after the transaction that wrote the change: taking the room's lock
/// waits for that transaction to end, and the state is read again under it,
/// so a change that was rolled back kicks no one.
pub fn kick_guests_after_commit(app: AppState, room_id: ruma::OwnedRoomId) {
    tokio::spawn(async move {
        if let Err(error) = kick_guests(&app, &room_id).await {
            tracing::warn!(%room_id, %error, "could not remove guests after guest access was revoked");
        }
    });
}

async fn kick_guests(app: &AppState, room_id: &RoomId) -> Result<()> {
    let mut guests = Vec::new();
    {
        let mut tx = app.db.begin().await?;
        let Some(room) = RoomCtx::lock(&mut tx, room_id).await? else {
            return Ok(());
        };
        if guests_can_join(&mut tx, &room).await? {
            return Ok(());
        }
        for (member, _) in rooms::members(&mut *tx, room_id.as_str(), "join").await? {
            if let Ok(user) = UserId::parse(member.as_str())
                && user.server_name() == app.server_name
                && users::get(&mut *tx, user.as_str())
                    .await?
                    .is_some_and(|u| u.is_guest)
            {
                guests.push(user);
            }
        }
    }
    // One guest's failure does not keep the others in.
    for guest in guests {
        if let Err(error) = leave(app, &guest, room_id, None).await {
            tracing::warn!(%room_id, %guest, %error, "could not remove a guest");
        }
    }
    Ok(())
}

fn guests_not_allowed() -> Error {
    Error::new(
        ErrorKind::GuestAccessForbidden,
        "Guests may not join this room",
    )
}

/// What a `restricted`/`knock_restricted` join rule says of a join by `user`,
/// as far as this server can tell.
pub(crate) enum Restricted {
    /// The join rule is not restricted.
    Open,
    /// Allowed: this local joined member may invite, and authorises it.
    Authorised(String),
    /// The user is in none of the allowed rooms this server is in; `unknown`
    /// when some allowed room is one it is not in (another server may know).
    NotAllowed { unknown: bool },
    /// Allowed, but no local member may invite.
    NoAuthoriser,
}

/// For `restricted`/`knock_restricted` join rules: a local joined member with
/// the power to invite, if the user is joined to one of the rooms the rule
/// allows (spec "Restricted rooms").
pub(crate) async fn restricted_join(
    tx: &mut crate::storage::Transaction<'_, crate::storage::Postgres>,
    app: &AppState,
    room: &RoomCtx,
    user: &UserId,
) -> Result<Restricted> {
    let keys = [
        ("m.room.join_rules".to_owned(), String::new()),
        ("m.room.power_levels".to_owned(), String::new()),
    ];
    let state = event::state_events(tx, room.state_group, &keys).await?;
    let Some(rules) = state.get(&keys[0]) else {
        return Ok(Restricted::Open);
    };
    let rules: Value = serde_json::from_str(rules.content.get()).unwrap_or_default();
    if !matches!(
        rules["join_rule"].as_str(),
        Some("restricted" | "knock_restricted")
    ) {
        return Ok(Restricted::Open);
    }
    let mut allowed = false;
    let mut unknown = false;
    for entry in rules["allow"].as_array().into_iter().flatten() {
        let Some(allowed_room) = entry["room_id"].as_str() else {
            continue;
        };
        if entry["type"] != "m.room_membership" {
            continue;
        }
        if rooms::membership(&mut **tx, allowed_room, user.as_str())
            .await?
            .as_deref()
            == Some("join")
        {
            allowed = true;
            break;
        }
        if !rooms::has_joined_members_of(&mut **tx, allowed_room, app.server_name.as_str()).await? {
            unknown = true;
        }
    }
    if !allowed {
        return Ok(Restricted::NotAllowed { unknown });
    }
    let power: Value = state
        .get(&keys[1])
        .and_then(|p| serde_json::from_str(p.content.get()).ok())
        .unwrap_or_default();
    let invite_level = power["invite"].as_i64().unwrap_or(0);
    let users_default = power["users_default"].as_i64().unwrap_or(0);
    let creators = super::read::creators(tx, room).await?;
    for (member, _) in rooms::members(&mut **tx, room.room_id().as_str(), "join").await? {
        let local = member.ends_with(&format!(":{}", app.server_name));
        let level = power["users"][&member].as_i64().unwrap_or(users_default);
        let is_creator = room.rules.authorization.explicitly_privilege_room_creators
            && creators.contains(&member);
        if local && (is_creator || level >= invite_level) {
            return Ok(Restricted::Authorised(member));
        }
    }
    Ok(Restricted::NoAuthoriser)
}

pub async fn leave(
    app: &AppState,
    user: &UserId,
    room_id: &RoomId,
    reason: Option<String>,
) -> Result<()> {
    // An invite to (or a knock on) a room we are not in is answered through
    // the inviting (or knocked-through) server.
    if let Some(remote) =
        crate::storage::federation::remote_membership(&app.db, room_id.as_str(), user.as_str())
            .await?
        && let Ok(server) = ruma::OwnedServerName::try_from(remote.via_server.as_str())
        && !resident(app, room_id).await?
    {
        let through = super::federation::leave_knock::leave_remote(
            app,
            user,
            room_id,
            &server,
            reason.clone(),
        );
        let Err(error) = through.await else {
            return Ok(());
        };
        // The user is not kept in a room they want out of because its server
        // cannot be asked: they leave here alone (as Synapse does).
        tracing::info!(%room_id, %server, %error, "remote rejection failed: leaving locally");
        return super::federation::leave_knock::leave_out_of_band(
            app, user, room_id, &remote, reason,
        )
        .await;
    }
    let mut tx = app.db.begin().await?;
    let Some(mut room) = RoomCtx::lock(&mut tx, room_id).await? else {
        return Err(Error::not_found("Unknown room"));
    };
    let current = rooms::membership(&mut *tx, room_id.as_str(), user.as_str()).await?;
    if !matches!(current.as_deref(), Some("join" | "invite" | "knock")) {
        return Err(Error::forbidden("You are not in this room"));
    }
    let mut content = json!({ "membership": "leave" });
    if let Some(reason) = reason {
        content["reason"] = reason.into();
    }
    let event = NewEvent {
        origin_server_ts: None,
        kind: "m.room.member".into(),
        content,
        state_key: Some(user.to_string()),
        redacts: None,
    };
    event::append(&mut tx, app, &mut room, user, event).await?;
    tx.commit().await?;
    event::release(room);
    Ok(())
}

/// Invite, kick, ban, unban: the sender changes the target's membership.
pub async fn change(
    app: &AppState,
    sender: &UserId,
    room_id: &RoomId,
    target: &UserId,
    change: Change,
    reason: Option<String>,
    is_direct: bool,
) -> Result<()> {
    change_with(
        app, sender, room_id, target, change, reason, is_direct, None,
    )
    .await
}

/// The invite a third-party invite becomes once its address is bound to
/// `target` (spec "Third-party invites"): sent by the inviter, carrying the
/// identity server's signed block (`third_party_invite`), which the auth
/// rules check against the room's `m.room.third_party_invite` event (not the
/// inviter's power: they may have left since).
pub async fn third_party_invite(
    app: &AppState,
    sender: &UserId,
    room_id: &RoomId,
    target: &UserId,
    third_party_invite: Value,
) -> Result<()> {
    change_with(
        app,
        sender,
        room_id,
        target,
        Change::Invite,
        None,
        false,
        Some(third_party_invite),
    )
    .await
}

#[allow(clippy::too_many_arguments)]
async fn change_with(
    app: &AppState,
    sender: &UserId,
    room_id: &RoomId,
    target: &UserId,
    change: Change,
    reason: Option<String>,
    is_direct: bool,
    third_party_invite: Option<Value>,
) -> Result<()> {
    if change == Change::Invite && target.server_name() == app.server_name {
        ensure_not_blocked(app, room_id).await?;
        // An unknown user in an appservice's namespace: the appservice is
        // asked (and may create it) before the invite, with no lock held.
        if !app.appservices.current().is_empty() {
            super::appservice::user_exists(app, target).await?;
        }
    }
    let mut tx = app.db.begin().await?;
    let Some(mut room) = RoomCtx::lock(&mut tx, room_id).await? else {
        return Err(Error::forbidden("Unknown room, or you are not in it"));
    };
    let current = rooms::membership(&mut *tx, room_id.as_str(), target.as_str()).await?;
    let membership = match change {
        Change::Invite => {
            if current.as_deref() == Some("join") {
                return Err(Error::forbidden("The user is already in the room"));
            }
            if current.as_deref() == Some("ban") {
                return Err(Error::forbidden("The user is banned from the room"));
            }
            "invite"
        }
        Change::Kick => {
            if !matches!(current.as_deref(), Some("join" | "invite" | "knock")) {
                return Err(Error::forbidden("The user is not in the room"));
            }
            "leave"
        }
        Change::Ban => "ban",
        Change::Unban => {
            if current.as_deref() != Some("ban") {
                return Err(Error::forbidden("The user is not banned"));
            }
            "leave"
        }
    };
    let mut content = json!({ "membership": membership });
    if let Some(reason) = reason {
        content["reason"] = reason.into();
    }
    if is_direct {
        content["is_direct"] = true.into();
    }
    if let Some(third_party_invite) = third_party_invite {
        content["third_party_invite"] = third_party_invite;
    }
    if change == Change::Invite && target.server_name() == app.server_name {
        super::profile::decorate(&mut tx, target.as_str(), &mut content).await?;
    }
    let event = NewEvent {
        origin_server_ts: None,
        kind: "m.room.member".into(),
        content,
        state_key: Some(target.to_string()),
        redacts: None,
    };
    if change == Change::Invite && target.server_name() != app.server_name {
        // The invitee's server countersigns the invite before it is stored. No
        // lock and no connection are held while it answers (however slowly): the
        // invite is built, the transaction ends, and the countersigned event is
        // then received like a remote one (the room may have moved on meanwhile).
        let built = event::prepare(&mut tx, app, &room, sender, event).await?;
        let state = super::federation::invite::invite_room_state(&mut tx, &room, sender).await?;
        let (version, rules) = (room.version.clone(), room.rules.clone());
        tx.rollback().await?;
        event::release(room);
        let built =
            super::federation::invite::countersigned(app, &version, &rules, built, state).await?;
        return super::federation::ingest::receive_own(app, &rules, built).await;
    }
    event::append(&mut tx, app, &mut room, sender, event).await?;
    tx.commit().await?;
    event::release(room);
    Ok(())
}

/// Knocking (room versions 7+, join rule `knock` or `knock_restricted`): on a
/// room of ours, or over federation through `servers` (and the room ID's
/// server) when none of our users is in it.
pub async fn knock(
    app: &AppState,
    user: &UserId,
    room_id: &RoomId,
    reason: Option<String>,
    servers: &[ruma::OwnedServerName],
) -> Result<()> {
    if !resident(app, room_id).await? {
        let mut candidates: Vec<ruma::OwnedServerName> = servers.to_vec();
        if let Some(server) = room_id.server_name() {
            candidates.push(server.to_owned());
        }
        let mut seen = std::collections::HashSet::new();
        candidates.retain(|s| seen.insert(s.clone()) && s != &app.server_name);
        if !candidates.is_empty() {
            return super::federation::leave_knock::knock_remote(
                app,
                user,
                room_id,
                &candidates,
                reason,
            )
            .await;
        }
    }
    let mut tx = app.db.begin().await?;
    let Some(mut room) = RoomCtx::lock(&mut tx, room_id).await? else {
        return Err(Error::not_found("No known servers for this room"));
    };
    if !room.rules.authorization.knocking {
        return Err(Error::forbidden(
            "This room version does not support knocking",
        ));
    }
    let mut content = json!({ "membership": "knock" });
    if let Some(reason) = reason {
        content["reason"] = reason.into();
    }
    let event = NewEvent {
        origin_server_ts: None,
        kind: "m.room.member".into(),
        content,
        state_key: Some(user.to_string()),
        redacts: None,
    };
    event::append(&mut tx, app, &mut room, user, event).await?;
    tx.commit().await?;
    event::release(room);
    Ok(())
}

/// Forgetting is allowed once the user has left (or was never in the room).
pub async fn forget(app: &AppState, user: &UserId, room_id: &RoomId) -> Result<()> {
    let current = rooms::membership(&app.db, room_id.as_str(), user.as_str()).await?;
    if matches!(current.as_deref(), Some("join" | "invite" | "knock")) {
        return Err(Error::new(
            ErrorKind::BadRequest,
            "You must leave the room before forgetting it",
        ));
    }
    rooms::forget(&app.db, user.as_str(), room_id.as_str()).await?;
    Ok(())
}

//! Invites by email address (spec: client-server "Third-party invites",
//! server-server "Third-party invites"):
//!
//! 1. `POST /rooms/{roomId}/invite` with `id_server`, `id_access_token`,
//!    `medium`, `address` (and `createRoom`'s `invite_3pid`) — [`invite`]: the
//!    inviter must be joined and allowed to invite; the identity server is
//!    asked who has the address. A bound user is invited as usual; otherwise
//!    the identity server stores the invite (`/store-invite`) and the inviter
//!    sends `m.room.third_party_invite` (state key: the identity server's
//!    token; content: its display name and public keys).
//! 2. When someone binds the address, the identity server calls the user's
//!    server, `POST /_matrix/federation/v1/3pid/onbind` ([`on_bind`]), with
//!    a block `{mxid, token}` it signed per pending invite. The block
//!    becomes an `m.room.member` invite from the original inviter carrying
//!    `third_party_invite` ([`exchange`]): made here when this server is in
//!    the room and the inviter is ours, else asked of the inviter's (and the
//!    room's) server with `PUT /_matrix/federation/v1/exchange_third_party_invite/{roomId}`
//!    ([`on_exchange`] answers it). A client may also present such a block
//!    itself when joining (`third_party_signed`).
//!
//! Anyone may call `onbind` (as on Synapse): what makes the invite is the
//! signature, checked against the keys of the room's own
//! `m.room.third_party_invite` event, whose sender must be the inviter (the
//! auth rules), and before that here, so that the key can also be checked
//! with the identity server (`key_validity_url`): a key it no longer calls
//! valid, or an identity server that cannot be reached, makes no invite.

use ruma::{OwnedRoomId, RoomId, UserId};
use serde_json::{Map, Value, json};

use super::{event, identity, membership};
use crate::{
    domain::{pdu::NewEvent, third_party_invite as tpi},
    error::{Error, ErrorKind, Result},
    service::AppState,
    storage::{profiles, rooms},
};

/// The most invites one `onbind` may carry.
pub const MAX_ONBIND_INVITES: usize = 50;

/// A client's request to invite an address.
#[derive(Debug, Clone)]
pub struct Invite3pid {
    pub id_server: String,
    pub id_access_token: String,
    pub medium: String,
    pub address: String,
}

/// `POST /rooms/{roomId}/invite` by address, and `createRoom`'s `invite_3pid`.
pub async fn invite(
    app: &AppState,
    sender: &UserId,
    room_id: &RoomId,
    invite: &Invite3pid,
) -> Result<()> {
    if invite.medium.is_empty() || invite.address.is_empty() {
        return Err(Error::new(
            ErrorKind::MissingParam,
            "medium and address are required",
        ));
    }
    identity::base_url(&invite.id_server)?;
    // Nothing is asked of (or stored at) the identity server for a user who
    // could not invite anyway.
    if !event::may_invite(app, room_id, sender).await? {
        return Err(Error::forbidden(
            "You don't have permission to invite users to this room",
        ));
    }
    let bound = identity::lookup(
        app,
        &invite.id_server,
        &invite.id_access_token,
        &invite.medium,
        &invite.address,
    )
    .await?;
    if let Some(user) = bound {
        return membership::change(
            app,
            sender,
            room_id,
            &user,
            membership::Change::Invite,
            None,
            false,
        )
        .await;
    }
    let details = store_invite_details(app, sender, room_id, invite).await?;
    let stored =
        identity::store_invite(app, &invite.id_server, &invite.id_access_token, &details).await?;
    let first = &stored.public_keys[0];
    let mut content = json!({
        "display_name": stored.display_name,
        "public_keys": stored.public_keys,
        "public_key": first["public_key"],
    });
    if let Some(url) = first.get("key_validity_url") {
        content["key_validity_url"] = url.clone();
    }
    event::send(
        app,
        room_id,
        sender,
        NewEvent {
            origin_server_ts: None,
            kind: "m.room.third_party_invite".into(),
            content,
            state_key: Some(stored.token),
            redacts: None,
        },
        None,
    )
    .await?;
    Ok(())
}

/// The `/store-invite` body: the address, room and inviter, and what the
/// identity server may put in its mail (the room's name, alias, avatar, join
/// rule and type; the inviter's display name and avatar).
async fn store_invite_details(
    app: &AppState,
    sender: &UserId,
    room_id: &RoomId,
    invite: &Invite3pid,
) -> Result<Value> {
    let mut details = Map::new();
    details.insert("medium".into(), invite.medium.clone().into());
    details.insert("address".into(), invite.address.clone().into());
    details.insert("room_id".into(), room_id.as_str().into());
    details.insert("sender".into(), sender.as_str().into());
    let state = |kind: &'static str| super::read::state_content(app, room_id, None, kind);
    let mut put = |key: &str, value: &Value| {
        if let Some(s) = value.as_str().filter(|s| !s.is_empty()) {
            details.insert(key.into(), s.into());
        }
    };
    if let Some(c) = state("m.room.name").await? {
        put("room_name", &c["name"]);
    }
    if let Some(c) = state("m.room.canonical_alias").await? {
        put("room_alias", &c["alias"]);
    }
    if let Some(c) = state("m.room.avatar").await? {
        put("room_avatar_url", &c["url"]);
    }
    if let Some(c) = state("m.room.join_rules").await? {
        put("room_join_rules", &c["join_rule"]);
    }
    if let Some(c) = state("m.room.create").await? {
        put("room_type", &c["type"]);
    }
    if let Some(profile) = profiles::get(&app.db, sender.as_str()).await? {
        if let Some(name) = profile.displayname {
            put("sender_display_name", &name.into());
        }
        if let Some(url) = profile.avatar_url {
            put("sender_avatar_url", &url.into());
        }
    }
    Ok(Value::Object(details))
}

/// `POST /_matrix/federation/v1/3pid/onbind`: each invite of the body whose
/// `mxid` is one of ours becomes an invite ([`exchange`]). An invite that
/// fails (a bad signature, a room we cannot reach) does not keep the others
/// from being made; the answer is then the last failure's error, as Synapse
/// answers (the identity server learns the invite was not delivered).
/// `invites` is the body's `invites` field, each checked on its own.
pub async fn on_bind(app: &AppState, invites: &Value) -> Result<()> {
    let Some(invites) = invites.as_array() else {
        return Ok(());
    };
    // Anyone may call onbind, and each invite may make this server call
    // another: a bound on how many one request asks for (an address has
    // few pending invites).
    if invites.len() > MAX_ONBIND_INVITES {
        return Err(Error::new(
            ErrorKind::TooLarge,
            format!("At most {MAX_ONBIND_INVITES} invites per onbind"),
        ));
    }
    let mut last_error = None;
    for invite in invites {
        let (Some(room_id), Some(sender), Some(mxid)) = (
            invite["room_id"].as_str(),
            invite["sender"].as_str(),
            invite["mxid"].as_str(),
        ) else {
            last_error = Some(Error::bad_json("An invite without room_id, sender or mxid"));
            continue;
        };
        let (Ok(room_id), Ok(sender), Ok(target)) = (
            RoomId::parse(room_id),
            UserId::parse(sender),
            UserId::parse(mxid),
        ) else {
            last_error = Some(Error::bad_json(
                "An invite with an invalid room_id, sender or mxid",
            ));
            continue;
        };
        if target.server_name() != app.server_name {
            last_error = Some(Error::forbidden("An invite for another server's user"));
            continue;
        }
        if let Err(error) = exchange(app, &sender, &target, &room_id, &invite["signed"]).await {
            tracing::info!(%room_id, %sender, %target, %error, "onbind: third-party invite not made");
            last_error = Some(error);
        }
    }
    last_error.map_or(Ok(()), Err)
}

/// Makes the invite of a signed block `{mxid, token, signatures}` for
/// `target`: here when this server is in the room and `sender` is ours,
/// otherwise through the inviter's server (and the room's).
pub async fn exchange(
    app: &AppState,
    sender: &UserId,
    target: &UserId,
    room_id: &RoomId,
    signed: &Value,
) -> Result<()> {
    check_block(target, signed)?;
    let resident =
        rooms::has_joined_members_of(&app.db, room_id.as_str(), app.server_name.as_str()).await?;
    if sender.server_name() == app.server_name && resident {
        return make_invite(app, sender, target, room_id, signed).await;
    }
    let body = json!({
        "type": "m.room.member",
        "room_id": room_id,
        "sender": sender,
        "state_key": target,
        "content": {
            "membership": "invite",
            "third_party_invite": { "signed": signed },
        },
    });
    let mut servers = vec![sender.server_name().to_owned()];
    if let Some(server) = room_id.server_name()
        && !servers.iter().any(|s| s == server)
    {
        servers.push(server.to_owned());
    }
    servers.retain(|s| s != &app.server_name);
    // Raw, not ruma's `exchange_invite`: its body has no `room_id`, which the
    // spec requires (and our side checks against the path).
    let path = format!(
        "/_matrix/federation/v1/exchange_third_party_invite/{}",
        super::federation::ingest::enc(room_id.as_str())
    );
    let mut last = Error::not_found("No server to make the invite through");
    for server in servers {
        match app
            .federation
            .request_json(&server, http::Method::PUT, &path, Some(&body))
            .await
        {
            Ok(_) => return Ok(()),
            Err(error) => {
                tracing::info!(%server, %room_id, %error, "exchange_third_party_invite failed");
                last = Error::new(
                    ErrorKind::BadGateway,
                    "The inviter's server did not make the invite",
                );
            }
        }
    }
    Err(last)
}

/// `PUT /_matrix/federation/v1/exchange_third_party_invite/{roomId}` from
/// `origin`, the invited user's server: the body is the invite it asks for
/// (`sender` ours, `state_key` one of its users, `content.third_party_invite.signed`).
pub async fn on_exchange(
    app: &AppState,
    origin: &ruma::ServerName,
    room_id: &RoomId,
    body: &Value,
) -> Result<()> {
    if body["room_id"].as_str() != Some(room_id.as_str()) {
        return Err(Error::bad_json("room_id differs from the path's"));
    }
    if body["type"] != "m.room.member" || body["content"]["membership"] != "invite" {
        return Err(Error::bad_json("Not a third-party invite"));
    }
    let sender = body["sender"]
        .as_str()
        .and_then(|s| UserId::parse(s).ok())
        .ok_or_else(|| Error::bad_json("Invalid sender"))?;
    let target = body["state_key"]
        .as_str()
        .and_then(|s| UserId::parse(s).ok())
        .ok_or_else(|| Error::bad_json("Invalid state_key"))?;
    if target.server_name() != origin {
        return Err(Error::forbidden(
            "Only the invited user's server exchanges their invite",
        ));
    }
    if sender.server_name() != app.server_name {
        return Err(Error::forbidden("The inviter is not on this server"));
    }
    let signed = &body["content"]["third_party_invite"]["signed"];
    check_block(&target, signed)?;
    make_invite(app, &sender, &target, room_id, signed).await
}

fn check_block(target: &UserId, signed: &Value) -> Result<()> {
    if !signed.is_object() || !signed["token"].is_string() {
        return Err(Error::bad_json(
            "third_party_invite needs a signed block with a token",
        ));
    }
    if signed["mxid"].as_str() != Some(target.as_str()) {
        return Err(Error::forbidden("The signed block is for another user"));
    }
    Ok(())
}

/// The invite of a checked block, by `sender` (ours) in a room of ours: the
/// room's `m.room.third_party_invite` for the token must be `sender`'s, one of
/// its keys must verify the block, and the identity server must still call
/// that key valid. No lock is held while the identity server answers.
async fn make_invite(
    app: &AppState,
    sender: &UserId,
    target: &UserId,
    room_id: &RoomId,
    signed: &Value,
) -> Result<()> {
    let token = signed["token"].as_str().unwrap_or_default();
    let invite_event = pending_invite(app, room_id, token)
        .await?
        .ok_or_else(|| Error::forbidden("No third-party invite with this token in the room"))?;
    if invite_event.0 != sender.as_str() {
        return Err(Error::forbidden(
            "The third-party invite was sent by someone else",
        ));
    }
    let content = invite_event.1;
    let key = tpi::verifying_key(&content, signed)
        .ok_or_else(|| Error::forbidden("No valid signature on the third-party invite"))?;
    if let Some(url) = &key.key_validity_url
        && !identity::key_is_valid(app, url, &key.public_key).await
    {
        return Err(Error::forbidden(
            "The identity server does not confirm its key",
        ));
    }
    let mut third_party_invite = json!({ "signed": signed });
    if let Some(name) = content["display_name"].as_str() {
        third_party_invite["display_name"] = name.into();
    }
    membership::third_party_invite(app, sender, room_id, target, third_party_invite).await
}

/// The sender and content of the room's current `m.room.third_party_invite`
/// with state key `token`.
async fn pending_invite(
    app: &AppState,
    room_id: &RoomId,
    token: &str,
) -> Result<Option<(String, Value)>> {
    let Some(room) = rooms::get(&app.db, room_id.as_str()).await? else {
        return Ok(None);
    };
    let Some(group) = room.current_state_group else {
        return Ok(None);
    };
    let key = ("m.room.third_party_invite".to_owned(), token.to_owned());
    let found =
        crate::storage::state::state_events_for_keys(&app.db, group, std::slice::from_ref(&key))
            .await?;
    Ok(found.into_iter().next().and_then(|(_, json)| {
        let event: Value = serde_json::from_str(&json).ok()?;
        Some((
            event["sender"].as_str()?.to_owned(),
            event["content"].clone(),
        ))
    }))
}

/// `POST /join` with `third_party_signed` (`{sender, mxid, token, signatures}`):
/// the invite it proves is made first, then the user joins.
pub async fn join_signed(
    app: &AppState,
    user: &UserId,
    room_id: &RoomId,
    signed: &Value,
) -> Result<OwnedRoomId> {
    let sender = signed["sender"]
        .as_str()
        .and_then(|s| UserId::parse(s).ok())
        .ok_or_else(|| Error::bad_json("third_party_signed needs a sender"))?;
    exchange(app, &sender, user, room_id, signed).await?;
    Ok(room_id.to_owned())
}

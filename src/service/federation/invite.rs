//! Invites across servers (`PUT /_matrix/federation/v2/invite`, and the
//! deprecated `/v1/invite` for room versions 1 and 2): countersigning another
//! server's invite of one of our users, and having an invite of a remote user
//! countersigned by that user's server before it is stored.

use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, EventId, RoomId, RoomVersionId, ServerName, UserId,
    api::federation::membership::{RawStrippedState, create_invite},
    room_version_rules::RoomVersionRules,
    signatures::sign_json,
};
use serde_json::{Value, value::RawValue as RawJsonValue};

use super::ingest::{self, enc};
use crate::{
    domain::{
        pdu::{self, Built},
        room_version,
    },
    error::{Error, ErrorKind, Result},
    service::AppState,
    service::event::{self, RoomCtx},
    storage::{Postgres, Transaction, events, federation as fed_store, rooms},
};

/// State types sent with an invite (and shown for one) so the invitee's client
/// can show the room.
pub const INVITE_STATE_TYPES: [&str; 7] = [
    "m.room.create",
    "m.room.join_rules",
    "m.room.name",
    "m.room.avatar",
    "m.room.canonical_alias",
    "m.room.encryption",
    "m.room.topic",
];

fn invalid(message: impl Into<String>) -> Error {
    Error::new(ErrorKind::InvalidParam, message)
}

/// Adds this server's signature to an event (signing its redacted form, as event
/// signatures are).
pub(super) fn countersign(
    app: &AppState,
    rules: &RoomVersionRules,
    object: &mut CanonicalJsonObject,
) -> Result<()> {
    let mut redacted = ruma::canonical_json::redact(object.clone(), &rules.redaction, None)
        .map_err(|e| invalid(format!("redacting the invite: {e}")))?;
    sign_json(
        app.server_name.as_str(),
        &app.signing_key.pair,
        &mut redacted,
    )
    .map_err(|e| anyhow::anyhow!("signing the invite: {e}"))?;
    let ours = match redacted.get("signatures") {
        Some(CanonicalJsonValue::Object(sigs)) => sigs.get(app.server_name.as_str()).cloned(),
        _ => None,
    }
    .ok_or_else(|| anyhow::anyhow!("signing produced no signature"))?;
    match object.get_mut("signatures") {
        Some(CanonicalJsonValue::Object(sigs)) => {
            sigs.insert(app.server_name.to_string(), ours);
        }
        _ => {
            let mut sigs = CanonicalJsonObject::new();
            sigs.insert(app.server_name.to_string(), ours);
            object.insert("signatures".into(), CanonicalJsonValue::Object(sigs));
        }
    }
    Ok(())
}

/// The invite endpoint an invite came through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InviteApi {
    /// `PUT /v1/invite` (deprecated): the body is the event; the room version
    /// is not given.
    V1,
    /// `PUT /v2/invite`: the event, the room version and the stripped state.
    V2,
}

/// An invite as another server sent it.
pub struct Incoming<'a> {
    pub api: InviteApi,
    pub room_version: &'a str,
    pub event: &'a Value,
    pub invite_room_state: Vec<Value>,
}

/// Another server invites one of our users: check the event (spec: signatures,
/// type, membership, sender on the origin, target on this server), countersign
/// it, and — when none of our users is in the room — remember the invite so the
/// user sees it in `/sync` and can accept it through the inviting server.
/// Returns the countersigned event.
pub async fn receive(
    app: &AppState,
    origin: &ServerName,
    room_id: &RoomId,
    event_id: &EventId,
    invite: Incoming<'_>,
) -> Result<CanonicalJsonObject> {
    super::super::membership::ensure_not_blocked(app, room_id).await?;
    let version = RoomVersionId::try_from(invite.room_version)
        .ok()
        .filter(room_version::is_supported)
        .ok_or_else(|| {
            Error::new(
                ErrorKind::IncompatibleRoomVersion {
                    room_version: invite.room_version.to_owned(),
                },
                "This server does not support the room's version",
            )
        })?;
    let rules = version.rules().expect("supported versions have rules");
    let checked = ingest::check_pdu(app, &rules, invite.event)
        .await
        .map_err(|e| match e {
            ingest::PduError::Format(e) => {
                Error::bad_json(format!("The invite event is malformed: {e}"))
            }
            // The spec suggests M_INVALID_PARAM (v2); the deprecated v1 API
            // answers 403 M_FORBIDDEN, as Synapse does and SyTest expects.
            ingest::PduError::Signature(e) if invite.api == InviteApi::V1 => {
                Error::forbidden(format!("The invite event is not signed: {e}"))
            }
            ingest::PduError::Signature(e) => {
                invalid(format!("The invite event is not signed: {e}"))
            }
        })?;
    let pdu = &checked.pdu;
    if checked.event_id != event_id {
        return Err(invalid("The event ID does not match the event"));
    }
    if pdu.room_id != room_id {
        return Err(invalid("The event is for another room"));
    }
    if pdu.kind.to_string() != "m.room.member" {
        return Err(invalid("Not an m.room.member event"));
    }
    let content: Value = serde_json::from_str(pdu.content.get()).unwrap_or_default();
    if content["membership"] != "invite" {
        return Err(invalid("Not an invite"));
    }
    if pdu.sender.server_name() != origin {
        return Err(invalid("The sender is not on the requesting server"));
    }
    let target = pdu
        .state_key
        .as_deref()
        .and_then(|k| UserId::parse(k).ok())
        .filter(|u| u.server_name() == app.server_name)
        .ok_or_else(|| invalid("The invitee is not on this server"))?;
    // An unknown user's invite is countersigned (as Synapse does) but not
    // kept: there is nobody to show it to. A deactivated user's is refused.
    let user = crate::storage::users::get(&app.db, target.as_str()).await?;
    if user.as_ref().is_some_and(|u| u.deactivated) {
        return Err(Error::not_found("No such user"));
    }

    let mut object = checked.object.clone();
    countersign(app, &rules, &mut object)?;

    if user.is_some()
        && !rooms::has_joined_members_of(&app.db, room_id.as_str(), app.server_name.as_str())
            .await?
    {
        // Keep it: the invite event (an outlier), what to show, whom to ask.
        let mut state = invite.invite_room_state;
        state.retain(Value::is_object);
        // Kept without `unsigned` (a v1 invite carries its stripped state
        // there, kept apart below).
        let mut kept = object.clone();
        kept.remove("unsigned");
        let signed = ingest::Checked {
            event_id: checked.event_id.clone(),
            object: kept,
            pdu: checked.pdu.clone(),
        };
        let remote = fed_store::RemoteMembership {
            membership: "invite".into(),
            event_id: checked.event_id.to_string(),
            room_version: version.to_string(),
            via_server: origin.to_string(),
            stripped_state: Value::Array(state),
        };
        super::handshake::record_remote_membership(app, &signed, "invite", Some(remote)).await?;
    }
    Ok(object)
}

/// The state sent with an invite: the room's create, join rules, name, avatar,
/// alias, encryption and topic events, as full PDUs (spec v1.16+), plus the
/// inviter's membership.
pub async fn invite_room_state(
    tx: &mut Transaction<'_, Postgres>,
    room: &RoomCtx,
    inviter: &UserId,
) -> Result<Vec<Value>> {
    let mut keys: Vec<(String, String)> = INVITE_STATE_TYPES
        .iter()
        .map(|t| ((*t).to_owned(), String::new()))
        .collect();
    keys.push(("m.room.member".into(), inviter.to_string()));
    let state = event::state_events(tx, room.state_group, &keys).await?;
    let ids: Vec<String> = state.values().map(|p| p.event_id.to_string()).collect();
    let mut out = Vec::new();
    for ev in events::get_many(&mut **tx, &ids).await? {
        let mut pdu: Value = serde_json::from_str(&ev.json).map_err(|e| anyhow::anyhow!("{e}"))?;
        if let Some(o) = pdu.as_object_mut() {
            o.remove("unsigned");
        }
        out.push(pdu);
    }
    Ok(out)
}

/// Sends our invite of a remote user to that user's server and returns the
/// event countersigned by it (checked to be the same event, signed by the
/// invitee's server). The caller stores the returned event.
pub async fn countersigned(
    app: &AppState,
    version: &RoomVersionId,
    rules: &RoomVersionRules,
    built: Built,
    invite_state: Vec<Value>,
) -> Result<Built> {
    let target = built
        .pdu
        .state_key
        .as_deref()
        .and_then(|k| UserId::parse(k).ok())
        .ok_or_else(|| Error::bad_json("An invite needs a user ID as state key"))?;
    let server = target.server_name();
    let request = create_invite::v2::Request::new(
        built.room_id.clone(),
        built.event_id.clone(),
        version.clone(),
        raw_json(&built.json)?,
        invite_state
            .iter()
            .map(|s| Ok(RawStrippedState::Pdu(raw_json(s)?)))
            .collect::<Result<_>>()?,
    );
    // The countersigned event.
    let reply: Value = match app.federation.send(server, request).await {
        Ok(reply) => serde_json::from_str(reply.event.get()).map_err(|e| anyhow::anyhow!("{e}"))?,
        // A server without `/v2/invite` knows only room versions 1 and 2: it
        // gets those invites through `/v1/invite` (as Synapse falls back), and
        // no invite to a room of a later version.
        Err(e) if e.is_unknown_endpoint() && pdu::is_v1_format(rules) => {
            let v1 = v1_invite(app, server, &built, Value::Array(invite_state)).await?;
            v1["event"].clone()
        }
        Err(e) if e.is_unknown_endpoint() => {
            return Err(Error::new(
                ErrorKind::UnsupportedRoomVersion,
                "The invitee's server does not support this room's version",
            ));
        }
        Err(e) => return Err(invite_refused(e)),
    };
    let checked = ingest::check_pdu(app, rules, &reply)
        .await
        .map_err(|e| match e {
            ingest::PduError::Format(e) => {
                Error::bad_json(format!("The countersigned invite is malformed: {e}"))
            }
            ingest::PduError::Signature(e) => {
                Error::forbidden(format!("The countersigned invite is bad: {e}"))
            }
        })?;
    if checked.event_id != built.event_id {
        return Err(Error::forbidden(
            "The invitee's server returned a different event",
        ));
    }
    let signed_by_invitee = matches!(
        checked.object.get("signatures"),
        Some(CanonicalJsonValue::Object(s)) if s.contains_key(server.as_str())
    );
    if !signed_by_invitee {
        return Err(Error::forbidden(
            "The invitee's server did not sign the invite",
        ));
    }
    // Our signature covers everything but `unsigned`, which is the invitee's
    // to fill (the stripped state a v1 invite carries comes back in it): not
    // kept in the event.
    let mut json = checked.object;
    json.remove("unsigned");
    Ok(Built { json, ..built })
}

fn raw_json(value: &impl serde::Serialize) -> Result<Box<RawJsonValue>> {
    Ok(serde_json::value::to_raw_value(value).map_err(|e| anyhow::anyhow!("{e}"))?)
}

/// `PUT /v1/invite` (deprecated): the body is the event itself, the stripped
/// state in its `unsigned`; the answer is `[200, {"event": …}]`. Not ruma's v1
/// type: its request carries only the event's content fields (not the signed
/// event), and it reads the answer as `[200, event]`.
async fn v1_invite(
    app: &AppState,
    server: &ServerName,
    built: &Built,
    invite_state: Value,
) -> Result<Value> {
    let path = format!(
        "/_matrix/federation/v1/invite/{}/{}",
        enc(built.room_id.as_str()),
        enc(built.event_id.as_str())
    );
    let mut event = serde_json::to_value(&built.json).map_err(|e| anyhow::anyhow!("{e}"))?;
    event["unsigned"]["invite_room_state"] = invite_state;
    let reply = app
        .federation
        .request_json(server, http::Method::PUT, &path, Some(&event))
        .await
        .map_err(invite_refused)?;
    super::handshake::v1_answer(reply).ok_or_else(|| {
        Error::new(
            ErrorKind::BadGateway,
            "The invitee's server answered /v1/invite with something else than [200, {…}]",
        )
    })
}

/// A failed invite request, as the inviting client sees it.
fn invite_refused(e: crate::federation::client::FedError) -> Error {
    match e {
        crate::federation::client::FedError::Remote { status: 403, body } => {
            Error::forbidden(format!("The invitee's server refused the invite: {body}"))
        }
        e => Error::new(
            ErrorKind::Unknown,
            format!("The invitee's server could not be reached: {e}"),
        ),
    }
}

//! `POST /createRoom` (spec: "Creation").

use axum::{Router, extract::State};
use ruma::api::client::room::create_room;
use serde_json::Value;

use super::{membership::invite_3pid, raw_object};
use crate::{
    api::{
        auth::AuthUser,
        ruma::{RouterExt, Ruma, RumaResponse},
    },
    error::{Error, Result},
    service::AppState,
    service::{
        room::{self, CreateRoom, Preset},
        third_party_invite::{self, Invite3pid},
    },
};

pub(super) fn router() -> Router<AppState> {
    Router::new().ruma::<create_room::v3::Request, _, _>(create)
}

async fn create(
    State(app): State<AppState>,
    AuthUser(user): AuthUser,
    Ruma(req): Ruma<create_room::v3::Request>,
) -> Result<RumaResponse<create_room::v3::Response>> {
    let invite_3pid: Vec<Invite3pid> = req.invite_3pid.iter().map(invite_3pid).collect();
    let mut initial_state = Vec::new();
    for raw in &req.initial_state {
        let ev = raw_object(raw.json().get(), "initial_state event")?;
        let kind = ev
            .get("type")
            .and_then(Value::as_str)
            .ok_or_else(|| Error::bad_json("initial_state event needs a type"))?;
        let key = ev
            .get("state_key")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let content = ev
            .get("content")
            .filter(|c| c.is_object())
            .cloned()
            .ok_or_else(|| Error::bad_json("initial_state event needs content"))?;
        initial_state.push((kind.to_owned(), key.to_owned(), content));
    }
    let creation_content = match &req.creation_content {
        Some(raw) => {
            let mut content = raw_object(raw.json().get(), "creation_content")?;
            // A space is a room with `type: m.space`; keep what the client sent.
            if let Some(Value::String(t)) = content.get("type")
                && t.is_empty()
            {
                content.remove("type");
            }
            Some(content)
        }
        None => None,
    };
    let preset = req.preset.as_ref().map(|p| match p.as_str() {
        "public_chat" => Ok(Preset::PublicChat),
        "trusted_private_chat" => Ok(Preset::TrustedPrivateChat),
        "private_chat" => Ok(Preset::PrivateChat),
        other => Err(Error::bad_json(format!("Unknown preset {other}"))),
    });
    let room_id = room::create(
        &app,
        &user.user_id,
        CreateRoom {
            room_version: req.room_version,
            preset: preset.transpose()?,
            public: req.visibility == ruma::api::client::room::Visibility::Public,
            creation_content,
            power_level_content_override: match &req.power_level_content_override {
                Some(raw) => Some(raw_object(
                    raw.json().get(),
                    "power_level_content_override",
                )?),
                None => None,
            },
            initial_state,
            name: req.name,
            topic: req.topic,
            room_alias_name: req.room_alias_name,
            invite: req.invite,
            is_direct: req.is_direct,
        },
    )
    .await?;
    // As on Synapse, invites by address follow the room's creation, one by one.
    for invite in &invite_3pid {
        third_party_invite::invite(&app, &user.user_id, &room_id, invite).await?;
    }
    Ok(RumaResponse(create_room::v3::Response::new(room_id)))
}

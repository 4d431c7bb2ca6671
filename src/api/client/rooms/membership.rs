//! Membership: `POST /join/{roomIdOrAlias}`, `POST /rooms/{roomId}/join`,
//! `POST /knock/{roomIdOrAlias}`, `…/leave`, `…/forget`, `…/invite`, `…/kick`,
//! `…/ban`, `…/unban` (spec: "Room membership").

use axum::{Router, extract::State};
use ruma::{
    OwnedRoomId, RoomId, RoomOrAliasId,
    api::client::{
        knock::knock_room,
        membership::{
            ban_user, forget_room, invite_user, join_room_by_id, join_room_by_id_or_alias,
            kick_user, leave_room, unban_user,
        },
    },
};

use crate::{
    api::{
        auth::{AuthUser, GuestOk},
        ruma::{RouterExt, Ruma, RumaResponse, RumaWithObject},
    },
    error::{Error, ErrorKind, Result},
    service::AppState,
    service::{
        directory,
        membership::{self, Change},
        third_party_invite::{self, Invite3pid},
    },
};

pub(super) fn router() -> Router<AppState> {
    Router::new()
        .ruma::<join_room_by_id::v3::Request, _, _>(join_by_id)
        .ruma::<join_room_by_id_or_alias::v3::Request, _, _>(join_by_id_or_alias)
        .ruma::<leave_room::v3::Request, _, _>(leave)
        .ruma::<forget_room::v3::Request, _, _>(forget)
        .ruma::<invite_user::v3::Request, _, _>(invite)
        .ruma::<kick_user::v3::Request, _, _>(kick)
        .ruma::<ban_user::v3::Request, _, _>(ban)
        .ruma::<unban_user::v3::Request, _, _>(unban)
        .ruma::<knock_room::v3::Request, _, _>(knock)
}

pub(super) fn invite_3pid(invite: &ruma::api::client::membership::Invite3pid) -> Invite3pid {
    Invite3pid {
        id_server: invite.id_server.clone(),
        id_access_token: invite.id_access_token.clone(),
        medium: invite.medium.as_str().to_owned(),
        address: invite.address.clone(),
    }
}

/// A room ID, or an alias resolved (over federation for remote aliases), with
/// the servers the alias names as resident.
async fn resolve_with_servers(
    app: &AppState,
    id: &RoomOrAliasId,
) -> Result<(OwnedRoomId, Vec<ruma::OwnedServerName>)> {
    match <&RoomId>::try_from(id) {
        Ok(room_id) => Ok((room_id.to_owned(), Vec::new())),
        Err(alias) => directory::resolve(app, alias).await,
    }
}

async fn join_by_id(
    State(app): State<AppState>,
    GuestOk(user): GuestOk,
    RumaWithObject(req, body): RumaWithObject<join_room_by_id::v3::Request>,
) -> Result<RumaResponse<join_room_by_id::v3::Response>> {
    if let Some(signed) = body.get("third_party_signed") {
        third_party_invite::join_signed(&app, &user.user_id, &req.room_id, signed).await?;
    }
    let content = membership::JoinContent::from_body(body);
    let room_id = membership::join_via(&app, &user.user_id, &req.room_id, content, &[]).await?;
    Ok(RumaResponse(join_room_by_id::v3::Response::new(room_id)))
}

async fn join_by_id_or_alias(
    State(app): State<AppState>,
    GuestOk(user): GuestOk,
    RumaWithObject(req, body): RumaWithObject<join_room_by_id_or_alias::v3::Request>,
) -> Result<RumaResponse<join_room_by_id_or_alias::v3::Response>> {
    let (room_id, mut servers) = resolve_with_servers(&app, &req.room_id_or_alias).await?;
    servers.extend(req.via);
    if let Some(signed) = body.get("third_party_signed") {
        third_party_invite::join_signed(&app, &user.user_id, &room_id, signed).await?;
    }
    let content = membership::JoinContent::from_body(body);
    let room_id = membership::join_via(&app, &user.user_id, &room_id, content, &servers).await?;
    Ok(RumaResponse(join_room_by_id_or_alias::v3::Response::new(
        room_id,
    )))
}

async fn knock(
    State(app): State<AppState>,
    AuthUser(user): AuthUser,
    Ruma(req): Ruma<knock_room::v3::Request>,
) -> Result<RumaResponse<knock_room::v3::Response>> {
    let (room_id, mut servers) = resolve_with_servers(&app, &req.room_id_or_alias).await?;
    servers.extend(req.via);
    membership::knock(&app, &user.user_id, &room_id, req.reason, &servers).await?;
    Ok(RumaResponse(knock_room::v3::Response::new(room_id)))
}

async fn leave(
    State(app): State<AppState>,
    GuestOk(user): GuestOk,
    Ruma(req): Ruma<leave_room::v3::Request>,
) -> Result<RumaResponse<leave_room::v3::Response>> {
    membership::leave(&app, &user.user_id, &req.room_id, req.reason).await?;
    Ok(RumaResponse(leave_room::v3::Response::new()))
}

async fn forget(
    State(app): State<AppState>,
    AuthUser(user): AuthUser,
    Ruma(req): Ruma<forget_room::v3::Request>,
) -> Result<RumaResponse<forget_room::v3::Response>> {
    membership::forget(&app, &user.user_id, &req.room_id).await?;
    Ok(RumaResponse(forget_room::v3::Response::new()))
}

async fn invite(
    State(app): State<AppState>,
    AuthUser(user): AuthUser,
    Ruma(req): Ruma<invite_user::v3::Request>,
) -> Result<RumaResponse<invite_user::v3::Response>> {
    let recipient = match req.recipient {
        invite_user::v3::InvitationRecipient::UserId(recipient) => recipient,
        invite_user::v3::InvitationRecipient::ThirdPartyId(invite) => {
            third_party_invite::invite(&app, &user.user_id, &req.room_id, &invite_3pid(&invite))
                .await?;
            return Ok(RumaResponse(invite_user::v3::Response::new()));
        }
        _ => {
            return Err(Error::new(
                ErrorKind::BadRequest,
                "An invite needs a user_id, or an id_server, medium and address",
            ));
        }
    };
    membership::change(
        &app,
        &user.user_id,
        &req.room_id,
        &recipient.user_id,
        Change::Invite,
        recipient.reason,
        false,
    )
    .await?;
    Ok(RumaResponse(invite_user::v3::Response::new()))
}

async fn kick(
    State(app): State<AppState>,
    AuthUser(user): AuthUser,
    Ruma(req): Ruma<kick_user::v3::Request>,
) -> Result<RumaResponse<kick_user::v3::Response>> {
    membership::change(
        &app,
        &user.user_id,
        &req.room_id,
        &req.user_id,
        Change::Kick,
        req.reason,
        false,
    )
    .await?;
    Ok(RumaResponse(kick_user::v3::Response::new()))
}

async fn ban(
    State(app): State<AppState>,
    AuthUser(user): AuthUser,
    Ruma(req): Ruma<ban_user::v3::Request>,
) -> Result<RumaResponse<ban_user::v3::Response>> {
    membership::change(
        &app,
        &user.user_id,
        &req.room_id,
        &req.user_id,
        Change::Ban,
        req.reason,
        false,
    )
    .await?;
    Ok(RumaResponse(ban_user::v3::Response::new()))
}

async fn unban(
    State(app): State<AppState>,
    AuthUser(user): AuthUser,
    Ruma(req): Ruma<unban_user::v3::Request>,
) -> Result<RumaResponse<unban_user::v3::Response>> {
    membership::change(
        &app,
        &user.user_id,
        &req.room_id,
        &req.user_id,
        Change::Unban,
        req.reason,
        false,
    )
    .await?;
    Ok(RumaResponse(unban_user::v3::Response::new()))
}

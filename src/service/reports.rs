//! Reporting rooms (`POST /rooms/{roomId}/report`, spec v1.13) and users
//! (`POST /users/{userId}/report`, v1.14) to the server's administrators, who
//! read them through the admin API (`room_reports`, `user_reports`). Event
//! reports are in [`super::timeline::report`].

use ruma::{RoomId, UserId};

use crate::{
    error::{Error, Result},
    service::AppState,
    storage::{reports, rooms, users},
};

/// Longest accepted reason of a user report, in characters (Synapse's limit).
const MAX_REASON_CHARS: usize = 1000;

/// A room known to this server may be reported by anyone, member or not; an
/// unknown room is `404 M_NOT_FOUND` (the spec's answer, as Synapse gives it).
pub async fn report_room(
    app: &AppState,
    reporter: &UserId,
    room_id: &RoomId,
    reason: &str,
) -> Result<()> {
    if rooms::get(&app.db, room_id.as_str()).await?.is_none() {
        return Err(Error::not_found("Room does not exist"));
    }
    reports::insert_room_report(
        &app.db,
        room_id.as_str(),
        reporter.as_str(),
        reason,
        app.clock.now_ms(),
    )
    .await?;
    tracing::info!(%room_id, reporter = %reporter, "room reported");
    Ok(())
}

/// A report of a local account is stored; one of a remote or unknown user is
/// answered `200` all the same and dropped, so the endpoint does not tell which
/// accounts exist (the spec allows it; Synapse does so).
pub async fn report_user(
    app: &AppState,
    reporter: &UserId,
    target: &UserId,
    reason: &str,
) -> Result<()> {
    if reason.chars().count() > MAX_REASON_CHARS {
        return Err(Error::bad_json(
            "The reason must be at most 1000 characters",
        ));
    }
    if target.server_name() != app.server_name
        || users::get(&app.db, target.as_str()).await?.is_none()
    {
        return Ok(());
    }
    reports::insert_user_report(
        &app.db,
        target.as_str(),
        reporter.as_str(),
        reason,
        app.clock.now_ms(),
    )
    .await?;
    tracing::info!(target = %target, reporter = %reporter, "user reported");
    Ok(())
}

//! Reports: events (`/_synapse/admin/v1/event_reports`), rooms
//! (`…/room_reports`) and users (`…/user_reports`) reported by users.

use serde::Serialize;
use serde_json::Value;

use super::{next_offset, rooms::RoomSummary};
use crate::{
    error::{Error, Result},
    service::AppState,
    service::{directory, session::Session},
    storage::rooms,
};

/// A reported event, in Synapse's shape.
#[derive(Debug, Serialize)]
pub struct EventReport {
    pub id: i64,
    pub received_ts: i64,
    pub room_id: String,
    pub event_id: String,
    /// The reporter.
    pub user_id: String,
    pub reason: Option<String>,
    pub score: Option<i32>,
}

impl From<&crate::storage::relations::Report> for EventReport {
    fn from(r: &crate::storage::relations::Report) -> Self {
        Self {
            id: r.report_id,
            received_ts: r.created_ts,
            room_id: r.room_id.clone(),
            event_id: r.event_id.clone(),
            user_id: r.reporter.clone(),
            reason: r.reason.clone(),
            score: r.score,
        }
    }
}

/// One event report with the reported event.
#[derive(Debug, Serialize)]
pub struct EventReportDetails {
    #[serde(flatten)]
    pub report: EventReport,
    /// The event as stored (any room version's form), while it is held.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_json: Option<Value>,
}

/// A page of event reports, newest first.
#[derive(Debug, Serialize)]
pub struct EventReports {
    pub event_reports: Vec<EventReport>,
    pub total: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_token: Option<i64>,
}

/// A reported room, with its name, topic and canonical alias (`null` when
/// the room has none or is not held here).
#[derive(Debug, Serialize)]
pub struct RoomReport {
    pub id: i64,
    pub received_ts: i64,
    pub room_id: String,
    /// The reporter.
    pub user_id: String,
    pub reason: String,
    pub canonical_alias: Option<String>,
    pub name: Option<String>,
    pub topic: Option<String>,
}

/// A page of room reports, newest first.
#[derive(Debug, Serialize)]
pub struct RoomReports {
    pub room_reports: Vec<RoomReport>,
    pub total: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_batch: Option<i64>,
}

/// A reported user.
#[derive(Debug, Serialize)]
pub struct UserReport {
    pub id: i64,
    pub received_ts: i64,
    pub target_user_id: String,
    /// The reporter.
    pub user_id: String,
    pub reason: String,
}

impl From<&crate::storage::reports::Report> for UserReport {
    fn from(r: &crate::storage::reports::Report) -> Self {
        Self {
            id: r.report_id,
            received_ts: r.created_ts,
            target_user_id: r.subject.clone(),
            user_id: r.reporter.clone(),
            reason: r.reason.clone(),
        }
    }
}

/// A page of user reports, newest first.
#[derive(Debug, Serialize)]
pub struct UserReports {
    pub user_reports: Vec<UserReport>,
    pub total: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_token: Option<i64>,
}

/// `GET /_synapse/admin/v1/event_reports`: newest first, `from` an offset.
pub async fn event_reports(app: &AppState, from: i64, limit: i64) -> Result<EventReports> {
    let limit = limit.clamp(1, 1000);
    let (rows, total) = crate::storage::relations::reports(&app.db, from.max(0), limit).await?;
    Ok(EventReports {
        event_reports: rows.iter().map(EventReport::from).collect(),
        total,
        next_token: next_offset(from, limit, total),
    })
}

/// `GET /_synapse/admin/v1/event_reports/{id}`: the report with the event.
pub async fn event_report(app: &AppState, report_id: i64) -> Result<EventReportDetails> {
    let report = crate::storage::relations::report(&app.db, report_id)
        .await?
        .ok_or_else(|| Error::not_found("No such report"))?;
    let event_json = crate::storage::events::get(&app.db, &report.event_id)
        .await?
        .map(|ev| serde_json::from_str(&ev.json).unwrap_or_default());
    Ok(EventReportDetails {
        report: EventReport::from(&report),
        event_json,
    })
}

/// `DELETE /_synapse/admin/v1/event_reports/{id}`.
pub async fn delete_event_report(app: &AppState, by: &Session, report_id: i64) -> Result<()> {
    if !crate::storage::relations::delete_report(&app.db, report_id).await? {
        return Err(Error::not_found("No such report"));
    }
    tracing::info!(admin = %by.user_id, report_id, "admin API: event report deleted");
    Ok(())
}

/// `GET /_synapse/admin/v1/room_reports`: newest first, `from` an offset,
/// optionally of one room (`room_id`) or by one reporter (`user_id`); each with
/// the room's name, topic and canonical alias.
pub async fn room_reports(
    app: &AppState,
    from: i64,
    limit: i64,
    room_id: Option<&str>,
    reporter: Option<&str>,
) -> Result<RoomReports> {
    let limit = limit.clamp(1, 1000);
    let (rows, total) =
        crate::storage::reports::room_reports(&app.db, from.max(0), limit, room_id, reporter)
            .await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in &rows {
        out.push(room_report_of(app, r).await?);
    }
    Ok(RoomReports {
        room_reports: out,
        total,
        next_batch: next_offset(from, limit, total),
    })
}

async fn room_report_of(app: &AppState, r: &crate::storage::reports::Report) -> Result<RoomReport> {
    let mut report = RoomReport {
        id: r.report_id,
        received_ts: r.created_ts,
        room_id: r.subject.clone(),
        user_id: r.reporter.clone(),
        reason: r.reason.clone(),
        canonical_alias: None,
        name: None,
        topic: None,
    };
    if let Some(room) = rooms::get(&app.db, &r.subject).await?
        && let Some(group) = room.current_state_group
    {
        let summary = RoomSummary::from(directory::room_entry(app, &r.subject, group, 0).await?);
        report.canonical_alias = summary.canonical_alias;
        report.name = summary.name;
        report.topic = summary.topic;
    }
    Ok(report)
}

/// `GET /_synapse/admin/v1/room_reports/{id}`.
pub async fn room_report(app: &AppState, report_id: i64) -> Result<RoomReport> {
    let report = crate::storage::reports::room_report(&app.db, report_id)
        .await?
        .ok_or_else(|| Error::not_found("Room report not found"))?;
    room_report_of(app, &report).await
}

/// `GET /_synapse/admin/v1/user_reports`: newest first, `from` an offset,
/// optionally of one user (`target_user_id`) or by one reporter (`user_id`).
pub async fn user_reports(
    app: &AppState,
    from: i64,
    limit: i64,
    target: Option<&str>,
    reporter: Option<&str>,
) -> Result<UserReports> {
    let limit = limit.clamp(1, 1000);
    let (rows, total) =
        crate::storage::reports::user_reports(&app.db, from.max(0), limit, target, reporter)
            .await?;
    Ok(UserReports {
        user_reports: rows.iter().map(UserReport::from).collect(),
        total,
        next_token: next_offset(from, limit, total),
    })
}

/// `GET /_synapse/admin/v1/user_reports/{id}`.
pub async fn user_report(app: &AppState, report_id: i64) -> Result<UserReport> {
    let report = crate::storage::reports::user_report(&app.db, report_id)
        .await?
        .ok_or_else(|| Error::not_found("User report not found"))?;
    Ok(UserReport::from(&report))
}

/// `DELETE /_synapse/admin/v1/user_reports/{id}`.
pub async fn delete_user_report(app: &AppState, by: &Session, report_id: i64) -> Result<()> {
    if !crate::storage::reports::delete_user_report(&app.db, report_id).await? {
        return Err(Error::not_found("User report not found"));
    }
    tracing::info!(admin = %by.user_id, report_id, "admin API: user report deleted");
    Ok(())
}

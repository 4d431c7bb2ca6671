//! Media: a local user's uploads (`GET /_synapse/admin/v1/users/{userId}/media`).

use serde::Serialize;

use super::{local_user, next_offset};
use crate::{error::Result, service::AppState};

/// An upload, in Synapse's shape.
#[derive(Debug, Serialize)]
pub struct UserMedia {
    pub media_id: String,
    pub media_type: Option<String>,
    pub media_length: Option<i64>,
    pub upload_name: Option<String>,
    pub created_ts: i64,
    /// `"admin"` while quarantined, else `null` (who quarantined it is not kept).
    pub quarantined_by: Option<&'static str>,
    pub safe_from_quarantine: bool,
}

/// A page of a user's uploads.
#[derive(Debug, Serialize)]
pub struct UserMediaList {
    pub media: Vec<UserMedia>,
    pub total: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_token: Option<i64>,
}

/// `GET /_synapse/admin/v1/users/{userId}/media`: a local user's uploads.
pub async fn user_media(
    app: &AppState,
    user_id: &str,
    from: i64,
    limit: i64,
) -> Result<UserMediaList> {
    let user = local_user(app, user_id)?;
    let limit = limit.clamp(1, 1000);
    let (rows, total) =
        crate::storage::media::by_user(&app.db, user.as_str(), from.max(0), limit).await?;
    let media = rows
        .into_iter()
        .map(|m| UserMedia {
            media_id: m.media_id,
            media_type: m.content_type,
            media_length: m.size,
            upload_name: m.upload_name,
            created_ts: m.created_ts,
            quarantined_by: m.quarantined.then_some("admin"),
            safe_from_quarantine: false,
        })
        .collect();
    Ok(UserMediaList {
        media,
        total,
        next_token: next_offset(from, limit, total),
    })
}

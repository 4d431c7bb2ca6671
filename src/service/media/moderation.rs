//! Moderation: quarantine (one item, or every local item a room refers to)
//! and purging a user's uploads.

use super::store::delete_unused_files;
use crate::{
    error::{Error, Result},
    service::AppState,
    storage::media as rows,
};

/// Deletes every upload of a user (and files no one else uses); returns the
/// media ids deleted.
pub async fn purge_user(app: &AppState, user_id: &str) -> Result<Vec<String>> {
    let (ids, hashes) = rows::delete_by_user(&app.db, user_id).await?;
    delete_unused_files(app, &hashes).await?;
    Ok(ids)
}

/// Quarantines every local media item a room's events refer to; returns how
/// many there were.
pub async fn quarantine_room(app: &AppState, room_id: &str) -> Result<u64> {
    let prefix = format!("mxc://{}/", app.server_name);
    let mut ids = std::collections::BTreeSet::new();
    for json in rows::room_events_mentioning(&app.db, room_id, &prefix).await? {
        let mut rest = json.as_str();
        while let Some(at) = rest.find(&prefix) {
            let after = &rest[at + prefix.len()..];
            let id: String = after
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-')
                .collect();
            if !id.is_empty() {
                ids.insert(id);
            }
            rest = after;
        }
    }
    let ids: Vec<String> = ids.into_iter().collect();
    Ok(rows::quarantine_many(&app.db, app.server_name.as_str(), &ids).await?)
}

/// Quarantines (or releases) one item: it is no longer served.
pub async fn quarantine(app: &AppState, mxc_uri: &str, quarantined: bool) -> Result<()> {
    let (server, id) = mxc_uri
        .strip_prefix("mxc://")
        .and_then(|rest| rest.split_once('/'))
        .ok_or_else(|| Error::invalid_param("Not an mxc:// URI"))?;
    if !rows::set_quarantined(&app.db, server, id, quarantined).await? {
        return Err(Error::not_found("Media not found"));
    }
    Ok(())
}

//! `POST /user_directory/search` (spec: "User directory"): users who share a
//! room with the searcher and members of public rooms (join rule `public` or
//! history `world_readable`) this server is in, as Synapse does by default.

use ruma::{
    OwnedUserId,
    api::client::user_directory::search_users::v3::{Response, User},
};

use super::session::Session;
use crate::{error::Result, service::AppState, storage::user_directory};

pub async fn search(app: &AppState, session: &Session, term: &str, limit: u64) -> Result<Response> {
    let terms: Vec<String> = term
        .split_whitespace()
        .map(|t| {
            t.to_lowercase()
                .replace('\\', "\\\\")
                .replace('%', "\\%")
                .replace('_', "\\_")
        })
        .collect();
    let limit = limit.clamp(1, 50) as i64;
    if terms.is_empty() {
        return Ok(Response::new(Vec::new(), false));
    }
    let mut rows = user_directory::search(
        &app.db,
        session.user_id.as_str(),
        &terms,
        limit + 1,
        app.server_name.as_str(),
    )
    .await?;
    let limited = rows.len() as i64 > limit;
    rows.truncate(limit as usize);
    let results = rows
        .into_iter()
        .filter_map(|m| {
            let mut out = User::new(OwnedUserId::try_from(m.user_id).ok()?);
            out.display_name = m.display_name;
            out.avatar_url = m.avatar_url.map(Into::into);
            Some(out)
        })
        .collect();
    Ok(Response::new(results, limited))
}

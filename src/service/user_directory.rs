//! `POST /user_directory/search` (spec: "User directory"): users who share a
//! room with the searcher and members of public rooms (join rule `public` or
//! history `world_readable`) this server is in, as Synapse does by default.

use serde_json::{Value, json};

use super::session::Session;
use crate::{app::AppState, error::Result, storage::user_directory};

pub async fn search(app: &AppState, session: &Session, term: &str, limit: u64) -> Result<Value> {
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
        return Ok(json!({ "results": [], "limited": false }));
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
    let results: Vec<Value> = rows
        .into_iter()
        .map(|m| {
            let mut out = json!({ "user_id": m.user_id });
            if let Some(name) = m.display_name {
                out["display_name"] = name.into();
            }
            if let Some(url) = m.avatar_url {
                out["avatar_url"] = url.into();
            }
            out
        })
        .collect();
    Ok(json!({ "results": results, "limited": limited }))
}

//! Rooms two users share (spec v1.19 "Mutual Rooms", MSC2666): only rooms both
//! are joined to, so the answer never names a room the requester is not in.

use ruma::UserId;

use crate::{
    error::{Error, Result},
    service::AppState,
    storage::rooms,
};

/// Rooms per page; `next_batch` continues after the last one.
pub const PAGE: usize = 100;

/// One page of rooms both users are joined to, in room ID order, the total,
/// and the token for the next page. `from` is a token from an earlier page:
/// the room ID it ended at, so rooms joined since do not shift the pages.
pub async fn mutual_rooms(
    app: &AppState,
    requester: &UserId,
    other: &UserId,
    from: Option<&str>,
) -> Result<(Vec<String>, usize, Option<String>)> {
    if requester == other {
        return Err(Error::invalid_param(
            "Mutual rooms with yourself: ask /joined_rooms",
        ));
    }
    let after = match from {
        Some(token) => Some(
            token
                .strip_prefix('m')
                .filter(|r| ruma::RoomId::parse(*r).is_ok())
                .ok_or_else(|| Error::invalid_param("Invalid from token"))?,
        ),
        None => None,
    };
    let mine = rooms::rooms_for_user(&app.db, requester.as_str(), "join").await?;
    let theirs: std::collections::HashSet<String> =
        rooms::rooms_for_user(&app.db, other.as_str(), "join")
            .await?
            .into_iter()
            .collect();
    let shared: Vec<String> = mine.into_iter().filter(|r| theirs.contains(r)).collect();
    let total = shared.len();
    let mut page: Vec<String> = shared
        .into_iter()
        .filter(|r| after.is_none_or(|a| r.as_str() > a))
        .take(PAGE + 1)
        .collect();
    let next = if page.len() > PAGE {
        page.truncate(PAGE);
        page.last().map(|r| format!("m{r}"))
    } else {
        None
    };
    Ok((page, total, next))
}

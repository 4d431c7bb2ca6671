//! User directory search: users sharing a joined room with the searcher, and
//! members of rooms published in the room directory.

use sqlx::PgExecutor;

pub struct Match {
    pub user_id: String,
    pub display_name: Option<String>,
    pub avatar_url: Option<String>,
}

/// Users visible to `searcher` whose id or display name contains every one of
/// `terms` (lower-case), users sharing a room first. Deactivated local users
/// are left out. Display names and avatars come from the user's profile when
/// local, else from their member event.
pub async fn search(
    db: impl PgExecutor<'_>,
    searcher: &str,
    terms: &[String],
    limit: i64,
) -> sqlx::Result<Vec<Match>> {
    sqlx::query_as!(
        Match,
        r#"with visible as (
               select m.user_id, bool_or(mine.room_id is not null) as shared,
                      max(e.json::jsonb -> 'content' ->> 'displayname') as member_name,
                      max(e.json::jsonb -> 'content' ->> 'avatar_url') as member_avatar
               from room_members m
               join events e on e.event_id = m.event_id
               left join room_members mine
                 on mine.room_id = m.room_id and mine.user_id = $1 and mine.membership = 'join'
               left join rooms r on r.room_id = m.room_id
               where m.membership = 'join' and (mine.room_id is not null or r.published)
               group by m.user_id
           )
           select v.user_id as "user_id!",
                  coalesce(p.displayname, v.member_name) as display_name,
                  coalesce(p.avatar_url, v.member_avatar) as avatar_url
           from visible v
           left join profiles p on p.user_id = v.user_id
           left join users u on u.user_id = v.user_id
           where not coalesce(u.deactivated, false)
             and (select bool_and(lower(v.user_id) like '%' || t || '%'
                         or lower(coalesce(p.displayname, v.member_name, '')) like '%' || t || '%')
                  from unnest($2::text[]) t)
           order by v.shared desc, coalesce(p.displayname, v.member_name, v.user_id)
           limit $3"#,
        searcher,
        terms,
        limit
    )
    .fetch_all(db)
    .await
}

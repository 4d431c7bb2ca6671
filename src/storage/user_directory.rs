//! User directory search: users sharing a joined room with the searcher, and
//! members of public rooms this server is in.

use sqlx::PgExecutor;

pub struct Match {
    pub user_id: String,
    pub display_name: Option<String>,
    pub avatar_url: Option<String>,
}

/// Users visible to `searcher` whose id or display name contains every one of
/// `terms` (lower-case), users sharing a room first. Visible, as on Synapse:
/// other users sharing a joined room with the searcher (the searcher is not
/// visible to themself through a private room), and members of public rooms
/// (join rule `public` or history `world_readable`, by current state) that
/// this server (`server_name`) is still in. Deactivated local users are left
/// out. Display names and avatars come from the user's profile when local,
/// else from their member event.
pub async fn search(
    db: impl PgExecutor<'_>,
    searcher: &str,
    terms: &[String],
    limit: i64,
    server_name: &str,
) -> sqlx::Result<Vec<Match>> {
    sqlx::query_as!(
        Match,
        r#"with recursive
           -- Rooms this server is in, worked out once.
           local_rooms as (
               select distinct l.room_id from room_members l
               where l.membership = 'join' and right(l.user_id, length($4) + 1) = ':' || $4
           ),
           cand as (
               select m.room_id, m.user_id,
                      coalesce(e.json, oe.json)::jsonb -> 'content' ->> 'displayname' as member_name,
                      coalesce(e.json, oe.json)::jsonb -> 'content' ->> 'avatar_url' as member_avatar,
                      m.user_id <> $1
                      and exists (select 1 from room_members mine
                                  where mine.room_id = m.room_id and mine.user_id = $1
                                    and mine.membership = 'join') as shared
               from room_members m
               -- Member events of a room joined over federation are outliers
               -- (the state send_join gave).
               left join events e on e.event_id = m.event_id
               left join outlier_events oe on oe.event_id = m.event_id and e.event_id is null
               left join profiles p on p.user_id = m.user_id
               where m.membership = 'join'
                 and (select bool_and(lower(m.user_id) like '%' || t || '%'
                             or lower(coalesce(p.displayname,
                                               coalesce(e.json, oe.json)::jsonb -> 'content' ->> 'displayname', ''))
                                like '%' || t || '%')
                      from unnest($2::text[]) t)
           ),
           -- The join rules and history visibility of candidate rooms not
           -- shared with the searcher, walking each room's state chain.
           chain(room_id, state_group, n) as (
               select r.room_id, r.current_state_group, 0
               from rooms r
               where r.room_id in (select room_id from cand where not shared)
                 and r.room_id in (select room_id from local_rooms)
                 and r.current_state_group is not null
               union all
               select c.room_id, g.parent_group, c.n + 1
               from chain c join state_groups g on g.state_group = c.state_group
               where g.parent_group is not null
           ),
           -- The chains' groups go to the entry look-up as an array, so it
           -- uses both key columns (joined on the chain, PostgreSQL read
           -- every entry of every room: `storage::state`).
           room_rules as (
               select distinct on (c.room_id, k.state_key_id) c.room_id, k.event_type, se.event_id
               from state_keys k
               join state_group_entries se on se.state_key_id = k.state_key_id
                    and se.state_group = any(array(select state_group from chain))
               join chain c on c.state_group = se.state_group
               where k.state_key = ''
                 and k.event_type in ('m.room.join_rules', 'm.room.history_visibility')
               order by c.room_id, k.state_key_id, c.n
           ),
           public_rooms as (
               select distinct rr.room_id
               from room_rules rr join events ev on ev.event_id = rr.event_id
               where (rr.event_type = 'm.room.join_rules'
                      and ev.json::jsonb -> 'content' ->> 'join_rule' = 'public')
                  or (rr.event_type = 'm.room.history_visibility'
                      and ev.json::jsonb -> 'content' ->> 'history_visibility' = 'world_readable')
           ),
           visible as (
               select c.user_id, bool_or(c.shared) as shared,
                      max(c.member_name) as member_name, max(c.member_avatar) as member_avatar
               from cand c
               where c.shared or c.room_id in (select room_id from public_rooms)
               group by c.user_id
           )
           select v.user_id as "user_id!",
                  coalesce(p.displayname, v.member_name) as display_name,
                  coalesce(p.avatar_url, v.member_avatar) as avatar_url
           from visible v
           left join profiles p on p.user_id = v.user_id
           left join users u on u.user_id = v.user_id
           where not coalesce(u.deactivated, false)
           order by v.shared desc, coalesce(p.displayname, v.member_name, v.user_id)
           limit $3"#,
        searcher,
        terms,
        limit,
        server_name
    )
    .fetch_all(db)
    .await
}

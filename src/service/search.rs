//! `POST /search` (spec: "Server Side Search") over room events, with
//! PostgreSQL full-text search: message bodies, room names and topics are
//! indexed when persisted (English stemming, as Synapse does); each search word
//! matches as a prefix. Only rooms the user is joined to are searched, and each
//! match is checked against history visibility before it counts for anything
//! (results, `count`, `next_batch`). Results are ranked
//! (`order_by: rank`, the default) or newest first (`recent`); `next_batch`
//! continues either. `groupings` and `include_state` are not implemented (the
//! response carries neither).

use std::collections::{BTreeMap, HashMap};

use ruma::{
    OwnedRoomId, RoomId,
    api::client::search::search_events::v3::{Criteria, OrderBy, SearchKeys, UserProfile},
    events::AnyTimelineEvent,
    serde::Raw,
};
use serde::Serialize;
use serde_json::Value;

use super::{
    client_event::raw,
    read::{Viewer, filter_allows},
    session::Session,
    tokens::TopoToken,
};
use crate::{
    domain::filter::{Candidate, EventFilter},
    error::{Error, Result},
    service::AppState,
    storage::{events, events::StoredEvent, profiles, search as rows},
};

/// The searchable fields: (search key, content field).
pub const KEYS: [(&str, &str); 3] = [
    ("content.body", "body"),
    ("content.name", "name"),
    ("content.topic", "topic"),
];

/// What to index for an event of `event_type` with `content`: (key, text).
pub fn indexable<'a>(event_type: &str, content: &'a Value) -> Option<(&'static str, &'a str)> {
    let key = match event_type {
        "m.room.message" => "content.body",
        "m.room.name" => "content.name",
        "m.room.topic" => "content.topic",
        _ => return None,
    };
    let field = KEYS.iter().find(|(k, _)| *k == key)?.1;
    content[field].as_str().map(|text| (key, text))
}

/// The words of a search term as a prefix-matching tsquery (`a:* & b:*`).
fn tsquery(term: &str) -> (String, Vec<String>) {
    let words: Vec<String> = term
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect();
    let query = words
        .iter()
        .map(|w| format!("{w}:*"))
        .collect::<Vec<_>>()
        .join(" & ");
    (query, words)
}

/// Matches examined per search: `count` is exact up to this many (the spec
/// calls it approximate), and ranked results page through this many.
const MAX_CANDIDATES: i64 = 1000;

enum Batch {
    Rank { offset: i64 },
    Recent { before: i64 },
}

impl Batch {
    fn parse(token: Option<&str>, by_rank: bool) -> Result<Self> {
        let invalid = || Error::invalid_param("Invalid next_batch token");
        Ok(match (token, by_rank) {
            (None, true) => Batch::Rank { offset: 0 },
            (None, false) => Batch::Recent { before: i64::MAX },
            (Some(t), true) => Batch::Rank {
                offset: t
                    .strip_prefix('r')
                    .and_then(|n| n.parse().ok())
                    .ok_or_else(invalid)?,
            },
            (Some(t), false) => Batch::Recent {
                before: t
                    .strip_prefix('s')
                    .and_then(|n| n.parse().ok())
                    .ok_or_else(invalid)?,
            },
        })
    }
}

/// The `/search` answer. ruma's response type leaves out `results` and
/// `highlights` when they are empty, and a result's empty `events_before` and
/// `events_after`; matrix-js-sdk reads `results` without checking, and
/// Synapse always sends all four, so these types keep them.
#[derive(Debug, Default, Serialize)]
pub struct Response {
    pub search_categories: Categories,
}

#[derive(Debug, Default, Serialize)]
pub struct Categories {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub room_events: Option<RoomEvents>,
}

#[derive(Debug, Default, Serialize)]
pub struct RoomEvents {
    pub count: usize,
    pub highlights: Vec<String>,
    pub results: Vec<SearchResult>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_batch: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct SearchResult {
    /// PostgreSQL's `real`, widened as it always was on the wire.
    pub rank: f64,
    pub result: Option<Raw<AnyTimelineEvent>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub context: Option<ResultContext>,
}

/// Visible events around a result and, if asked, the senders' profiles.
#[derive(Debug, Serialize)]
pub struct ResultContext {
    pub start: String,
    pub end: String,
    pub events_before: Vec<Raw<AnyTimelineEvent>>,
    pub events_after: Vec<Raw<AnyTimelineEvent>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub profile_info: Option<BTreeMap<String, UserProfile>>,
}

pub async fn search(
    app: &AppState,
    reader: &Session,
    criteria: &Criteria,
    next_batch: Option<&str>,
) -> Result<Response> {
    let user = &reader.user_id;
    let filter = &criteria.filter;
    let event_filter = EventFilter::from_room_event_filter(filter);
    let mut rooms = super::read::joined_rooms(app, user).await?;
    rooms.retain(|r| event_filter.allows_room(r));
    let keys: Vec<String> = match &criteria.keys {
        Some(keys) if !keys.is_empty() => keys
            .iter()
            .map(|k| match k {
                SearchKeys::ContentBody => Ok("content.body".to_owned()),
                SearchKeys::ContentName => Ok("content.name".to_owned()),
                SearchKeys::ContentTopic => Ok("content.topic".to_owned()),
                other => Err(Error::invalid_param(format!(
                    "Unknown search key {}",
                    other.as_str()
                ))),
            })
            .collect::<Result<_>>()?,
        _ => KEYS.iter().map(|(k, _)| (*k).to_owned()).collect(),
    };
    let by_rank = !matches!(criteria.order_by, Some(OrderBy::Recent));
    let batch = Batch::parse(next_batch, by_rank)?;
    let limit = filter.limit.map_or(10, |l| u64::from(l).clamp(1, 50)) as usize;
    let (query, words) = tsquery(&criteria.search_term);
    if query.is_empty() || rooms.is_empty() {
        return Ok(Response {
            search_categories: Categories {
                room_events: Some(RoomEvents::default()),
            },
        });
    }

    // Results, count and next_batch come from the matches the user may see,
    // and only those: a match in hidden history must not show, not even as a
    // number (prefix matching would spell it out letter by letter).
    let candidates = rows::candidates(
        &app.db,
        &rows::Query {
            query: &query,
            rooms: &rooms,
            keys: &keys,
            by_rank,
            before: match batch {
                Batch::Recent { before } => before,
                Batch::Rank { .. } => i64::MAX,
            },
            limit: MAX_CANDIDATES,
        },
    )
    .await?;
    let mut viewers: HashMap<String, Viewer<'_>> = HashMap::new();
    let room_ids: HashMap<String, OwnedRoomId> = rooms
        .iter()
        .filter_map(|r| RoomId::parse(r).ok().map(|id| (r.clone(), id)))
        .collect();
    for (room, room_id) in &room_ids {
        let groups: Vec<i64> = candidates
            .iter()
            .filter(|c| &c.room_id == room)
            .filter_map(|c| c.state_group)
            .collect();
        if groups.is_empty() {
            continue;
        }
        let mut viewer = Viewer::for_session(app, reader, room_id).await?;
        viewer.prefetch(&groups).await?;
        viewers.insert(room.clone(), viewer);
    }
    // `contains_url` looks at the content: read it only when asked.
    let contents: HashMap<String, StoredEvent> = if event_filter.needs_content() {
        let ids: Vec<String> = candidates.iter().map(|c| c.event_id.clone()).collect();
        events::get_many(&app.db, &ids)
            .await?
            .into_iter()
            .map(|e| (e.event_id.clone(), e))
            .collect()
    } else {
        HashMap::new()
    };
    let allowed = |c: &rows::Candidate| match contents.get(&c.event_id) {
        Some(ev) => filter_allows(&event_filter, ev),
        None => {
            !event_filter.needs_content()
                && event_filter.allows(Candidate {
                    event_type: &c.event_type,
                    sender: Some(&c.sender),
                    room_id: Some(&c.room_id),
                    content: None,
                })
        }
    };
    let mut visible = Vec::new();
    for c in candidates {
        let Some(viewer) = viewers.get_mut(&c.room_id) else {
            continue;
        };
        if allowed(&c)
            && viewer
                .may_see_parts(&c.room_id, &c.event_id, &c.event_type, c.state_group)
                .await?
        {
            visible.push(c);
        }
    }
    let count = visible.len();
    let skip = match batch {
        Batch::Rank { offset } => usize::try_from(offset).unwrap_or(usize::MAX),
        Batch::Recent { .. } => 0,
    };
    let page: Vec<rows::Candidate> = visible.into_iter().skip(skip).take(limit + 1).collect();
    let next = (page.len() > limit).then(|| match batch {
        Batch::Rank { offset } => format!("r{}", offset + limit as i64),
        Batch::Recent { .. } => format!("s{}", page[limit - 1].stream_ordering),
    });
    let page = &page[..page.len().min(limit)];

    let ids: Vec<String> = page.iter().map(|c| c.event_id.clone()).collect();
    let mut stored: HashMap<String, StoredEvent> = events::get_many(&app.db, &ids)
        .await?
        .into_iter()
        .map(|e| (e.event_id.clone(), e))
        .collect();
    let mut results = Vec::new();
    for hit in page {
        let Some(event) = stored.remove(&hit.event_id) else {
            continue;
        };
        let Some(viewer) = viewers.get_mut(&event.room_id) else {
            continue;
        };
        if event.redacted_by.is_some() {
            continue;
        }
        let result = viewer
            .client_events(std::slice::from_ref(&event))
            .await?
            .pop()
            .map(|e| raw(&e));
        let ctx = &criteria.event_context;
        let (before_n, after_n) = (u64::from(ctx.before_limit), u64::from(ctx.after_limit));
        let context = if before_n > 0 || after_n > 0 || ctx.include_profile {
            Some(
                context(
                    app,
                    viewer,
                    &event,
                    before_n.min(20),
                    after_n.min(20),
                    ctx.include_profile,
                )
                .await?,
            )
        } else {
            None
        };
        results.push(SearchResult {
            rank: f64::from(hit.rank),
            result,
            context,
        });
    }
    Ok(Response {
        search_categories: Categories {
            room_events: Some(RoomEvents {
                count,
                highlights: words,
                results,
                next_batch: next,
            }),
        },
    })
}

/// `context` of a result: visible events around it and, if asked, the senders'
/// profiles.
async fn context(
    app: &AppState,
    viewer: &mut Viewer<'_>,
    event: &StoredEvent,
    before_n: u64,
    after_n: u64,
    include_profile: bool,
) -> Result<ResultContext> {
    let page = |backwards: bool, n: u64| {
        events::page(
            &app.db,
            &event.room_id,
            event.depth,
            event.stream_ordering,
            backwards,
            n as i64,
        )
    };
    let mut before = Vec::new();
    for e in page(true, before_n).await? {
        if viewer.may_see(&e).await? {
            before.push(e);
        }
    }
    let mut after = Vec::new();
    for e in page(false, after_n).await? {
        if viewer.may_see(&e).await? {
            after.push(e);
        }
    }
    // Gaps: before the oldest event shown, after the newest (`/messages`
    // continues from either).
    let mut out = ResultContext {
        start: TopoToken::before(before.last().unwrap_or(event)).to_string(),
        end: TopoToken::after(after.last().unwrap_or(event)).to_string(),
        events_before: viewer
            .client_events(&before)
            .await?
            .iter()
            .map(raw)
            .collect(),
        events_after: viewer
            .client_events(&after)
            .await?
            .iter()
            .map(raw)
            .collect(),
        profile_info: None,
    };
    if include_profile {
        let mut profiles_out = BTreeMap::new();
        for sender in before
            .iter()
            .chain(after.iter())
            .chain(std::iter::once(event))
            .map(|e| e.sender.clone())
        {
            if profiles_out.contains_key(&sender) {
                continue;
            }
            let p = profiles::get(&app.db, &sender).await?.unwrap_or_default();
            let mut profile = UserProfile::new();
            profile.displayname = p.displayname;
            profile.avatar_url = p.avatar_url.map(Into::into);
            profiles_out.insert(sender, profile);
        }
        out.profile_info = Some(profiles_out);
    }
    Ok(out)
}

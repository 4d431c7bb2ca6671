//! The client form of room events (spec: "Room event format"). Every endpoint
//! that serves a room's events to a user formats them here, through
//! [`Viewer::client_events`], so each gets the same `unsigned`:
//!
//! - `age`, and `redacted_because` on redacted events;
//! - `transaction_id` on the reader's own events sent from the reader's device
//!   (the access token's device: not another device of the same user);
//! - `membership` (spec v1.11, MSC4115): the reader's membership in the state
//!   after the event, `leave` when they had none;
//! - on state events, `replaces_state` (the event the same key held before), and
//!   that event's `prev_content` and `prev_sender` when the reader may see it;
//! - on other events, bundled aggregations (`m.relations`): `m.thread` (a
//!   summary), `m.replace` (the newest valid edit, not on redacted events; the
//!   original's content is left as it is, per spec v1.7) and `m.reference` (the
//!   IDs of the referencing events). Only children the reader may see count, and
//!   redacted children break their relationship.
//!
//! Events whose sender asked for erasure (deactivation with `erase`) are served
//! redacted, without `redacted_because`, to a reader who was not joined in the
//! state after the event; members who were joined then still see them whole
//! (spec: "Account deactivation"; Synapse's rule).
//!
//! Events nested in another (the thread's latest reply, the edit, the redaction)
//! get the same fields but no aggregations of their own.

use std::collections::{HashMap, HashSet};

use ruma::{MilliSecondsSinceUnixEpoch, serde::Raw};
use serde_json::{Value, json, value::to_raw_value};

use super::read::Viewer;
use crate::{
    domain::filter::Filter,
    domain::pdu::{stored_content, stored_pdu, to_client_event},
    error::Result,
    storage::{
        events,
        events::{AnnotationQuery, Annotations, StoredEvent},
        relations,
    },
};

/// Edits looked at per original: the newest that the reader may see and that
/// carries `m.new_content` is bundled.
const EDITS_PER_EVENT: i64 = 5;
/// Referencing events listed per event.
const REFERENCES_PER_EVENT: i64 = 100;

/// A client event as ruma's `Raw<T>` for a typed response: exactly the JSON
/// built here (the event's own fields and `unsigned` as they are), not
/// re-serialised through ruma's event types, which would drop or reshape
/// what they do not model.
pub fn raw<T>(event: &Value) -> Raw<T> {
    Raw::from_json(to_raw_value(event).expect("a JSON value always serialises"))
}

/// `stored` (events of the viewer's room) in client form, for the viewer.
///
/// A page costs one query for what its events need besides themselves
/// ([`events::annotations`]: transaction IDs, erased senders, replaced state,
/// which events have relations), plus one for each kind of thing that is there
/// (redactions, replaced state events, thread summaries, edits, references)
/// and the viewer's visibility lookups of state groups it has not seen.
pub async fn format(viewer: &mut Viewer<'_>, stored: &[StoredEvent]) -> Result<Vec<Value>> {
    let (mut out, notes) = plain(viewer, stored, true).await?;
    bundle(viewer, stored, &notes.related, &mut out).await?;
    Ok(out)
}
/// [`format`], then shaped by a `/sync` filter: `event_format: federation`
/// gives each event as its PDU (with `event_id` and the same `unsigned`), and
/// `event_fields` keep only the paths asked for.
pub async fn format_filtered(
    viewer: &mut Viewer<'_>,
    stored: &[StoredEvent],
    filter: &Filter,
) -> Result<Vec<Value>> {
    let mut out = format(viewer, stored).await?;
    if filter.federation_format {
        for (value, ev) in out.iter_mut().zip(stored) {
            let pdu = stored_pdu(&ev.json, &viewer.rules, ev.redacted_by.is_some());
            if let Value::Object(map) = value {
                for (key, v) in pdu {
                    if key != "unsigned" {
                        map.entry(key).or_insert(v);
                    }
                }
            }
        }
    }
    Ok(out.into_iter().map(|v| filter.shape(v)).collect())
}

/// [`format_filtered`] of two lists at once (a room's timeline and its state in
/// `/sync`), for the cost of one page.
pub async fn format_filtered_pair(
    viewer: &mut Viewer<'_>,
    first: &[StoredEvent],
    second: &[StoredEvent],
    filter: &Filter,
) -> Result<(Vec<Value>, Vec<Value>)> {
    let both: Vec<StoredEvent> = first.iter().chain(second).cloned().collect();
    let mut out = format_filtered(viewer, &both, filter).await?;
    let second_out = out.split_off(first.len());
    Ok((out, second_out))
}

/// The client form with every `unsigned` field but the aggregations, and the
/// page's annotations (with the relations of its non-state events when
/// `relations` is set).
async fn plain(
    viewer: &mut Viewer<'_>,
    stored: &[StoredEvent],
    relations: bool,
) -> Result<(Vec<Value>, Annotations)> {
    if stored.is_empty() {
        return Ok((Vec::new(), Annotations::default()));
    }
    let db = &viewer.app().db;

    let redaction_ids: Vec<String> = stored
        .iter()
        .filter_map(|e| e.redacted_by.clone())
        .collect();
    let redactions = by_id(if redaction_ids.is_empty() {
        Vec::new()
    } else {
        events::get_many(db, &redaction_ids).await?
    });

    // The reader's own events (and redactions), for their transaction IDs.
    let own: Vec<String> = match viewer.device() {
        Some(_) => stored
            .iter()
            .chain(redactions.values())
            .filter(|e| e.sender == viewer.user().as_str())
            .map(|e| e.event_id.clone())
            .collect(),
        None => Vec::new(),
    };
    // Senders who asked for erasure: their events are pruned for a reader who
    // was not joined when they were sent (as Synapse's visibility filter does).
    let mut senders: Vec<String> = stored
        .iter()
        .chain(redactions.values())
        .map(|e| e.sender.clone())
        .collect();
    senders.sort_unstable();
    senders.dedup();
    // The events state events replaced.
    let state_ids: Vec<String> = stored
        .iter()
        .filter(|e| e.state_key.is_some())
        .map(|e| e.event_id.clone())
        .collect();
    let targets: Vec<String> = if relations {
        stored
            .iter()
            .filter(|e| e.state_key.is_none())
            .map(|e| e.event_id.clone())
            .collect()
    } else {
        Vec::new()
    };
    let notes = events::annotations(
        db,
        AnnotationQuery {
            user_id: viewer.user().as_str(),
            device_id: viewer.device().map(|d| d.as_str()),
            own: &own,
            senders: &senders,
            state: &state_ids,
            targets: &targets,
            room_id: viewer.room_id().as_str(),
        },
    )
    .await?;
    let Annotations {
        txns,
        erased,
        replaced,
        ..
    } = &notes;
    let mut prev_ids: Vec<String> = replaced.values().cloned().collect();
    prev_ids.sort_unstable();
    prev_ids.dedup();
    let prevs = by_id(if prev_ids.is_empty() {
        Vec::new()
    } else {
        events::get_many(db, &prev_ids).await?
    });

    // History visibility and the reader's membership at every state group
    // involved, in one lookup.
    let groups: Vec<i64> = stored
        .iter()
        .chain(redactions.values())
        .chain(prevs.values())
        .filter_map(|e| e.state_group)
        .collect();
    viewer.prefetch(&groups).await?;
    let mut visible_prevs = HashSet::new();
    for prev in prevs.values() {
        if viewer.may_see(prev).await? {
            visible_prevs.insert(prev.event_id.clone());
        }
    }

    let rules = &viewer.rules;
    let now = MilliSecondsSinceUnixEpoch::now();
    let pruned = |ev: &StoredEvent| {
        erased.contains(&ev.sender)
            && ev.state_group.and_then(|g| viewer.membership_at(g)) != Some(Some("join"))
    };
    let annotate = |ev: &StoredEvent, because: Option<&Value>| {
        let mut value = to_client_event(
            &ev.event_id,
            &ev.room_id,
            &ev.json,
            rules,
            pruned(ev),
            because,
            now,
        );
        let unsigned = &mut value["unsigned"];
        if let Some(txn) = txns.get(&ev.event_id) {
            unsigned["transaction_id"] = json!(txn);
        }
        if let Some(membership) = ev.state_group.and_then(|g| viewer.membership_at(g)) {
            unsigned["membership"] = json!(membership.unwrap_or("leave"));
        }
        if let Some(prev_id) = replaced.get(&ev.event_id) {
            unsigned["replaces_state"] = json!(prev_id);
            if let Some(prev) = prevs.get(prev_id)
                && visible_prevs.contains(prev_id)
            {
                unsigned["prev_content"] = stored_content(
                    &prev.json,
                    rules,
                    prev.redacted_by.is_some() || pruned(prev),
                );
                unsigned["prev_sender"] = json!(prev.sender);
            }
        }
        value
    };
    let out = stored
        .iter()
        .map(|ev| {
            let because = ev
                .redacted_by
                .as_ref()
                .and_then(|id| redactions.get(id))
                .map(|r| annotate(r, None));
            annotate(ev, because.as_ref())
        })
        .collect();
    Ok((out, notes))
}

/// Adds `unsigned.m.relations` to the non-state events among `out` (the client
/// form of `stored`, in the same order); `related` gives the relation types
/// naming each event, so only the kinds that are there are looked up.
async fn bundle(
    viewer: &mut Viewer<'_>,
    stored: &[StoredEvent],
    related: &HashMap<String, Vec<String>>,
    out: &mut [Value],
) -> Result<()> {
    let with = |rel: &str| -> Vec<&StoredEvent> {
        stored
            .iter()
            .filter(|e| e.state_key.is_none())
            .filter(|e| {
                related
                    .get(&e.event_id)
                    .is_some_and(|t| t.iter().any(|t| t == rel))
            })
            .collect()
    };
    let (roots, edited, referenced_ids) =
        (with("m.thread"), with("m.replace"), with("m.reference"));
    if roots.is_empty() && edited.is_empty() && referenced_ids.is_empty() {
        return Ok(());
    }
    let db = &viewer.app().db;
    let room_id = viewer.room_id().as_str().to_owned();
    let ids = |events: &[&StoredEvent]| -> Vec<String> {
        events.iter().map(|e| e.event_id.clone()).collect()
    };

    let threads = if roots.is_empty() {
        Vec::new()
    } else {
        relations::thread_summaries(db, &room_id, &ids(&roots), viewer.user().as_str()).await?
    };
    let latest_ids: Vec<String> = threads.iter().map(|s| s.latest.clone()).collect();
    let latest = if latest_ids.is_empty() {
        Vec::new()
    } else {
        events::get_many(db, &latest_ids).await?
    };

    // A redacted event gets no edit, nor does an edit (edits of edits are void).
    let editable: Vec<String> = edited
        .iter()
        .filter(|e| e.redacted_by.is_none() && rel_type(&e.json).as_deref() != Some("m.replace"))
        .map(|e| e.event_id.clone())
        .collect();
    let edits = if editable.is_empty() {
        Vec::new()
    } else {
        relations::edits(db, &room_id, &editable, EDITS_PER_EVENT).await?
    };
    let references = if referenced_ids.is_empty() {
        Vec::new()
    } else {
        relations::references(db, &room_id, &ids(&referenced_ids), REFERENCES_PER_EVENT).await?
    };

    let groups: Vec<i64> = latest
        .iter()
        .chain(edits.iter().map(|c| &c.event))
        .chain(references.iter().map(|c| &c.event))
        .filter_map(|e| e.state_group)
        .collect();
    viewer.prefetch(&groups).await?;

    let mut nested: Vec<StoredEvent> = Vec::new();
    for ev in latest {
        if viewer.may_see(&ev).await? {
            nested.push(ev);
        }
    }
    // The newest edit per original that is valid and visible (newest first).
    let mut chosen_edit: HashMap<String, String> = HashMap::new();
    for child in edits {
        if chosen_edit.contains_key(&child.relates_to) || !has_new_content(&child.event) {
            continue;
        }
        if viewer.may_see(&child.event).await? {
            chosen_edit.insert(child.relates_to.clone(), child.event.event_id.clone());
            nested.push(child.event);
        }
    }
    let mut referenced: HashMap<String, Vec<Value>> = HashMap::new();
    for child in references {
        if viewer.may_see(&child.event).await? {
            referenced
                .entry(child.relates_to)
                .or_default()
                .push(json!({ "event_id": child.event.event_id }));
        }
    }
    let nested: HashMap<String, Value> = plain(viewer, &nested, false)
        .await?
        .0
        .into_iter()
        .filter_map(|v| Some((v["event_id"].as_str()?.to_owned(), v)))
        .collect();

    for summary in threads {
        let (Some(latest_event), Some(event)) =
            (nested.get(&summary.latest), find(out, &summary.root))
        else {
            continue;
        };
        event["unsigned"]["m.relations"]["m.thread"] = json!({
            "latest_event": latest_event,
            "count": summary.count,
            "current_user_participated": summary.participated,
        });
    }
    for (original, edit_id) in chosen_edit {
        if let (Some(edit), Some(event)) = (nested.get(&edit_id), find(out, &original)) {
            event["unsigned"]["m.relations"]["m.replace"] = edit.clone();
        }
    }
    for (target, chunk) in referenced {
        if let Some(event) = find(out, &target) {
            event["unsigned"]["m.relations"]["m.reference"] = json!({ "chunk": chunk });
        }
    }
    Ok(())
}

fn by_id(stored: Vec<StoredEvent>) -> HashMap<String, StoredEvent> {
    stored
        .into_iter()
        .map(|e| (e.event_id.clone(), e))
        .collect()
}

fn find<'v>(out: &'v mut [Value], event_id: &str) -> Option<&'v mut Value> {
    out.iter_mut().find(|e| e["event_id"] == event_id)
}

fn content(json: &str) -> Value {
    serde_json::from_str::<Value>(json)
        .map(|mut v| v["content"].take())
        .unwrap_or_default()
}

fn rel_type(json: &str) -> Option<String> {
    content(json)["m.relates_to"]["rel_type"]
        .as_str()
        .map(str::to_owned)
}

/// A replacement must carry `m.new_content`; in an encrypted edit it sits in the
/// ciphertext, where the server cannot check it.
fn has_new_content(edit: &StoredEvent) -> bool {
    edit.event_type == "m.room.encrypted" || content(&edit.json)["m.new_content"].is_object()
}

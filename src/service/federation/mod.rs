//! The federation use cases: queueing our events for the servers in a room, the
//! sender worker that delivers them, and (in submodules) what other servers send
//! us.

pub mod acl;
pub mod auth;
pub mod backfill;
pub mod e2ee;
pub mod edu;
pub mod faster_join;
pub mod gap;
pub mod handshake;
pub mod ingest;
pub mod invite;
pub mod join;
pub mod leave_knock;
pub mod partial_state;
pub mod reads;
pub mod resident;
pub mod sender;
pub mod state_before;
pub mod visibility;

use std::collections::BTreeSet;

use ruma::{EventId, UserId, events::TimelineEventType};

use super::event::RoomCtx;
use crate::{
    domain::pdu::Pdu,
    error::Result,
    service::AppState,
    storage::{Postgres, Transaction, federation, rooms},
};

/// Queues one of our events for every other server with members in the room
/// (after the event), plus the server of a member event's target (a kicked or
/// banned user's server must hear of it) — but not an invitee's server, which
/// had the invite through `/invite` (a server outside the room would get an
/// event of a room it does not know). In the persisting transaction, so the
/// event and its delivery are committed together. `joined`: the room's joined
/// users after the event, when the caller has them loaded.
pub async fn enqueue_pdu(
    tx: &mut Transaction<'_, Postgres>,
    app: &AppState,
    room: &mut RoomCtx,
    pdu: &Pdu,
    event_id: &EventId,
    joined: Option<&[String]>,
) -> Result<()> {
    if !app.config.federation.enabled {
        return Ok(());
    }
    let mut destinations: BTreeSet<String> = match joined {
        Some(users) => users
            .iter()
            .filter_map(|u| u.split_once(':').map(|(_, server)| server.to_owned()))
            .collect(),
        None => rooms::joined_servers(&mut **tx, room.room_id().as_str())
            .await?
            .into_iter()
            .collect(),
    };
    if pdu.kind == TimelineEventType::RoomMember
        && let Some(target) = pdu.state_key.as_deref().and_then(|k| UserId::parse(k).ok())
        && !is_invite(pdu)
    {
        destinations.insert(target.server_name().to_string());
    }
    // A room joined with partial state: its members are not all known yet,
    // so the servers the resident named (`servers_in_room`) hear of it too.
    destinations
        .extend(crate::storage::partial_state::servers(&mut **tx, room.room_id().as_str()).await?);
    destinations.remove(app.server_name.as_str());
    if destinations.is_empty() {
        return Ok(());
    }
    let destinations: Vec<String> = destinations.into_iter().collect();
    let now = app.clock.now_ms();
    federation::enqueue_pdu(
        &mut **tx,
        &destinations,
        event_id.as_str(),
        room.room_id().as_str(),
        now,
        down_before(app, now),
    )
    .await?;
    room.federation_wake = Some(app.federation_wake.clone());
    Ok(())
}

fn is_invite(pdu: &Pdu) -> bool {
    serde_json::from_str::<serde_json::Value>(pdu.content.get())
        .is_ok_and(|c| c["membership"] == "invite")
}

/// Failing since this time or earlier marks a destination down (see
/// `sender`): its queue is collapsed and its backoff grows longer.
pub fn down_before(app: &AppState, now: i64) -> i64 {
    let after = app.config.federation.destination_down_after_secs;
    now.saturating_sub(i64::try_from(after.saturating_mul(1000)).unwrap_or(i64::MAX))
}

/// Queues an EDU for the given servers (ours is skipped) and wakes the sender.
/// With a `collapse_key`, it replaces an EDU of the same key still queued for
/// a server (typing and receipts: only the latest counts).
pub async fn enqueue_edu(
    app: &AppState,
    destinations: impl IntoIterator<Item = String>,
    edu: &serde_json::Value,
    collapse_key: Option<&str>,
) -> Result<()> {
    if !app.config.federation.enabled {
        return Ok(());
    }
    let destinations: Vec<String> = destinations
        .into_iter()
        .filter(|d| d != app.server_name.as_str())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    if destinations.is_empty() {
        return Ok(());
    }
    let text = serde_json::to_string(edu).map_err(|e| anyhow::anyhow!("{e}"))?;
    federation::enqueue_edu(
        &app.db,
        &destinations,
        &text,
        app.clock.now_ms(),
        collapse_key,
    )
    .await?;
    app.federation_wake.notify_one();
    Ok(())
}

/// The PDUs of a typed federation answer as the JSON the receipt checks read
/// (each of ruma's raw values is JSON already; one that is not is dropped).
pub(crate) fn pdu_values(raws: &[Box<serde_json::value::RawValue>]) -> Vec<serde_json::Value> {
    raws.iter()
        .filter_map(|raw| serde_json::from_str(raw.get()).ok())
        .collect()
}

//! Pushers and notifications (spec: "Push Notifications"): `/pushers`,
//! `/pushers/set`, `/notifications`, and the worker that hands notifications to
//! push gateways (push gateway API `POST /_matrix/push/v1/notify`). Email
//! pushers are set here and mailed by [`super::notif_mail`].
//!
//! The worker wakes on the notifier, sends each HTTP pusher its notifications in
//! stream order, one request per notification, and advances the pusher's
//! position once the gateway has answered 2xx. A gateway that fails (network
//! error, 5xx, 429) is retried with exponential backoff per pusher, doubling from
//! [`FIRST_RETRY`] to [`MAX_RETRY`]; a notification that keeps failing for
//! [`GIVE_UP_AFTER`] is skipped, as Synapse does, so a dead gateway costs one
//! request per backoff period and never delays other pushers. Pushkeys the
//! gateway reports as `rejected` are deleted.
//!
//! Gateways are reached through an [`OutboundClient`] with the federation
//! address policy: a URL naming a refused address is refused when set, a name
//! resolving only to refused addresses is never connected to, and a redirect
//! is a failure, never followed (it would carry the notification elsewhere).

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use ruma::{
    OwnedRoomId, RoomId,
    api::client::push::{Pusher as RumaPusher, PusherIds, PusherInit, PusherKind},
};
use serde::Serialize;
use serde_json::{Map, Value, json};
use tokio_util::sync::CancellationToken;

use super::{read::Viewer, session::Session};
use crate::{
    error::{Error, Result},
    outbound::{self, OutboundClient, OutboundPolicy},
    service::AppState,
    storage::{events, federation, pushers as rows, pushers::Pusher, rooms, state, user_streams},
};

const FIRST_RETRY: Duration = Duration::from_secs(1);
const MAX_RETRY: Duration = Duration::from_secs(10 * 60);
const GIVE_UP_AFTER: Duration = Duration::from_secs(24 * 60 * 60);
const NOTIFY_PATH: &str = "/_matrix/push/v1/notify";
/// The largest gateway answer read (it only lists rejected pushkeys).
const MAX_GATEWAY_ANSWER: usize = 64 * 1024;

fn required_str<'a>(body: &'a Value, key: &str) -> Result<&'a str> {
    body[key]
        .as_str()
        .ok_or_else(|| Error::bad_json(format!("'{key}' must be a string")))
}

/// `POST /pushers/set`: create, replace (same app id and pushkey) or, with
/// `kind: null`, delete a pusher.
pub async fn set(app: &AppState, session: &Session, body: &Value) -> Result<()> {
    let user = session.user_id.as_str();
    let app_id = required_str(body, "app_id")?;
    let pushkey = required_str(body, "pushkey")?;
    if app_id.chars().count() > 64 {
        return Err(Error::invalid_param("app_id is longer than 64 characters"));
    }
    if pushkey.len() > 512 {
        return Err(Error::invalid_param("pushkey is longer than 512 bytes"));
    }
    let kind = match &body["kind"] {
        Value::Null => {
            rows::delete(&app.db, user, app_id, pushkey).await?;
            return Ok(());
        }
        Value::String(kind) => kind.as_str(),
        _ => return Err(Error::bad_json("'kind' must be a string or null")),
    };
    if !matches!(kind, "http" | "email") {
        return Err(Error::invalid_param(format!(
            "Pushers of kind '{kind}' are not supported"
        )));
    }
    let data = body["data"]
        .as_object()
        .ok_or_else(|| Error::bad_json("'data' must be an object"))?;
    let unsubscribe_token = match kind {
        "http" => {
            check_http_data(app, user, data)?;
            None
        }
        // The pushkey is the address, which must be one of the user's.
        _ => Some(super::notif_mail::check_new_pusher(app, user, pushkey).await?),
    };
    let optional = |key: &str| -> Result<Option<String>> {
        match &body[key] {
            Value::Null => Ok(None),
            Value::String(s) => Ok(Some(s.clone())),
            _ => Err(Error::bad_json(format!("'{key}' must be a string"))),
        }
    };
    let pusher = Pusher {
        user_id: user.to_owned(),
        app_id: app_id.to_owned(),
        pushkey: pushkey.to_owned(),
        kind: kind.to_owned(),
        app_display_name: required_str(body, "app_display_name")?.to_owned(),
        device_display_name: required_str(body, "device_display_name")?.to_owned(),
        profile_tag: optional("profile_tag")?,
        lang: required_str(body, "lang")?.to_owned(),
        data: Value::Object(data.clone()).to_string(),
        created_ts: app.clock.now_ms(),
        // Only what happens from now on is pushed.
        last_stream_ordering: app.notifier.current(),
        // An email pusher belongs to the account's address, not to the
        // device that set it (Element offers it in the account's settings):
        // logging that device out does not stop the mails.
        device_id: (kind == "http").then(|| session.device_id.to_string()),
        badge_wanted: 0,
        badge_sent: 0,
    };
    let append = match &body["append"] {
        Value::Null => false,
        Value::Bool(b) => *b,
        _ => return Err(Error::bad_json("'append' must be a boolean")),
    };
    let mut tx = app.db.begin().await?;
    if !append {
        rows::delete_for_others(&mut *tx, user, app_id, pushkey).await?;
    }
    rows::upsert(&mut *tx, &pusher).await?;
    if let Some(token) = unsubscribe_token {
        rows::init_email_state(&mut *tx, user, app_id, pushkey, &token).await?;
    }
    tx.commit().await?;
    Ok(())
}

/// An HTTP pusher's `data`: a push gateway `url` the outbound policy allows.
fn check_http_data(app: &AppState, user: &str, data: &Map<String, Value>) -> Result<()> {
    let url = data
        .get("url")
        .and_then(Value::as_str)
        .ok_or_else(|| Error::invalid_param("'url' is required in 'data' for HTTP pushers"))?;
    let parsed =
        reqwest::Url::parse(url).map_err(|_| Error::invalid_param("'url' is not a valid URL"))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.path() != NOTIFY_PATH {
        return Err(Error::invalid_param(format!(
            "'url' must be an http(s) URL with the path '{NOTIFY_PATH}'"
        )));
    }
    // An address the outbound policy refuses is refused now when the URL names
    // it; a name is checked at each delivery, as it resolves then.
    if let Err(e) = OutboundPolicy::federation(&app.config).check_url(&parsed) {
        tracing::info!(%user, error = %e, "pusher URL refused");
        return Err(Error::invalid_param(
            "'url' points to an address push gateways may not have",
        ));
    }
    Ok(())
}

/// `GET /pushers`. A stored pusher whose `data` does not fit its kind (an
/// HTTP pusher without a `url`; `set` refuses those) is left out.
pub async fn list(app: &AppState, session: &Session) -> Result<Vec<RumaPusher>> {
    Ok(rows::for_user(&app.db, session.user_id.as_str())
        .await?
        .into_iter()
        .filter_map(|p| {
            let data = serde_json::from_str::<Value>(&p.data).unwrap_or_default();
            let kind: PusherKind =
                match serde_json::from_value(json!({ "kind": p.kind, "data": data })) {
                    Ok(kind) => kind,
                    Err(e) => {
                        tracing::warn!(app_id = %p.app_id, error = %e, "stored pusher unreadable");
                        return None;
                    }
                };
            Some(RumaPusher::from(PusherInit {
                ids: PusherIds::new(p.pushkey, p.app_id),
                kind,
                app_display_name: p.app_display_name,
                device_display_name: p.device_display_name,
                profile_tag: p.profile_tag,
                lang: p.lang,
            }))
        })
        .collect())
}

/// A page of `GET /notifications`. Own type, not ruma's response: ruma
/// leaves out a null `profile_tag`, which Synapse sends and SyTest requires,
/// and would rewrite the stored actions through its typed `Action`.
#[derive(Debug, Serialize)]
pub struct Notifications {
    pub notifications: Vec<Notification>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_token: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct Notification {
    /// The actions of the rule that matched, as stored.
    pub actions: Value,
    /// The event in its client form.
    pub event: Value,
    /// No rule carries a profile tag: always present and `null`, as Synapse
    /// answers (SyTest checks the key).
    pub profile_tag: Option<String>,
    pub read: bool,
    pub room_id: OwnedRoomId,
    /// The event's `origin_server_ts`.
    pub ts: Option<i64>,
}

/// `GET /notifications`: newest first, paginated by stream position.
pub async fn notifications(
    app: &AppState,
    session: &Session,
    from: Option<&str>,
    limit: Option<u64>,
    only: Option<&str>,
) -> Result<Notifications> {
    let user = session.user_id.as_str();
    let before = match from {
        None => i64::MAX,
        Some(t) => super::tokens::stream_counter(app, "from", t).await?,
    };
    let limit = limit.unwrap_or(20).clamp(1, 100) as i64;
    let only_highlight = only.is_some_and(|o| o.contains("highlight"));
    let rows = user_streams::notifications(&app.db, user, before, only_highlight, limit).await?;
    let next_token = (rows.len() as i64 == limit)
        .then(|| rows.last().map(|r| r.stream_ordering.to_string()))
        .flatten();
    let ids: Vec<String> = rows.iter().map(|r| r.event_id.clone()).collect();
    let stored: HashMap<String, events::StoredEvent> = events::get_many(&app.db, &ids)
        .await?
        .into_iter()
        .map(|e| (e.event_id.clone(), e))
        .collect();
    let mut read_at: HashMap<String, i64> = HashMap::new();
    let mut out = Vec::new();
    for row in rows {
        let Some(event) = stored.get(&row.event_id) else {
            continue;
        };
        let room_id =
            RoomId::parse(&row.room_id).map_err(|e| anyhow::anyhow!("stored room id: {e}"))?;
        let client = match Viewer::for_session(app, session, &room_id).await {
            Ok(mut viewer) => viewer
                .client_events(std::slice::from_ref(event))
                .await?
                .pop()
                .unwrap_or_default(),
            // A room this server is not in: the only notification it can
            // have is the user's own invite, held as an outlier.
            Err(_)
                if event.event_type == "m.room.member"
                    && event.state_key.as_deref() == Some(user) =>
            {
                invite_client_event(app, event).await?
            }
            Err(_) => continue,
        };
        if !read_at.contains_key(&row.room_id) {
            let read = user_streams::read_position(&app.db, &row.room_id, user)
                .await?
                .unwrap_or(0);
            read_at.insert(row.room_id.clone(), read);
        }
        out.push(Notification {
            actions: serde_json::from_str::<Value>(&row.actions).unwrap_or_default(),
            ts: client["origin_server_ts"].as_i64(),
            event: client,
            profile_tag: None,
            read: row.stream_ordering <= read_at[&row.room_id],
            room_id,
        });
    }
    Ok(Notifications {
        notifications: out,
        next_token,
    })
}

/// The client form of an invite held as an outlier (a room this server is
/// not in), in the room's own version's format.
async fn invite_client_event(app: &AppState, event: &events::StoredEvent) -> Result<Value> {
    let version = federation::remote_membership(
        &app.db,
        &event.room_id,
        event.state_key.as_deref().unwrap_or_default(),
    )
    .await?
    .and_then(|m| ruma::RoomVersionId::try_from(m.room_version.as_str()).ok())
    .and_then(|v| v.rules())
    .unwrap_or(ruma::room_version_rules::RoomVersionRules::V10);
    Ok(crate::domain::pdu::to_client_event(
        &event.event_id,
        &event.room_id,
        &event.json,
        &version,
        false,
        None,
        ruma::MilliSecondsSinceUnixEpoch::now(),
    ))
}

/// Backoff state of one failing pusher.
struct Failing {
    since: Instant,
    delay: Duration,
    retry_at: Instant,
}

type PusherKey = (String, String, String);

fn key(p: &Pusher) -> PusherKey {
    (p.user_id.clone(), p.app_id.clone(), p.pushkey.clone())
}

/// The client gateways are called with: the outbound policy of federation (as
/// Synapse's `ip_range_blocklist` covers push gateways), and no redirect is
/// followed (a gateway's redirect would re-send the notification elsewhere).
fn client(app: &AppState) -> anyhow::Result<OutboundClient> {
    OutboundClient::new(
        OutboundPolicy::federation(&app.config),
        &outbound::Options {
            connect_timeout: Duration::from_secs(10),
            timeout: Duration::from_secs(15),
            https_only: false,
            extra_ca_files: app.config.extra_ca_files(),
            accept_invalid_certs: false,
            user_agent: concat!("Lattice/", env!("CARGO_PKG_VERSION")).into(),
        },
    )
}

/// How many pushers are delivered to at once.
const MAX_CONCURRENT_DELIVERIES: usize = 32;

/// The push worker; runs until `shutdown`. Each pusher is delivered to by a
/// task of its own (one at a time per pusher, so its notifications stay in
/// order), so one slow or dead gateway delays only its own pushers.
pub async fn run(app: AppState, shutdown: CancellationToken) {
    let client = match client(&app) {
        Ok(c) => std::sync::Arc::new(c),
        Err(e) => {
            tracing::error!("push worker: cannot build an HTTP client: {e}");
            return;
        }
    };
    let mut wake = app.notifier.subscribe();
    let mut failing: HashMap<PusherKey, Failing> = HashMap::new();
    let mut tasks: tokio::task::JoinSet<(Pusher, anyhow::Result<()>)> = tokio::task::JoinSet::new();
    let mut busy: std::collections::HashSet<PusherKey> = std::collections::HashSet::new();
    loop {
        wake.borrow_and_update();
        if let Err(e) = dispatch(&app, &client, &mut failing, &mut busy, &mut tasks).await {
            tracing::warn!("push worker: {e}");
        }
        let now = Instant::now();
        let wait = failing
            .values()
            .map(|f| f.retry_at.saturating_duration_since(now))
            .min()
            .unwrap_or(Duration::from_secs(3600))
            .max(Duration::from_millis(50));
        tokio::select! {
            _ = shutdown.cancelled() => return,
            Some(done) = tasks.join_next() => {
                if let Ok((pusher, result)) = done {
                    busy.remove(&key(&pusher));
                    if let Err(e) = settle(&app, &mut failing, &pusher, result).await {
                        tracing::warn!("push worker: {e}");
                    }
                }
            }
            _ = app.notifier.wait(&mut wake, wait) => {}
        }
    }
}

/// Starts a delivery for every due pusher with something pending that has
/// none running.
async fn dispatch(
    app: &AppState,
    client: &std::sync::Arc<OutboundClient>,
    failing: &mut HashMap<PusherKey, Failing>,
    busy: &mut std::collections::HashSet<PusherKey>,
    tasks: &mut tokio::task::JoinSet<(Pusher, anyhow::Result<()>)>,
) -> Result<()> {
    let pending = rows::pending(&app.db).await?;
    let live: std::collections::HashSet<PusherKey> = pending.iter().map(key).collect();
    failing.retain(|k, _| live.contains(k) || busy.contains(k));
    for pusher in pending {
        let k = key(&pusher);
        if busy.contains(&k)
            || tasks.len() >= MAX_CONCURRENT_DELIVERIES
            || failing.get(&k).is_some_and(|f| f.retry_at > Instant::now())
        {
            continue;
        }
        busy.insert(k);
        let (app, client) = (app.clone(), client.clone());
        tasks.spawn(async move {
            let result = deliver_one(&app, &client, &pusher).await;
            (pusher, result)
        });
    }
    Ok(())
}

/// Records how a delivery went: success clears the pusher's backoff; failure
/// doubles it, and a notification failing for a day is skipped.
async fn settle(
    app: &AppState,
    failing: &mut HashMap<PusherKey, Failing>,
    pusher: &Pusher,
    result: anyhow::Result<()>,
) -> Result<()> {
    let k = key(pusher);
    let Err(e) = result else {
        failing.remove(&k);
        return Ok(());
    };
    let now = Instant::now();
    let f = failing.entry(k).or_insert(Failing {
        since: now,
        delay: FIRST_RETRY / 2,
        retry_at: now,
    });
    f.delay = (f.delay * 2).min(MAX_RETRY);
    f.retry_at = now + f.delay;
    tracing::info!(
        user = %pusher.user_id, app_id = %pusher.app_id,
        "push gateway failed ({e}); retrying in {:?}", f.delay
    );
    if now.duration_since(f.since) >= GIVE_UP_AFTER {
        // Skip the notification that keeps failing.
        if let Some(n) = user_streams::notifications_after(
            &app.db,
            &pusher.user_id,
            pusher.last_stream_ordering,
            1,
        )
        .await?
        .first()
        {
            rows::advance(&app.db, pusher, n.stream_ordering).await?;
        }
        f.since = now;
    }
    Ok(())
}

/// Sends one pusher's pending notifications in order; stops at the first failure.
async fn deliver_one(
    app: &AppState,
    client: &OutboundClient,
    pusher: &Pusher,
) -> anyhow::Result<()> {
    let data: Map<String, Value> = serde_json::from_str(&pusher.data)?;
    let url = data
        .get("url")
        .and_then(Value::as_str)
        .ok_or_else(|| anyhow::anyhow!("pusher has no url"))?;
    let url = reqwest::Url::parse(url)?;
    let event_id_only = data.get("format").and_then(Value::as_str) == Some("event_id_only");
    let mut device_data = data.clone();
    device_data.remove("url");
    let pending = user_streams::notifications_after(
        &app.db,
        &pusher.user_id,
        pusher.last_stream_ordering,
        50,
    )
    .await?;
    for n in pending {
        let unread = user_streams::unread_total(&app.db, &pusher.user_id).await?;
        let actions: Vec<Value> = serde_json::from_str(&n.actions).unwrap_or_default();
        let mut tweaks = Map::new();
        for action in &actions {
            if let Some(tweak) = action["set_tweak"].as_str() {
                let value = match tweak {
                    "highlight" => action.get("value").cloned().unwrap_or(Value::Bool(true)),
                    _ => action.get("value").cloned().unwrap_or(Value::Null),
                };
                tweaks.insert(tweak.to_owned(), value);
            }
        }
        let mut notification = json!({
            "event_id": n.event_id,
            "room_id": n.room_id,
            "counts": { "unread": unread },
            "devices": [{
                "app_id": pusher.app_id,
                "pushkey": pusher.pushkey,
                "pushkey_ts": pusher.created_ts / 1000,
                "data": device_data,
                "tweaks": tweaks,
            }],
        });
        if !event_id_only {
            describe(
                app,
                &pusher.user_id,
                &n.room_id,
                &n.event_id,
                &mut notification,
            )
            .await?;
        }
        let response = post_notification(client, &url, &notification).await?;
        let status = response.status();
        if status.is_server_error() || status == reqwest::StatusCode::TOO_MANY_REQUESTS {
            anyhow::bail!("gateway answered {status}");
        }
        if status.is_redirection() {
            anyhow::bail!("gateway answered {status}; redirects are not followed");
        }
        let body: Value = outbound::read_limited(response, MAX_GATEWAY_ANSWER)
            .await
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        let rejected = status.is_client_error()
            || body["rejected"].as_array().is_some_and(|r| {
                r.iter()
                    .any(|k| k.as_str() == Some(pusher.pushkey.as_str()))
            });
        if rejected {
            tracing::info!(user = %pusher.user_id, app_id = %pusher.app_id, "gateway rejected pushkey; removing pusher");
            rows::delete(&app.db, &pusher.user_id, &pusher.app_id, &pusher.pushkey).await?;
            return Ok(());
        }
        rows::advance(&app.db, pusher, n.stream_ordering).await?;
    }
    if pusher.badge_wanted > pusher.badge_sent {
        send_badge(app, client, pusher, &url, &device_data).await?;
    }
    Ok(())
}

/// `POST {"notification": …}` to a push gateway.
async fn post_notification(
    client: &OutboundClient,
    url: &reqwest::Url,
    notification: &Value,
) -> anyhow::Result<reqwest::Response> {
    let mut request = reqwest::Request::new(http::Method::POST, url.clone());
    request.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    *request.body_mut() =
        Some(serde_json::to_vec(&json!({ "notification": notification }))?.into());
    Ok(client.send(request).await?)
}

/// A badge-only notification (no event: only the user's unread count), sent
/// after a read receipt so the device's badge follows, as Synapse does.
async fn send_badge(
    app: &AppState,
    client: &OutboundClient,
    pusher: &Pusher,
    url: &reqwest::Url,
    device_data: &Map<String, Value>,
) -> anyhow::Result<()> {
    let unread = user_streams::unread_total(&app.db, &pusher.user_id).await?;
    let notification = json!({
        "id": "",
        "type": null,
        "sender": "",
        "counts": { "unread": unread },
        "devices": [{
            "app_id": pusher.app_id,
            "pushkey": pusher.pushkey,
            "pushkey_ts": pusher.created_ts / 1000,
            "data": device_data,
        }],
    });
    let status = post_notification(client, url, &notification)
        .await?
        .status();
    if status.is_server_error() || status == reqwest::StatusCode::TOO_MANY_REQUESTS {
        anyhow::bail!("gateway answered {status} to a badge");
    }
    // A badge the gateway refuses is not retried: the next receipt sends another.
    rows::badge_sent(&app.db, pusher).await?;
    Ok(())
}

/// The event fields of a full-format notification.
async fn describe(
    app: &AppState,
    user: &str,
    room_id: &str,
    event_id: &str,
    out: &mut Value,
) -> anyhow::Result<()> {
    let Some(event) = events::get(&app.db, event_id).await? else {
        return Ok(());
    };
    let pdu: Value = serde_json::from_str(&event.json)?;
    // `id` is the deprecated name of `event_id` that Synapse still sends.
    out["id"] = event_id.into();
    out["type"] = pdu["type"].clone();
    out["sender"] = pdu["sender"].clone();
    out["prio"] = if out["devices"][0]["tweaks"].get("highlight").is_some()
        || pdu["type"] == "m.room.encrypted"
        || pdu["type"] == "m.room.message"
    {
        "high"
    } else {
        "low"
    }
    .into();
    if event.redacted_by.is_none() {
        out["content"] = pdu["content"].clone();
    }
    // Synapse's membership fields (not in the push gateway spec's schema, but
    // gateways and SyTest read them).
    if pdu["type"] == "m.room.member" && pdu["state_key"].is_string() {
        out["membership"] = pdu["content"]["membership"].clone();
        out["user_is_target"] = (pdu["state_key"].as_str() == Some(user)).into();
    }
    let sender = pdu["sender"].as_str().unwrap_or_default();
    let keys = [
        ("m.room.name", ""),
        ("m.room.canonical_alias", ""),
        ("m.room.member", sender),
    ]
    .map(|(t, k)| (t.to_owned(), k.to_owned()));
    // The room's state, or for an invite into a room this server is not in,
    // the stripped state that came with it (as Synapse names such pushes).
    let state: Vec<Value> = match rooms::get(&app.db, room_id)
        .await?
        .and_then(|r| r.current_state_group)
    {
        Some(group) => {
            let ids: Vec<String> = state::state_for_keys(&app.db, group, &keys)
                .await?
                .into_iter()
                .map(|(_, id)| id)
                .collect();
            events::get_many(&app.db, &ids)
                .await?
                .iter()
                .filter_map(|ev| serde_json::from_str(&ev.json).ok())
                .collect()
        }
        None => federation::remote_stripped_state(&app.db, event_id)
            .await?
            .and_then(|s| s.as_array().cloned())
            .unwrap_or_default()
            .into_iter()
            .filter(|ev| {
                keys.iter().any(|(t, k)| {
                    ev["type"].as_str() == Some(t) && ev["state_key"].as_str() == Some(k)
                })
            })
            .collect(),
    };
    for state in &state {
        let content = &state["content"];
        let (field, value) = match state["type"].as_str().unwrap_or_default() {
            "m.room.name" => ("room_name", &content["name"]),
            "m.room.canonical_alias" => ("room_alias", &content["alias"]),
            _ => ("sender_display_name", &content["displayname"]),
        };
        if value.as_str().is_some_and(|v| !v.is_empty()) {
            out[field] = value.clone();
        }
    }
    // `room_name` is the room's display name as Synapse computes it for pushes:
    // its name, or else its canonical alias (no member-based fallback).
    if out.get("room_name").is_none()
        && let Some(alias) = out.get("room_alias").cloned()
    {
        out["room_name"] = alias;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `profile_tag` is sent as `null` (SyTest reads the key); the stored
    /// actions and the client event are passed on as they are.
    #[test]
    fn a_notification_carries_a_null_profile_tag() {
        let n = Notification {
            actions: json!(["notify", { "set_tweak": "highlight", "value": true }]),
            event: json!({ "type": "m.room.message", "origin_server_ts": 5 }),
            profile_tag: None,
            read: false,
            room_id: RoomId::parse("!r:example.org").unwrap(),
            ts: Some(5),
        };
        let page = serde_json::to_value(Notifications {
            notifications: vec![n],
            next_token: None,
        })
        .unwrap();
        assert_eq!(
            page,
            json!({ "notifications": [{
                "actions": ["notify", { "set_tweak": "highlight", "value": true }],
                "event": { "type": "m.room.message", "origin_server_ts": 5 },
                "profile_tag": null, "read": false, "room_id": "!r:example.org", "ts": 5,
            }] })
        );
    }
}

//! Email pushers (spec: "Push Notifications", pusher kind `email`; the
//! behaviour is Synapse's `EmailPusher`): a user who set one gets a mail
//! summarising the notifications they have not read `email.notif_delay_secs`
//! after the first of them arrived, at most one mail per
//! `email.notif_throttle_secs`.
//!
//! The worker looks at each email pusher's notifications after its position:
//! - the ones already read (a receipt at or past them) are passed over;
//! - once the oldest unread one is older than the delay and the throttle
//!   allows, one mail lists every unread one, grouped by room, and the
//!   position moves past them. A mail that fails is tried again after a
//!   backoff (30 s doubling to an hour); nothing is lost.
//!
//! Each mail carries an unsubscribe link served here ([`unsubscribe`]) with
//! the pusher's random token; it removes that pusher and nothing else.
//! Nothing runs without `[email]`, and no database connection is held while
//! the SMTP server is talked to.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use serde_json::Value;
use subtle::ConstantTimeEq;
use tokio_util::sync::CancellationToken;

use super::mail::Mailer;
use crate::{
    domain::{
        notif_mail::{self, Message, Recipient, Room},
        threepid::{EMAIL, canonical_email},
        token,
    },
    error::{Error, ErrorKind, Result},
    service::AppState,
    storage::{
        events,
        pushers::{self as rows, EmailPusher},
        rooms, state, threepids, user_streams,
    },
};

/// The path of the unsubscribe link's page (as Synapse's).
pub const UNSUBSCRIBE_PATH: &str = "_synapse/client/unsubscribe";
/// The most notifications one mail lists.
const MAX_PER_MAIL: i64 = 50;
/// The longest time between two looks at the pushers.
const MAX_POLL: Duration = Duration::from_secs(30);
/// After a failed send, a pusher waits this long, doubling up to
/// [`MAX_RETRY`], so an SMTP server that is down costs one attempt per
/// pusher per period.
const FIRST_RETRY: Duration = Duration::from_secs(30);
const MAX_RETRY: Duration = Duration::from_secs(60 * 60);

/// Backoff of the pushers whose last send failed, by (user, app id, pushkey).
type Failing = HashMap<(String, String, String), (Instant, Duration)>;

/// Checks an email pusher before it is set: mail must be on, and the address
/// one of the user's validated addresses. Returns the unsubscribe token a new
/// pusher gets.
pub async fn check_new_pusher(app: &AppState, user_id: &str, pushkey: &str) -> Result<String> {
    if app.mailer.is_none() {
        return Err(Error::new(
            ErrorKind::ThreepidDenied,
            "This server does not send email, so it has no email pushers",
        ));
    }
    let owner = match canonical_email(pushkey) {
        Some(address) => threepids::owner(&app.db, EMAIL, &address).await?,
        None => None,
    };
    if owner.as_deref() != Some(user_id) {
        // As Synapse answers: the address must be one of the user's own.
        return Err(Error::new(ErrorKind::ThreepidNotFound, "Email not found"));
    }
    Ok(token::random_string(32))
}

/// The unsubscribe link of an email pusher.
pub fn unsubscribe_link(app: &AppState, p: &EmailPusher) -> String {
    let query = form_urlencoded::Serializer::new(String::new())
        .append_pair("user_id", &p.pusher.user_id)
        .append_pair("app_id", &p.pusher.app_id)
        .append_pair("pushkey", &p.pusher.pushkey)
        .append_pair("token", &p.unsubscribe_token)
        .finish();
    format!("{}{UNSUBSCRIBE_PATH}?{query}", app.config.public_baseurl())
}

/// The unsubscribe link's parameters.
pub struct Unsubscribe {
    pub user_id: String,
    pub app_id: String,
    pub pushkey: String,
    pub token: String,
}

/// Removes the email pusher the link names when its token is right. A wrong
/// token and an unknown pusher get the same answer.
pub async fn unsubscribe(app: &AppState, u: &Unsubscribe) -> Result<()> {
    let stored = rows::unsubscribe_token(&app.db, &u.user_id, &u.app_id, &u.pushkey).await?;
    let right = stored.is_some_and(|t| bool::from(t.as_bytes().ct_eq(u.token.as_bytes())));
    if !right {
        return Err(Error::new(
            ErrorKind::Forbidden,
            "This unsubscribe link is not valid (or was used already)",
        ));
    }
    rows::delete(&app.db, &u.user_id, &u.app_id, &u.pushkey).await?;
    tracing::info!(user_id = %u.user_id, "email pusher removed by its unsubscribe link");
    Ok(())
}

/// The worker: runs while mail is configured, until shutdown.
pub async fn run(app: AppState, shutdown: CancellationToken) {
    let Some(mailer) = app.mailer.clone() else {
        return;
    };
    let poll = Duration::from_secs(app.config.email.notif_delay_secs).min(MAX_POLL);
    let mut failing = Failing::new();
    loop {
        let next = match round(&app, &mailer, &mut failing).await {
            Ok(next) => next,
            Err(e) => {
                tracing::warn!("email notifications: {e}");
                None
            }
        };
        let wait = next
            .map_or(poll, |d| d.min(poll))
            .max(Duration::from_millis(100));
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// One look at every email pusher; the time until the next one has a mail due.
async fn round(app: &AppState, mailer: &Mailer, failing: &mut Failing) -> Result<Option<Duration>> {
    let mut next: Option<Duration> = None;
    let pushers = rows::email_pushers(&app.db).await?;
    let key = |p: &EmailPusher| {
        (
            p.pusher.user_id.clone(),
            p.pusher.app_id.clone(),
            p.pusher.pushkey.clone(),
        )
    };
    let live: std::collections::HashSet<_> = pushers.iter().map(key).collect();
    failing.retain(|k, _| live.contains(k));
    for p in pushers {
        let k = key(&p);
        if failing.get(&k).is_some_and(|(at, _)| *at > Instant::now()) {
            continue;
        }
        match process(app, mailer, &p).await {
            Ok(due) => {
                failing.remove(&k);
                if let Some(due) = due {
                    next = Some(next.map_or(due, |n| n.min(due)));
                }
            }
            Err(e) => {
                let delay = failing
                    .get(&k)
                    .map_or(FIRST_RETRY, |(_, d)| (*d * 2).min(MAX_RETRY));
                failing.insert(k, (Instant::now() + delay, delay));
                tracing::info!(
                    user_id = %p.pusher.user_id,
                    "notification mail not sent ({e}); trying again in {delay:?}"
                );
            }
        }
    }
    Ok(next)
}

/// Mails one pusher's unread notifications if they are due; otherwise the
/// time until they are.
async fn process(
    app: &AppState,
    mailer: &Mailer,
    p: &EmailPusher,
) -> anyhow::Result<Option<Duration>> {
    let pusher = &p.pusher;
    let candidates = user_streams::mail_candidates(
        &app.db,
        &pusher.user_id,
        pusher.last_stream_ordering,
        MAX_PER_MAIL,
    )
    .await?;
    let Some(last) = candidates.last() else {
        return Ok(None);
    };
    let Some(first_unread) = candidates.iter().position(|c| !c.read) else {
        // All read in time: nothing to mail.
        rows::advance(&app.db, pusher, last.stream_ordering).await?;
        return Ok(None);
    };
    if first_unread > 0 {
        rows::advance(
            &app.db,
            pusher,
            candidates[first_unread - 1].stream_ordering,
        )
        .await?;
    }
    let email = &app.config.email;
    let now = app.clock.now_ms();
    let due = (candidates[first_unread].received_ts + email.notif_delay_secs as i64 * 1000)
        .max(p.last_mail_ts + email.notif_throttle_secs as i64 * 1000);
    if now < due {
        return Ok(Some(Duration::from_millis((due - now) as u64)));
    }
    // The address may have left the account since the pusher was set.
    let still_theirs = match canonical_email(&pusher.pushkey) {
        Some(address) => {
            threepids::owner(&app.db, EMAIL, &address).await?.as_deref()
                == Some(pusher.user_id.as_str())
        }
        None => false,
    };
    if !still_theirs {
        rows::delete(&app.db, &pusher.user_id, &pusher.app_id, &pusher.pushkey).await?;
        return Ok(None);
    }
    let unread: Vec<_> = candidates.iter().filter(|c| !c.read).collect();
    let mut by_room: Vec<(String, Vec<String>)> = Vec::new();
    for c in &unread {
        match by_room.iter_mut().find(|(room, _)| *room == c.room_id) {
            Some((_, ids)) => ids.push(c.event_id.clone()),
            None => by_room.push((c.room_id.clone(), vec![c.event_id.clone()])),
        }
    }
    let mut summary = Vec::new();
    for (room_id, event_ids) in by_room {
        summary.push(describe_room(app, &pusher.user_id, &room_id, &event_ids).await?);
    }
    let unsubscribe_link = unsubscribe_link(app, p);
    let client_link = email.client_base_url.clone();
    let mail = notif_mail::compose(
        mailer.notif_templates(),
        &Recipient {
            app_name: &email.app_name,
            server_name: &app.config.server_name,
            user_id: &pusher.user_id,
            address: &pusher.pushkey,
            client_link: &client_link,
            unsubscribe_link: &unsubscribe_link,
        },
        &summary,
    );
    mailer
        .send_notification(&pusher.pushkey, mail, &unsubscribe_link)
        .await?;
    rows::advance(&app.db, pusher, last.stream_ordering).await?;
    rows::mail_sent(&app.db, pusher, app.clock.now_ms()).await?;
    tracing::info!(user_id = %pusher.user_id, notifications = unread.len(), "notification mail sent");
    Ok(None)
}

/// A room's name and its notifications, as the mail shows them.
async fn describe_room(
    app: &AppState,
    user_id: &str,
    room_id: &str,
    event_ids: &[String],
) -> anyhow::Result<Room> {
    let profiles = rooms::joined_profiles(&app.db, room_id).await?;
    let display: HashMap<&str, &str> = profiles
        .iter()
        .filter_map(|(u, name, _)| Some((u.as_str(), name.as_deref().filter(|n| !n.is_empty())?)))
        .collect();
    let name_of = |u: &str| {
        display
            .get(u)
            .map_or_else(|| u.to_owned(), |n| (*n).to_owned())
    };
    let mut messages = Vec::new();
    let mut stored = events::get_many(&app.db, event_ids).await?;
    stored.sort_by_key(|e| e.stream_ordering);
    for event in stored {
        let pdu: Value = serde_json::from_str(&event.json)?;
        messages.push(Message {
            sender: name_of(&event.sender),
            text: notif_mail::describe(
                &event.event_type,
                &pdu["content"],
                event.redacted_by.is_some(),
                user_id,
                event.state_key.as_deref(),
            ),
        });
    }
    Ok(Room {
        name: room_name(app, user_id, room_id, &profiles).await?,
        link: notif_mail::room_link(&app.config.email.client_base_url, room_id),
        messages,
    })
}

/// The room's name as a client shows it: its name, its canonical alias, else
/// the other members' names.
async fn room_name(
    app: &AppState,
    user_id: &str,
    room_id: &str,
    profiles: &[(String, Option<String>, Option<String>)],
) -> anyhow::Result<String> {
    if let Some(group) = rooms::get(&app.db, room_id)
        .await?
        .and_then(|r| r.current_state_group)
    {
        let keys = [("m.room.name", ""), ("m.room.canonical_alias", "")]
            .map(|(t, k)| (t.to_owned(), k.to_owned()));
        let ids: Vec<String> = state::state_for_keys(&app.db, group, &keys)
            .await?
            .into_iter()
            .map(|(_, id)| id)
            .collect();
        let mut name = None;
        let mut alias = None;
        for ev in events::get_many(&app.db, &ids).await? {
            let content = serde_json::from_str::<Value>(&ev.json)?["content"].clone();
            match ev.event_type.as_str() {
                "m.room.name" => name = content["name"].as_str().map(str::to_owned),
                _ => alias = content["alias"].as_str().map(str::to_owned),
            }
        }
        if let Some(n) = name
            .filter(|n| !n.is_empty())
            .or(alias.filter(|a| !a.is_empty()))
        {
            return Ok(n);
        }
    }
    let others: Vec<String> = profiles
        .iter()
        .filter(|(u, _, _)| u != user_id)
        .take(3)
        .map(|(u, name, _)| {
            name.clone()
                .filter(|n| !n.is_empty())
                .unwrap_or_else(|| u.clone())
        })
        .collect();
    Ok(if others.is_empty() {
        room_id.to_owned()
    } else {
        others.join(", ")
    })
}

//! Drives two matrix-rust-sdk clients against a Lattice server.
//!
//! `lattice-sdk-client <homeserver> <plain|encrypted|sliding|echo> <alice> <alice-pw> <bob> <bob-pw> [<bob's homeserver>]`
//!
//! With a second homeserver (plain and encrypted modes), Bob logs in there and
//! everything between the two users crosses federation.
//!
//! plain, encrypted: Alice creates a room (encrypted or not) and invites Bob; Bob
//! joins; each sends a message and each must see the other's plaintext
//! (decrypted by the SDK in the encrypted case), over `/sync`.
//!
//! sliding: Alice creates two named rooms and Bob joins one; Alice's client uses
//! simplified sliding sync (MSC4186, as Element X does): a room list that must
//! show both rooms with their names, then Bob's message arriving through it.
//!
//! echo: Alice is not registered beforehand: the client registers her the way
//! the SDK's UIA goes, starting with `POST /register {}` for the flows and a
//! session. She sends a message through the SDK's send queue (the local echo,
//! as Element X sends) and her remote echo must come back over `/sync` with the
//! send queue's transaction ID in `unsigned`, which is how the timeline replaces
//! the local echo. Her other device and Bob get the event without it.
//!
//! Prints `ok <room id>` on success; anything else fails with a message on
//! stderr and a non-zero exit.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context, Result, bail, ensure};
use matrix_sdk::{
    Client, RoomState, SlidingSyncList, SlidingSyncMode,
    config::SyncSettings,
    room::Room,
    ruma::{
        OwnedEventId, OwnedRoomId, OwnedTransactionId, OwnedUserId,
        api::client::{
            account::register::v3::Request as RegistrationRequest,
            room::create_room::v3::{Request as CreateRoom, RoomPreset},
            uiaa::{AuthData, AuthType, Dummy},
        },
        events::{
            InitialStateEvent, StateEventType,
            room::{
                encryption::RoomEncryptionEventContent,
                message::{MessageType, OriginalSyncRoomMessageEvent, RoomMessageEventContent},
            },
        },
    },
    send_queue::RoomSendQueueUpdate,
};

/// Messages a client's event handler saw: (room, sender, body).
type Seen = Arc<Mutex<Vec<(OwnedRoomId, OwnedUserId, String)>>>;

/// Messages a client's event handler saw: (event ID, `unsigned.transaction_id`).
type Echoes = Arc<Mutex<Vec<(OwnedEventId, Option<OwnedTransactionId>)>>>;

const ROUNDS: usize = 30;

fn settings() -> SyncSettings {
    SyncSettings::default().timeout(Duration::from_millis(1000))
}

async fn login(
    homeserver: &str,
    user: &str,
    password: &str,
    device: &str,
) -> Result<(Client, Seen)> {
    let client = Client::builder()
        .homeserver_url(homeserver)
        .build()
        .await
        .context("building the client")?;
    client
        .matrix_auth()
        .login_username(user, password)
        .device_id(device)
        .initial_device_display_name(&format!("rust-sdk {device}"))
        .send()
        .await
        .with_context(|| format!("logging in {user}"))?;
    let seen = watch(&client).await?;
    Ok((client, seen))
}

/// Registers `user` as the SDK's UIA goes: `POST /register {}` first, for the
/// flows and a session, then the dummy stage in that session.
async fn register(homeserver: &str, user: &str, password: &str) -> Result<(Client, Seen)> {
    let client = Client::builder()
        .homeserver_url(homeserver)
        .build()
        .await
        .context("building the client")?;
    let auth = client.matrix_auth();
    let uiaa = match auth.register(RegistrationRequest::new()).await {
        Ok(_) => bail!("POST /register {{}} registered an account without UIA"),
        Err(e) => e
            .as_uiaa_response()
            .cloned()
            .with_context(|| format!("POST /register {{}} answered no UIA flows: {e}"))?,
    };
    ensure!(
        uiaa.flows.iter().any(|f| f.stages == [AuthType::Dummy]),
        "no dummy flow offered: {:?}",
        uiaa.flows
    );
    let mut dummy = Dummy::new();
    dummy.session = Some(uiaa.session.context("the UIA answer has no session")?);
    let mut request = RegistrationRequest::new();
    request.username = Some(user.to_owned());
    request.password = Some(password.to_owned());
    request.initial_device_display_name = Some("rust-sdk registration".to_owned());
    request.auth = Some(AuthData::Dummy(dummy));
    auth.register(request)
        .await
        .context("registering in the UIA session")?;
    ensure!(
        client.user_id().is_some_and(|u| u.localpart() == user),
        "not logged in as {user} after registering"
    );
    let seen = watch(&client).await?;
    Ok((client, seen))
}

/// Records the text messages `client` syncs, and syncs once.
async fn watch(client: &Client) -> Result<Seen> {
    let seen: Seen = Arc::default();
    let sink = seen.clone();
    client.add_event_handler(move |ev: OriginalSyncRoomMessageEvent, room: Room| {
        let sink = sink.clone();
        async move {
            if let MessageType::Text(text) = ev.content.msgtype {
                sink.lock()
                    .unwrap()
                    .push((room.room_id().to_owned(), ev.sender, text.body));
            }
        }
    });
    // The first sync uploads the device's keys.
    client.sync_once(settings()).await.context("first sync")?;
    Ok(seen)
}

/// Records every message `client` syncs with its `unsigned.transaction_id`.
fn echoes(client: &Client) -> Echoes {
    let echoes: Echoes = Arc::default();
    let sink = echoes.clone();
    client.add_event_handler(move |ev: OriginalSyncRoomMessageEvent| {
        let sink = sink.clone();
        async move {
            sink.lock()
                .unwrap()
                .push((ev.event_id, ev.unsigned.transaction_id));
        }
    });
    echoes
}

fn echo_of(echoes: &Echoes, event_id: &OwnedEventId) -> Option<Option<OwnedTransactionId>> {
    echoes
        .lock()
        .unwrap()
        .iter()
        .find(|(id, _)| id == event_id)
        .map(|(_, txn)| txn.clone())
}

/// Syncs `client` until `done` holds, at most [`ROUNDS`] times.
async fn sync_until(client: &Client, what: &str, mut done: impl FnMut() -> bool) -> Result<()> {
    for _ in 0..ROUNDS {
        if done() {
            return Ok(());
        }
        client
            .sync_once(settings())
            .await
            .with_context(|| format!("syncing while waiting for {what}"))?;
    }
    if done() {
        return Ok(());
    }
    bail!("gave up waiting for {what} after {ROUNDS} syncs")
}

fn saw(seen: &Seen, room: &OwnedRoomId, sender: &OwnedUserId, body: &str) -> bool {
    seen.lock()
        .unwrap()
        .iter()
        .any(|(r, s, b)| r == room && s == sender && b == body)
}

async fn run() -> Result<String> {
    let args: Vec<String> = std::env::args().collect();
    let (homeserver, mode, alice_user, alice_pw, bob_user, bob_pw, bob_homeserver) = match args
        .as_slice()
    {
        [_, hs, mode, au, ap, bu, bp] => (hs, mode, au, ap, bu, bp, hs),
        [_, hs, mode, au, ap, bu, bp, bob_hs] => (hs, mode, au, ap, bu, bp, bob_hs),
        _ => bail!(
            "usage: lattice-sdk-client <homeserver> <plain|encrypted|sliding|echo> <alice> <pw> <bob> <pw> [bob's homeserver]"
        ),
    };
    let encrypted = match mode.as_str() {
        "plain" => false,
        "encrypted" => true,
        "sliding" => return sliding(homeserver, alice_user, alice_pw, bob_user, bob_pw).await,
        "echo" => return echo(homeserver, alice_user, alice_pw, bob_user, bob_pw).await,
        other => bail!("unknown mode {other}"),
    };
    let (alice, alice_seen) = login(homeserver, alice_user, alice_pw, "ALICEDEV").await?;
    let (bob, bob_seen) = login(bob_homeserver, bob_user, bob_pw, "BOBDEV").await?;
    let alice_id = alice.user_id().context("alice's user id")?.to_owned();
    let bob_id = bob.user_id().context("bob's user id")?.to_owned();

    let mut request = CreateRoom::new();
    request.name = Some(format!("rust-sdk {mode}"));
    request.invite = vec![bob_id.clone()];
    if encrypted {
        request.initial_state = vec![
            InitialStateEvent::with_empty_state_key(
                RoomEncryptionEventContent::with_recommended_defaults(),
            )
            .to_raw_any(),
        ];
    }
    let room = alice
        .create_room(request)
        .await
        .context("creating the room")?;
    let room_id = room.room_id().to_owned();

    sync_until(&bob, "the invite", || {
        bob.get_room(&room_id)
            .is_some_and(|r| r.state() == RoomState::Invited)
    })
    .await?;
    bob.join_room_by_id(&room_id).await.context("bob joining")?;
    sync_until(&bob, "bob's own join", || {
        bob.get_room(&room_id)
            .is_some_and(|r| r.state() == RoomState::Joined)
    })
    .await?;

    // Alice learns that Bob joined (so her room key goes to his device).
    for _ in 0..ROUNDS {
        alice.sync_once(settings()).await.context("alice syncing")?;
        if room.joined_members_count() >= 2 {
            break;
        }
    }
    ensure!(room.joined_members_count() >= 2, "alice never saw bob join");
    if encrypted {
        ensure!(
            room.latest_encryption_state().await?.is_encrypted(),
            "the room is not encrypted for alice"
        );
    }

    let hello = "hello from alice";
    room.send(RoomMessageEventContent::text_plain(hello))
        .await
        .context("alice sending")?;
    sync_until(&bob, "alice's message", || {
        saw(&bob_seen, &room_id, &alice_id, hello)
    })
    .await?;

    let bob_room = bob.get_room(&room_id).context("bob's room")?;
    if encrypted {
        ensure!(
            bob_room.latest_encryption_state().await?.is_encrypted(),
            "the room is not encrypted for bob"
        );
    }
    let reply = "hello back from bob";
    bob_room
        .send(RoomMessageEventContent::text_plain(reply))
        .await
        .context("bob sending")?;
    sync_until(&alice, "bob's reply", || {
        saw(&alice_seen, &room_id, &bob_id, reply)
    })
    .await?;
    Ok(room_id.to_string())
}

async fn sliding(
    homeserver: &str,
    alice_user: &str,
    alice_pw: &str,
    bob_user: &str,
    bob_pw: &str,
) -> Result<String> {
    let (alice, alice_seen) = login(homeserver, alice_user, alice_pw, "ALICESS").await?;
    let (bob, _) = login(homeserver, bob_user, bob_pw, "BOBSS").await?;
    let bob_id = bob.user_id().context("bob's user id")?.to_owned();
    let mut names = Vec::new();
    let mut rooms = Vec::new();
    for name in ["sliding one", "sliding two"] {
        let mut request = CreateRoom::new();
        request.name = Some(name.to_owned());
        request.invite = vec![bob_id.clone()];
        let room = alice
            .create_room(request)
            .await
            .context("creating a room")?;
        names.push(name);
        rooms.push(room.room_id().to_owned());
    }
    let room_id = rooms[0].clone();
    let bob_room = bob.join_room_by_id(&room_id).await.context("bob joining")?;

    let sliding = alice
        .sliding_sync("room-list")?
        .with_all_extensions()
        .poll_timeout(Duration::from_secs(1))
        .add_list(
            SlidingSyncList::builder("all")
                .sync_mode(SlidingSyncMode::new_selective().add_range(0..=20))
                .timeline_limit(5)
                .required_state(vec![
                    (StateEventType::RoomName, String::new()),
                    (StateEventType::RoomEncryption, String::new()),
                    (StateEventType::RoomMember, "$LAZY".to_owned()),
                ]),
        )
        .build()
        .await
        .context("building sliding sync")?;
    sliding.sync_once().await.context("first sliding sync")?;
    let count = sliding
        .on_list("all", |list| {
            std::future::ready(list.maximum_number_of_rooms())
        })
        .await
        .flatten();
    ensure!(
        count == Some(2),
        "the room list counts {count:?} rooms, not 2"
    );
    for (room, name) in rooms.iter().zip(&names) {
        let known = alice
            .get_room(room)
            .with_context(|| format!("room {room} unknown"))?;
        ensure!(
            known.name().as_deref() == Some(*name),
            "room {room} is named {:?}, not {name}",
            known.name()
        );
    }

    let hello = "hello over sliding sync";
    bob_room
        .send(RoomMessageEventContent::text_plain(hello))
        .await
        .context("bob sending")?;
    for _ in 0..ROUNDS {
        if saw(&alice_seen, &room_id, &bob_id, hello) {
            return Ok(room_id.to_string());
        }
        sliding.sync_once().await.context("sliding sync")?;
    }
    ensure!(
        saw(&alice_seen, &room_id, &bob_id, hello),
        "bob's message never arrived over sliding sync"
    );
    Ok(room_id.to_string())
}

async fn echo(
    homeserver: &str,
    alice_user: &str,
    alice_pw: &str,
    bob_user: &str,
    bob_pw: &str,
) -> Result<String> {
    let (alice, _) = register(homeserver, alice_user, alice_pw).await?;
    let alice_echoes = echoes(&alice);
    let (other, _) = login(homeserver, alice_user, alice_pw, "ALICEOTHER").await?;
    let other_echoes = echoes(&other);
    let (bob, _) = login(homeserver, bob_user, bob_pw, "BOBECHO").await?;
    let bob_echoes = echoes(&bob);

    let mut request = CreateRoom::new();
    request.name = Some("rust-sdk echo".to_owned());
    request.preset = Some(RoomPreset::PublicChat);
    let room = alice
        .create_room(request)
        .await
        .context("creating the room")?;
    let room_id = room.room_id().to_owned();
    bob.join_room_by_id(&room_id).await.context("bob joining")?;

    // Sent through the send queue: a local echo first, under a transaction ID
    // the SDK picks, then the event ID once the server has the event.
    let queue = room.send_queue();
    let (_, mut updates) = queue.subscribe().await.context("send queue")?;
    queue
        .send(RoomMessageEventContent::text_plain("echo me").into())
        .await
        .context("queueing the message")?;
    let (mut local, mut sent) = (None, None);
    while sent.is_none() {
        let update = tokio::time::timeout(Duration::from_secs(30), updates.recv())
            .await
            .context("no send queue update in 30 s")?
            .context("send queue updates")?;
        match update {
            RoomSendQueueUpdate::NewLocalEvent(echo) => local = Some(echo.transaction_id),
            RoomSendQueueUpdate::SentEvent {
                transaction_id,
                event_id,
            } => sent = Some((transaction_id, event_id)),
            RoomSendQueueUpdate::SendError { error, .. } => bail!("sending failed: {error}"),
            _ => {}
        }
    }
    let (txn, event_id) = sent.context("sent")?;
    ensure!(
        local.as_ref() == Some(&txn),
        "the local echo was {local:?}, the sent event {txn}"
    );

    sync_until(&alice, "alice's remote echo", || {
        echo_of(&alice_echoes, &event_id).is_some()
    })
    .await?;
    let got = echo_of(&alice_echoes, &event_id).flatten();
    ensure!(
        got.as_ref() == Some(&txn),
        "alice's remote echo of {event_id} carries transaction ID {got:?}, not {txn}: \
         the timeline cannot replace its local echo"
    );
    for (client, seen, who) in [
        (&other, &other_echoes, "alice's other device"),
        (&bob, &bob_echoes, "bob"),
    ] {
        sync_until(client, &format!("the message at {who}"), || {
            echo_of(seen, &event_id).is_some()
        })
        .await?;
        let got = echo_of(seen, &event_id).flatten();
        ensure!(got.is_none(), "{who} got the transaction ID {got:?}");
    }
    Ok(room_id.to_string())
}

#[tokio::main]
async fn main() {
    match run().await {
        Ok(room) => println!("ok {room}"),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(1);
        }
    }
}

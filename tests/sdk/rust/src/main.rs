//! Drives two matrix-rust-sdk clients against a Lattice server.
//!
//! `lattice-sdk-client <homeserver> <plain|encrypted|sliding|echo|invite|history|preview> <alice> <alice-pw> <bob> <bob-pw> [<bob's homeserver>]`
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
//! invite: Alice, with a display name, invites Bob; Bob's client must name her
//! as the inviter (`Room::invite_details`), which needs her member event in the
//! invite's stripped state.
//!
//! history: Alice writes in two rooms before inviting Bob, one with `shared`
//! history, one with `joined`. After joining, Bob's first sync must already
//! carry the latest earlier message of the `shared` room, and paginating back
//! (the event cache, from the sync's `prev_batch`) must reach the earliest; in
//! the `joined` room, nothing from before his join, however far he pages.
//!
//! preview: Alice creates a public room with a name and topic, and a private
//! one; Bob, in neither, previews the public room through the room summary
//! endpoint (MSC3266, as Element X does for room links) by ID and by alias, and
//! gets nothing for the private one; once invited to it, his preview shows it
//! as an invite.
//!
//! Prints `ok <room id>` on success; anything else fails with a message on
//! stderr and a non-zero exit.
//!
//! Signing in (the modes in `signin.rs`, each with arguments of its own):
//!
//! `lattice-sdk-client <homeserver> sso <idp id|-> <callback port> <device>`
//! `lattice-sdk-client <homeserver> token <login token> <device>`
//! `lattice-sdk-client <homeserver> get-token <user> <pw> <other user> <other pw> <delay ms>`
//! `lattice-sdk-client <homeserver> email <user> <pw> <address> <second address> <taken address>`

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
        OwnedEventId, OwnedRoomId, OwnedTransactionId, OwnedUserId, RoomAliasId, RoomOrAliasId,
        UserId,
        api::client::{
            account::register::v3::Request as RegistrationRequest,
            room::create_room::v3::{Request as CreateRoom, RoomPreset},
            uiaa::{AuthData, AuthType, Dummy},
        },
        events::{
            AnySyncMessageLikeEvent, AnySyncStateEvent, AnySyncTimelineEvent, InitialStateEvent,
            StateEventType, SyncMessageLikeEvent, SyncStateEvent,
            room::{
                encryption::RoomEncryptionEventContent,
                history_visibility::{HistoryVisibility, RoomHistoryVisibilityEventContent},
                member::MembershipState,
                message::{MessageType, OriginalSyncRoomMessageEvent, RoomMessageEventContent},
            },
        },
    },
    send_queue::RoomSendQueueUpdate,
};

mod signin;

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

/// Runs the mode the arguments name; returns the line to print.
async fn run() -> Result<String> {
    let args: Vec<String> = std::env::args().collect();
    let usage = || format!("bad arguments for this mode: {:?}", &args[1..]);
    match args.get(2).map(String::as_str) {
        Some("sso") => {
            let [_, hs, _, idp, port, device] = args.as_slice() else {
                bail!(usage())
            };
            return signin::sso(hs, idp, port.parse()?, device).await;
        }
        Some("token") => {
            let [_, hs, _, token, device] = args.as_slice() else {
                bail!(usage())
            };
            return signin::token(hs, token, device).await;
        }
        Some("get-token") => {
            let [_, hs, _, user, pw, other, other_pw, delay] = args.as_slice() else {
                bail!(usage())
            };
            return signin::get_token(hs, user, pw, other, other_pw, delay.parse()?).await;
        }
        Some("email") => {
            let [_, hs, _, user, pw, address, second, taken] = args.as_slice() else {
                bail!(usage())
            };
            return signin::email(hs, user, pw, address, second, taken).await;
        }
        _ => {}
    }
    chat(&args).await.map(|room| format!("ok {room}"))
}

/// The chat modes; returns a room ID.
async fn chat(args: &[String]) -> Result<String> {
    let (homeserver, mode, alice_user, alice_pw, bob_user, bob_pw, bob_homeserver) = match args {
        [_, hs, mode, au, ap, bu, bp] => (hs, mode, au, ap, bu, bp, hs),
        [_, hs, mode, au, ap, bu, bp, bob_hs] => (hs, mode, au, ap, bu, bp, bob_hs),
        _ => bail!(
            "usage: lattice-sdk-client <homeserver> <plain|encrypted|sliding|echo|invite|history|preview> <alice> <pw> <bob> <pw> [bob's homeserver]"
        ),
    };
    let encrypted = match mode.as_str() {
        "plain" => false,
        "encrypted" => true,
        "sliding" => return sliding(homeserver, alice_user, alice_pw, bob_user, bob_pw).await,
        "echo" => return echo(homeserver, alice_user, alice_pw, bob_user, bob_pw).await,
        "invite" => return invite(homeserver, alice_user, alice_pw, bob_user, bob_pw).await,
        "preview" => return preview(homeserver, alice_user, alice_pw, bob_user, bob_pw).await,
        "history" => return history(homeserver, alice_user, alice_pw, bob_user, bob_pw).await,
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

const ALICE_NAME: &str = "Alice Liddell";

/// Alice creates a room (with `initial_state`) and invites Bob; Bob syncs until
/// he sees the invite.
async fn room_with_invite(
    alice: &Client,
    bob: &Client,
    name: &str,
    initial_state: Vec<
        matrix_sdk::ruma::serde::Raw<matrix_sdk::ruma::events::AnyInitialStateEvent>,
    >,
    before_invite: &[&str],
) -> Result<OwnedRoomId> {
    let bob_id = bob.user_id().context("bob's user id")?.to_owned();
    let mut request = CreateRoom::new();
    request.name = Some(name.to_owned());
    request.initial_state = initial_state;
    let room = alice
        .create_room(request)
        .await
        .context("creating a room")?;
    for body in before_invite {
        room.send(RoomMessageEventContent::text_plain(*body))
            .await
            .context("alice sending")?;
    }
    room.invite_user_by_id(&bob_id)
        .await
        .context("inviting bob")?;
    let room_id = room.room_id().to_owned();
    sync_until(bob, "the invite", || {
        bob.get_room(&room_id)
            .is_some_and(|r| r.state() == RoomState::Invited)
    })
    .await?;
    Ok(room_id)
}

async fn invite(
    homeserver: &str,
    alice_user: &str,
    alice_pw: &str,
    bob_user: &str,
    bob_pw: &str,
) -> Result<String> {
    let (alice, _) = login(homeserver, alice_user, alice_pw, "ALICEINV").await?;
    let (bob, _) = login(homeserver, bob_user, bob_pw, "BOBINV").await?;
    let alice_id = alice.user_id().context("alice's user id")?.to_owned();
    alice
        .account()
        .set_display_name(Some(ALICE_NAME))
        .await
        .context("setting alice's display name")?;
    let room_id = room_with_invite(&alice, &bob, "rust-sdk invite", Vec::new(), &[]).await?;
    let details = bob
        .get_room(&room_id)
        .context("bob's invited room")?
        .invite_details()
        .await
        .context("the invite's details")?;
    ensure!(
        details.inviter_id == alice_id,
        "the invite names {} as the inviter",
        details.inviter_id
    );
    let inviter = details
        .inviter
        .context("the invite has no member event of the inviter")?;
    ensure!(
        inviter.user_id() == alice_id && inviter.display_name() == Some(ALICE_NAME),
        "the inviter is {} named {:?}",
        inviter.user_id(),
        inviter.display_name()
    );
    Ok(room_id.to_string())
}

/// Room previews (`Client::get_room_preview`, through the room summary).
async fn preview(
    homeserver: &str,
    alice_user: &str,
    alice_pw: &str,
    bob_user: &str,
    bob_pw: &str,
) -> Result<String> {
    let (alice, _) = login(homeserver, alice_user, alice_pw, "ALICEPRE").await?;
    let (bob, _) = login(homeserver, bob_user, bob_pw, "BOBPRE").await?;
    let server = alice
        .user_id()
        .context("alice's user id")?
        .server_name()
        .to_owned();

    let mut request = CreateRoom::new();
    request.name = Some("Previewed".to_owned());
    request.topic = Some("what a preview shows".to_owned());
    request.preset = Some(RoomPreset::PublicChat);
    request.room_alias_name = Some("previewed".to_owned());
    let public = alice
        .create_room(request)
        .await
        .context("creating the public room")?;
    let public_id = public.room_id().to_owned();
    let alias = RoomAliasId::parse(format!("#previewed:{server}")).context("alias")?;

    // By ID, through the summary endpoint itself (no fallback to other APIs).
    let by_id = matrix_sdk::room_preview::RoomPreview::from_room_summary(
        &bob,
        public_id.clone(),
        <&RoomOrAliasId>::from(&*public_id),
        Vec::new(),
    )
    .await
    .context("previewing the public room by ID")?;
    ensure!(
        by_id.room_id == public_id
            && by_id.name.as_deref() == Some("Previewed")
            && by_id.topic.as_deref() == Some("what a preview shows")
            && by_id.num_joined_members == 1
            && by_id.canonical_alias.as_ref() == Some(&alias)
            && by_id.state.is_none(),
        "preview by ID: {by_id:?}"
    );
    ensure!(
        matches!(
            by_id.join_rule,
            Some(matrix_sdk::ruma::room::JoinRuleSummary::Public)
        ),
        "join rule {:?}",
        by_id.join_rule
    );
    // By alias, as a room link gives it.
    let by_alias = bob
        .get_room_preview(<&RoomOrAliasId>::from(&*alias), Vec::new())
        .await
        .context("previewing the public room by alias")?;
    ensure!(
        by_alias.room_id == public_id && by_alias.name.as_deref() == Some("Previewed"),
        "preview by alias: {by_alias:?}"
    );

    // A private room: nothing for an outsider, an invite once invited.
    let mut request = CreateRoom::new();
    request.name = Some("Hidden".to_owned());
    request.preset = Some(RoomPreset::PrivateChat);
    let private = alice
        .create_room(request)
        .await
        .context("creating the private room")?;
    let private_id = private.room_id().to_owned();
    let outsider = matrix_sdk::room_preview::RoomPreview::from_room_summary(
        &bob,
        private_id.clone(),
        <&RoomOrAliasId>::from(&*private_id),
        Vec::new(),
    )
    .await;
    ensure!(
        outsider.is_err(),
        "an outsider previewed a private room: {outsider:?}"
    );
    let bob_id = bob.user_id().context("bob's user id")?.to_owned();
    private
        .invite_user_by_id(&bob_id)
        .await
        .context("inviting bob")?;
    sync_until(&bob, "the invite", || {
        bob.get_room(&private_id)
            .is_some_and(|r| r.state() == RoomState::Invited)
    })
    .await?;
    let invited = bob
        .get_room_preview(<&RoomOrAliasId>::from(&*private_id), Vec::new())
        .await
        .context("previewing the room bob is invited to")?;
    ensure!(
        invited.name.as_deref() == Some("Hidden") && invited.state == Some(RoomState::Invited),
        "preview as an invitee: {invited:?}"
    );
    Ok(public_id.to_string())
}

/// The bodies of the text messages in a room's event cache, oldest first.
async fn cached_bodies(room: &Room) -> Result<Vec<String>> {
    let (cache, _handles) = room.event_cache().await.context("the room's event cache")?;
    let mut bodies = Vec::new();
    for ev in cache.events().await.context("cached events")? {
        if let Ok(AnySyncTimelineEvent::MessageLike(AnySyncMessageLikeEvent::RoomMessage(
            SyncMessageLikeEvent::Original(m),
        ))) = ev.raw().deserialize()
        {
            bodies.push(m.content.body().to_owned());
        }
    }
    Ok(bodies)
}

/// Whether `me`'s join to the room is in its event cache (it came by sync).
async fn has_own_join(room: &Room, me: &UserId) -> Result<bool> {
    let (cache, _handles) = room.event_cache().await.context("the room's event cache")?;
    Ok(cache
        .events()
        .await
        .context("cached events")?
        .iter()
        .any(|ev| {
            matches!(
                ev.raw().deserialize(),
                Ok(AnySyncTimelineEvent::State(AnySyncStateEvent::RoomMember(
                    SyncStateEvent::Original(m)
                ))) if m.state_key == me && m.content.membership == MembershipState::Join
            )
        }))
}

/// Pages a room's event cache back to the start of what Bob may see.
async fn paginate_to_start(room: &Room) -> Result<()> {
    let (cache, _handles) = room.event_cache().await.context("the room's event cache")?;
    for _ in 0..ROUNDS {
        let outcome = cache
            .pagination()
            .run_backwards_until(50)
            .await
            .context("paginating back")?;
        if outcome.reached_start {
            return Ok(());
        }
    }
    bail!("never reached the start of {}", room.room_id())
}

async fn history(
    homeserver: &str,
    alice_user: &str,
    alice_pw: &str,
    bob_user: &str,
    bob_pw: &str,
) -> Result<String> {
    let (alice, _) = login(homeserver, alice_user, alice_pw, "ALICEHIST").await?;
    let (bob, _) = login(homeserver, bob_user, bob_pw, "BOBHIST").await?;
    bob.event_cache()
        .subscribe()
        .context("subscribing the event cache")?;
    let visibility = |v: HistoryVisibility| {
        vec![
            InitialStateEvent::with_empty_state_key(RoomHistoryVisibilityEventContent::new(v))
                .to_raw_any(),
        ]
    };
    let early = ["early one", "early two", "early three"];
    let shared = room_with_invite(
        &alice,
        &bob,
        "shared history",
        visibility(HistoryVisibility::Shared),
        &early,
    )
    .await?;
    let secret = "before bob joined";
    let joined = room_with_invite(
        &alice,
        &bob,
        "joined history",
        visibility(HistoryVisibility::Joined),
        &[secret],
    )
    .await?;
    let bob_id = bob.user_id().context("bob's user id")?.to_owned();
    for room_id in [&shared, &joined] {
        bob.join_room_by_id(room_id).await.context("bob joining")?;
    }
    // The client marks a room joined as soon as the join request returns: sync
    // until the join itself arrives.
    let shared_room = bob.get_room(&shared).context("the shared room")?;
    for _ in 0..ROUNDS {
        if has_own_join(&shared_room, &bob_id).await? {
            break;
        }
        bob.sync_once(settings()).await.context("bob syncing")?;
    }
    ensure!(
        has_own_join(&shared_room, &bob_id).await?,
        "bob's join never arrived through sync"
    );

    // The sync that brought the join carries the recent history Bob may see.
    let synced = cached_bodies(&shared_room).await?;
    ensure!(
        synced.iter().any(|b| b == "early three"),
        "the first sync after joining carried no earlier message: {synced:?}"
    );
    paginate_to_start(&shared_room).await?;
    let all = cached_bodies(&shared_room).await?;
    ensure!(
        all == early,
        "paginating the shared room gave {all:?}, not {early:?}"
    );

    let joined_room = bob.get_room(&joined).context("the joined room")?;
    paginate_to_start(&joined_room).await?;
    let all = cached_bodies(&joined_room).await?;
    ensure!(
        !all.iter().any(|b| b == secret),
        "history from before the join leaked: {all:?}"
    );
    Ok(shared.to_string())
}

#[tokio::main]
async fn main() {
    match run().await {
        Ok(line) => println!("{line}"),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(1);
        }
    }
}

//! Application services (spec: "Application Service API"): the registrations
//! loaded at start, appservice authentication and masquerading on the
//! Client-Server API, the events queued for them in the writing transaction,
//! and the user and alias queries made when a client touches an unknown ID in
//! a namespace. The delivery worker is [`sender`].

pub mod ephemeral;
pub mod sender;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, RwLock},
    time::{Duration, Instant},
};

use anyhow::Context;
use ruma::{
    OwnedDeviceId, OwnedRoomId, RoomAliasId, RoomId, UserId, room_version_rules::RoomVersionRules,
};
use serde_json::{Map, Value};

use super::session::{self, Issued, Session};
use crate::{
    config::Config,
    domain::{
        appservice::{self, Registration, Registry},
        localpart, pdu, token,
    },
    error::{Error, ErrorKind, Result},
    outbound::{self, OutboundClient, OutboundPolicy},
    service::AppState,
    storage::{self, Postgres, Transaction, profiles, users},
};

/// A value replaced whole on reload (the registrations, their HTTP
/// clients): readers take the current `Arc` and keep using it, a reload
/// swaps in a new one.
pub struct Live<T>(RwLock<Arc<T>>);

impl<T> Live<T> {
    pub fn new(value: T) -> Self {
        Self(RwLock::new(Arc::new(value)))
    }

    pub fn current(&self) -> Arc<T> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn replace(&self, value: T) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(value);
    }
}

/// Reads and validates every registration file the configuration lists.
pub fn load(config: &Config) -> anyhow::Result<Registry> {
    load_files(&config.appservices, &config.server_name())
}

/// Reads and validates registration files: each on its own (errors name the
/// file and the field), then against each other (IDs, tokens and senders
/// unique).
fn load_files(
    paths: &[std::path::PathBuf],
    server_name: &ruma::ServerName,
) -> anyhow::Result<Registry> {
    let mut list = Vec::new();
    for path in paths {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading appservice registration {}", path.display()))?;
        let reg = appservice::parse(path, &text, server_name, token::hash)
            .map_err(|e| anyhow::anyhow!(e))?;
        list.push((path.display().to_string(), reg));
    }
    let registry = Registry::from_list(list).map_err(|e| anyhow::anyhow!(e))?;
    for reg in &registry.list {
        tracing::info!(id = %reg.id, sender = %reg.sender, "application service registered");
    }
    Ok(registry)
}

/// Reloads the registrations (SIGHUP): `paths` are the files the
/// configuration lists now. Every file is validated first; on any error the
/// registrations in use stay as they are and the error (naming the file and
/// the field) is returned. Otherwise the new set replaces the old one at
/// once, new senders are created, and the delivery workers restart with it
/// (a transaction in flight is sent again, under the same ID).
pub async fn reload(app: &AppState, paths: &[std::path::PathBuf]) -> anyhow::Result<()> {
    let registry = load_files(paths, &app.server_name)?;
    let clients = Clients::new(&app.config, &registry)?;
    let count = registry.list.len();
    app.appservices.replace(registry);
    app.appservice_http.replace(clients);
    // The workers restart with the new set whatever happens next: they must
    // not keep an old URL or `hs_token` because a sender could not be made.
    app.appservice_reloaded.send_modify(|n| *n += 1);
    create_senders(app).await?;
    tracing::info!(
        appservices = count,
        "application service registrations reloaded"
    );
    Ok(())
}

/// Creates each appservice's sender user if it does not exist yet (it exists
/// implicitly, as the spec says).
pub async fn create_senders(app: &AppState) -> anyhow::Result<()> {
    for reg in &app.appservices.current().list {
        let mut tx = app.db.begin().await?;
        if users::insert(
            &mut *tx,
            reg.sender.as_str(),
            None,
            false,
            false,
            app.clock.now_ms(),
        )
        .await?
        {
            profiles::set_displayname(&mut *tx, reg.sender.as_str(), Some(reg.sender.localpart()))
                .await?;
            tracing::info!(user = %reg.sender, "created the appservice sender user");
        }
        tx.commit().await?;
    }
    Ok(())
}

/// The session of a request made with an appservice's `as_token`, or `None`
/// when the token is no appservice's. The user is `user_id` (the query
/// parameter) when given, else the appservice's sender; it must be in the
/// appservice's user namespace (`403 M_FORBIDDEN`) and registered.
pub async fn authenticate(
    app: &AppState,
    token_hash: &[u8; 32],
    user_id: Option<&str>,
    device_id: Option<&str>,
) -> Result<Option<Session>> {
    let Some(reg) = app.appservices.current().by_token(token_hash) else {
        return Ok(None);
    };
    let user_id = match user_id {
        None => reg.sender.clone(),
        Some(id) => {
            UserId::parse(id).map_err(|_| Error::invalid_param("user_id is not a valid user ID"))?
        }
    };
    if user_id.server_name() != app.server_name || !reg.may_act_as(user_id.as_str()) {
        return Err(Error::forbidden(
            "Application service cannot masquerade as this user",
        ));
    }
    let Some(user) = users::get(&app.db, user_id.as_str()).await? else {
        return Err(Error::forbidden(
            "Application service has not registered this user",
        ));
    };
    if user.deactivated {
        return Err(Error::forbidden("This user has been deactivated"));
    }
    // A device of the user's (MSC3202 device masquerading) when it exists;
    // otherwise the appservice acts through a device ID of its own.
    let device_id: OwnedDeviceId = match device_id {
        Some(d)
            if storage::devices::get(&app.db, user_id.as_str(), d)
                .await?
                .is_some() =>
        {
            d.into()
        }
        Some(_) => return Err(Error::forbidden("Unknown device for this user")),
        None => format!("AS_{}", reg.id).into(),
    };
    Ok(Some(Session {
        user_id,
        device_id,
        is_admin: user.is_admin,
        is_guest: false,
        appservice: Some(reg),
    }))
}

/// `POST /register` with `type: m.login.application_service`: a user in the
/// appservice's namespace, without UIA or password.
#[allow(clippy::too_many_arguments)]
pub async fn register(
    app: &AppState,
    reg: &Registration,
    username: Option<&str>,
    device_id: Option<OwnedDeviceId>,
    display_name: Option<&str>,
    inhibit_login: bool,
    refreshable: bool,
    ip: Option<&str>,
) -> Result<(ruma::OwnedUserId, Option<Issued>)> {
    let username =
        username.ok_or_else(|| Error::new(ErrorKind::MissingParam, "A username is required"))?;
    let user_id = localpart::new_user_id(username, &app.server_name)
        .map_err(|e| Error::new(ErrorKind::InvalidUsername, e.to_string()))?;
    if !reg.may_act_as(user_id.as_str()) {
        return Err(Error::new(
            ErrorKind::Exclusive,
            "User ID is not in this application service's namespace",
        ));
    }
    let mut tx = app.db.begin().await?;
    if !users::insert(
        &mut *tx,
        user_id.as_str(),
        None,
        false,
        false,
        app.clock.now_ms(),
    )
    .await?
    {
        return Err(Error::new(ErrorKind::UserInUse, "User ID already taken"));
    }
    profiles::set_displayname(&mut *tx, user_id.as_str(), Some(user_id.localpart())).await?;
    let tokens = if inhibit_login {
        None
    } else {
        Some(
            session::issue(
                &mut tx,
                app,
                &user_id,
                device_id,
                display_name,
                refreshable,
                ip,
            )
            .await?,
        )
    };
    tx.commit().await?;
    tracing::info!(user_id = %user_id, appservice = %reg.id, "appservice registered a user");
    Ok((user_id, tokens))
}

/// `POST /login` with `m.login.application_service`: a new device (and token)
/// for a registered user of the appservice's namespace.
pub async fn login(
    app: &AppState,
    reg: &Registration,
    user_id: &UserId,
    device_id: Option<OwnedDeviceId>,
    display_name: Option<&str>,
    refreshable: bool,
    ip: Option<&str>,
) -> Result<Issued> {
    if !reg.may_act_as(user_id.as_str()) {
        return Err(Error::new(
            ErrorKind::Exclusive,
            "User ID is not in this application service's namespace",
        ));
    }
    if users::get(&app.db, user_id.as_str())
        .await?
        .is_none_or(|u| u.deactivated)
    {
        return Err(Error::forbidden("Unknown or deactivated user"));
    }
    let mut tx = app.db.begin().await?;
    let issued = session::issue(
        &mut tx,
        app,
        user_id,
        device_id,
        display_name,
        refreshable,
        ip,
    )
    .await?;
    tx.commit().await?;
    Ok(issued)
}

/// `M_EXCLUSIVE` when an appservice claims the user ID and the request is
/// not that appservice's.
pub fn check_user_not_claimed(
    app: &AppState,
    user_id: &UserId,
    requester: Option<&Registration>,
) -> Result<()> {
    match app
        .appservices
        .current()
        .exclusive_user_owner(user_id.as_str())
    {
        Some(owner) if requester.is_none_or(|r| r.id != owner.id) => Err(Error::new(
            ErrorKind::Exclusive,
            "This user ID is reserved by an application service",
        )),
        _ => Ok(()),
    }
}

/// `M_EXCLUSIVE` when an alias is another appservice's (or, for an
/// appservice, outside its own namespace).
pub fn check_alias_allowed(
    app: &AppState,
    alias: &str,
    requester: Option<&Registration>,
) -> Result<()> {
    if let Some(reg) = requester
        && !reg.is_interested_in_alias(alias)
    {
        return Err(Error::new(
            ErrorKind::Exclusive,
            "This application service has not reserved this kind of alias",
        ));
    }
    match app.appservices.current().exclusive_alias_owner(alias) {
        Some(owner) if requester.is_none_or(|r| r.id != owner.id) => Err(Error::new(
            ErrorKind::Exclusive,
            "This alias is reserved by an application service",
        )),
        _ => Ok(()),
    }
}

/// Queues a newly written event for every appservice interested in it (spec:
/// its sender or a member event's target is in a user namespace, the room ID
/// or one of its aliases is in a namespace, or a member of the room — joined
/// or invited — is in a user namespace), in the writing transaction.
pub async fn enqueue(
    tx: &mut Transaction<'_, Postgres>,
    app: &AppState,
    rules: &RoomVersionRules,
    room_id: &RoomId,
    event_id: &str,
    json: &str,
    event: &pdu::Pdu,
) -> Result<()> {
    if event.kind == ruma::events::TimelineEventType::RoomMember
        && let Some(target) = event.state_key.as_deref()
        && serde_json::from_str::<Value>(event.content.get())
            .is_ok_and(|c| matches!(c["membership"].as_str(), Some("leave" | "ban")))
    {
        ephemeral::on_leave(tx, app, room_id.as_str(), target).await?;
    }
    let registry = app.appservices.current();
    let candidates: Vec<&Arc<Registration>> =
        registry.list.iter().filter(|r| r.url.is_some()).collect();
    if candidates.is_empty() {
        return Ok(());
    }
    let mut chosen = Vec::new();
    let mut undecided = Vec::new();
    for reg in candidates {
        let direct = reg.is_interested_in_user(event.sender.as_str())
            || event
                .state_key
                .as_deref()
                .is_some_and(|k| k.starts_with('@') && reg.is_interested_in_user(k))
            || reg.is_interested_in_room(room_id.as_str());
        if direct {
            chosen.push(reg.id.clone());
        } else {
            undecided.push(reg);
        }
    }
    if !undecided.is_empty() {
        let members = storage::appservice::local_members(&mut **tx, room_id.as_str()).await?;
        let aliases = storage::rooms::aliases_of(&mut **tx, room_id.as_str()).await?;
        for reg in undecided {
            if members.iter().any(|m| reg.is_interested_in_user(m))
                || aliases.iter().any(|a| reg.is_interested_in_alias(a))
            {
                chosen.push(reg.id.clone());
            }
        }
    }
    if chosen.is_empty() {
        return Ok(());
    }
    let client = pdu::to_client_event(
        event_id,
        room_id.as_str(),
        json,
        rules,
        false,
        None,
        ruma::MilliSecondsSinceUnixEpoch::now(),
    );
    let mut client = client;
    // `age` is relative to the moment it is read: not meaningful in a queue.
    if let Some(unsigned) = client.get_mut("unsigned").and_then(|u| u.as_object_mut()) {
        unsigned.remove("age");
    }
    storage::appservice::enqueue(&mut **tx, &chosen, event_id, &client.to_string()).await?;
    Ok(())
}

/// The HTTP client for one appservice: the federation address policy, plus
/// the registration's own host, trusted because the administrator configured
/// it (appservices usually live on loopback or a private network). No
/// redirect is followed.
fn client_for(config: &Config, reg: &Registration) -> anyhow::Result<OutboundClient> {
    let mut policy = OutboundPolicy::federation(config);
    if let Some(host) = reg.url.as_ref().and_then(|u| u.host_str()) {
        policy = policy.trusting_host(host);
    }
    OutboundClient::new(
        policy,
        &outbound::Options {
            connect_timeout: Duration::from_secs(10),
            timeout: Duration::from_secs(60),
            https_only: false,
            extra_ca_files: config.extra_ca_files(),
            accept_invalid_certs: false,
            user_agent: concat!("Lattice/", env!("CARGO_PKG_VERSION")).into(),
        },
    )
}

/// The appservices' HTTP clients (built once, at start), and the protocol
/// metadata they answered, kept for [`PROTOCOL_CACHE`].
pub struct Clients {
    clients: HashMap<String, Arc<OutboundClient>>,
    protocols: Mutex<HashMap<(String, String), (Instant, Value)>>,
}

/// How long an appservice's answer about a protocol is reused (as Synapse
/// caches it): clients ask for `/thirdparty/protocols` on every start.
pub const PROTOCOL_CACHE: Duration = Duration::from_secs(5 * 60);

impl Clients {
    pub fn new(config: &Config, registry: &Registry) -> anyhow::Result<Self> {
        let mut clients = HashMap::new();
        for reg in &registry.list {
            if reg.url.is_some() {
                clients.insert(reg.id.clone(), Arc::new(client_for(config, reg)?));
            }
        }
        Ok(Self {
            clients,
            protocols: Mutex::default(),
        })
    }

    pub fn get(&self, id: &str) -> Option<Arc<OutboundClient>> {
        self.clients.get(id).cloned()
    }
}

/// `{url}/_matrix/app/v1/{segments…}` (the registration's URL may have a
/// path), each segment percent-encoded.
pub fn endpoint(reg: &Registration, segments: &[&str]) -> Option<reqwest::Url> {
    let mut url = reg.url.clone()?;
    {
        let mut path = url.path_segments_mut().ok()?;
        path.pop_if_empty()
            .extend(["_matrix", "app", "v1"])
            .extend(segments);
    }
    Some(url)
}

/// Puts the appservice's `hs_token` on a request to it: the `Authorization`
/// header, and with `appservice_legacy_authorization` the `access_token`
/// query parameter too.
pub fn authorize(
    request: &mut reqwest::Request,
    reg: &Registration,
    legacy: bool,
) -> anyhow::Result<()> {
    request.headers_mut().insert(
        http::header::AUTHORIZATION,
        format!("Bearer {}", reg.hs_token)
            .parse()
            .map_err(|_| anyhow::anyhow!("hs_token is not a header value"))?,
    );
    if legacy {
        request
            .url_mut()
            .query_pairs_mut()
            .append_pair("access_token", &reg.hs_token);
    }
    Ok(())
}

/// A `GET` to an appservice with its `hs_token`: the answer, or `None` (and a
/// log line) when it could not be had.
async fn get(
    app: &AppState,
    reg: &Registration,
    segments: &[&str],
    query: &[(String, String)],
) -> Option<reqwest::Response> {
    let path = segments.join("/");
    let mut url = endpoint(reg, segments)?;
    if !query.is_empty() {
        url.query_pairs_mut().extend_pairs(query);
    }
    let client = app.appservice_http.current().get(&reg.id)?;
    let mut request = reqwest::Request::new(http::Method::GET, url);
    *request.timeout_mut() = Some(super::directory::query_timeout(app));
    authorize(
        &mut request,
        reg,
        app.config.appservice_legacy_authorization,
    )
    .ok()?;
    match client.send(request).await {
        Ok(response) => Some(response),
        Err(e) => {
            tracing::info!(appservice = %reg.id, "appservice query {path} failed: {e}");
            None
        }
    }
}

/// A query to an appservice (`GET /users/{userId}`, `/rooms/{alias}`):
/// whether it answered 2xx. Failures count as "no".
async fn query(app: &AppState, reg: &Registration, segments: &[&str]) -> bool {
    get(app, reg, segments, &[])
        .await
        .is_some_and(|r| r.status().is_success())
}

/// A JSON answer (at most 1 MiB) to a `GET`, when 2xx.
async fn get_json(
    app: &AppState,
    reg: &Registration,
    segments: &[&str],
    query: &[(String, String)],
) -> Option<Value> {
    let response = get(app, reg, segments, query).await?;
    if !response.status().is_success() {
        return None;
    }
    let body = outbound::read_limited(response, 1024 * 1024).await.ok()?;
    serde_json::from_slice(&body).ok()
}

/// `GET /thirdparty/protocols` (or one protocol): each appservice's answer
/// for each protocol it registered, the first answer's fields with every
/// answer's `instances` (an instance with a `network_id` gets the
/// `instance_id` `{appservice}|{network}` the room directory takes).
pub async fn protocols(app: &AppState, only: Option<&str>) -> Map<String, Value> {
    let mut out = Map::new();
    for reg in &app.appservices.current().list {
        for protocol in &reg.protocols {
            if only.is_some_and(|p| p != protocol) {
                continue;
            }
            let Some(mut info) = protocol_of(app, reg, protocol).await else {
                continue;
            };
            if let Some(instances) = info["instances"].as_array_mut() {
                for instance in instances.iter_mut() {
                    if let Some(network) = instance["network_id"].as_str() {
                        instance["instance_id"] = format!("{}|{network}", reg.id).into();
                    }
                }
            }
            match out.get_mut(protocol) {
                None => {
                    out.insert(protocol.clone(), info);
                }
                Some(merged) => {
                    let more = info["instances"].as_array().cloned().unwrap_or_default();
                    if let Some(list) = merged["instances"].as_array_mut() {
                        list.extend(more);
                    }
                }
            }
        }
    }
    out
}

async fn protocol_of(app: &AppState, reg: &Registration, protocol: &str) -> Option<Value> {
    let key = (reg.id.clone(), protocol.to_owned());
    if let Some((at, info)) = app
        .appservice_http
        .current()
        .protocols
        .lock()
        .ok()?
        .get(&key)
        && at.elapsed() < PROTOCOL_CACHE
    {
        return Some(info.clone());
    }
    let info = get_json(app, reg, &["thirdparty", "protocol", protocol], &[]).await?;
    // Valid metadata has a list of instances.
    if !info.is_object() || !info["instances"].is_array() {
        return None;
    }
    if let Ok(mut cache) = app.appservice_http.current().protocols.lock() {
        cache.insert(key, (Instant::now(), info.clone()));
    }
    Some(info)
}

/// `GET /thirdparty/{user|location}/{protocol}` (and the reverse lookups
/// without a protocol): every answering appservice's results, concatenated;
/// results without their key field (`userid`, `alias`) are dropped.
pub async fn third_party_lookup(
    app: &AppState,
    kind: &str,
    protocol: Option<&str>,
    query: &[(String, String)],
) -> Vec<Value> {
    let key = if kind == "user" { "userid" } else { "alias" };
    let mut out = Vec::new();
    for reg in &app.appservices.current().list {
        let mut segments = vec!["thirdparty", kind];
        match protocol {
            Some(p) if reg.protocols.iter().any(|q| q == p) => segments.push(p),
            Some(_) => continue,
            None if reg.protocols.is_empty() => continue,
            None => {}
        }
        let Some(Value::Array(results)) = get_json(app, reg, &segments, query).await else {
            continue;
        };
        out.extend(
            results
                .into_iter()
                .filter(|r| r[key].is_string() && r["protocol"].is_string()),
        );
    }
    out
}

/// Whether a local user exists, asking the appservices whose user namespace
/// covers it first when it does not (`GET /_matrix/app/v1/users/{userId}`).
/// An appservice that answers 2xx has the user: it is created if the
/// appservice did not register it meanwhile.
pub async fn user_exists(app: &AppState, user_id: &UserId) -> Result<bool> {
    if users::exists(&app.db, user_id.as_str()).await? {
        return Ok(true);
    }
    if user_id.server_name() != app.server_name {
        return Ok(false);
    }
    for reg in app.appservices.current().user_queriers(user_id.as_str()) {
        if query(app, &reg, &["users", user_id.as_str()]).await {
            let mut tx = app.db.begin().await?;
            if users::insert(
                &mut *tx,
                user_id.as_str(),
                None,
                false,
                false,
                app.clock.now_ms(),
            )
            .await?
            {
                profiles::set_displayname(&mut *tx, user_id.as_str(), Some(user_id.localpart()))
                    .await?;
            }
            tx.commit().await?;
            return Ok(true);
        }
    }
    Ok(false)
}

/// The room of a local alias nobody created yet, asking the appservices
/// whose alias namespace covers it (`GET /_matrix/app/v1/rooms/{alias}`): one
/// that answers 2xx has created it meanwhile.
pub async fn query_alias(app: &AppState, alias: &RoomAliasId) -> Result<Option<OwnedRoomId>> {
    for reg in app.appservices.current().alias_queriers(alias.as_str()) {
        if query(app, &reg, &["rooms", alias.as_str()]).await
            && let Some(room) = super::directory::resolve_local(app, alias.as_str()).await?
        {
            return Ok(Some(room));
        }
    }
    Ok(None)
}

/// Adds a room to (or removes it from) one of the appservice's room
/// directory lists, shown by `/publicRooms` with `third_party_instance_id`
/// `{appservice}|{network}` or `include_all_networks`.
pub async fn set_listed(
    app: &AppState,
    reg: &Registration,
    network_id: &str,
    room_id: &RoomId,
    listed: bool,
) -> Result<()> {
    if listed
        && storage::rooms::get(&app.db, room_id.as_str())
            .await?
            .is_none()
    {
        return Err(Error::not_found("Unknown room"));
    }
    storage::appservice::set_listed(&app.db, &reg.id, network_id, room_id.as_str(), listed).await?;
    Ok(())
}

/// `POST /appservice/{id}/ping`: the homeserver calls the appservice's
/// `POST /_matrix/app/v1/ping` and reports how long it took, or why it failed
/// (`M_URL_NOT_SET`, `M_BAD_STATUS`, `M_CONNECTION_FAILED`,
/// `M_CONNECTION_TIMEOUT`).
pub async fn ping(
    app: &AppState,
    reg: &Registration,
    transaction_id: Option<&str>,
) -> Result<Duration> {
    let remote = |status: http::StatusCode, errcode: &str, message: String| {
        Error::new(
            ErrorKind::Remote {
                status,
                errcode: errcode.to_owned(),
            },
            message,
        )
    };
    let (Some(url), Some(client)) = (
        endpoint(reg, &["ping"]),
        app.appservice_http.current().get(&reg.id),
    ) else {
        return Err(remote(
            http::StatusCode::BAD_REQUEST,
            "M_URL_NOT_SET",
            "The application service has no URL".into(),
        ));
    };
    let mut body = serde_json::json!({});
    if let Some(id) = transaction_id {
        body["transaction_id"] = id.into();
    }
    let mut request = reqwest::Request::new(http::Method::POST, url);
    *request.timeout_mut() = Some(Duration::from_secs(30));
    authorize(
        &mut request,
        reg,
        app.config.appservice_legacy_authorization,
    )?;
    request.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    *request.body_mut() = Some(body.to_string().into());
    let started = Instant::now();
    match client.send(request).await {
        Ok(response) if response.status().is_success() => Ok(started.elapsed()),
        Ok(response) => Err(remote(
            http::StatusCode::BAD_GATEWAY,
            "M_BAD_STATUS",
            format!("The application service answered {}", response.status()),
        )),
        Err(e) if e.to_string().contains("timed out") => Err(remote(
            http::StatusCode::GATEWAY_TIMEOUT,
            "M_CONNECTION_TIMEOUT",
            "The application service did not answer in time".into(),
        )),
        Err(e) => Err(remote(
            http::StatusCode::BAD_GATEWAY,
            "M_CONNECTION_FAILED",
            format!("The application service could not be reached: {e}"),
        )),
    }
}

/// The admin API's view of the appservices: each registration (tokens left
/// out) with its queue — events waiting, the transaction in flight — and the
/// events delivered and transactions failed since start — and the queues
/// kept for appservices no longer registered.
pub async fn admin_list(app: &AppState) -> Result<Value> {
    let registry = app.appservices.current();
    let queues = storage::appservice::queue_states(&app.db).await?;
    let namespaces = |list: &[appservice::Namespace]| -> Vec<Value> {
        list.iter()
            .map(|n| serde_json::json!({ "regex": n.source(), "exclusive": n.exclusive }))
            .collect()
    };
    let mut out = Vec::new();
    for reg in &registry.list {
        let queue = queues.iter().find(|q| q.appservice_id == reg.id);
        let (sent, failures) = app.metrics.appservice_counts(&reg.id);
        out.push(serde_json::json!({
            "id": reg.id,
            "url": reg.url.as_ref().map(|u| u.as_str()),
            "sender": reg.sender,
            "rate_limited": reg.rate_limited,
            "receive_ephemeral": reg.receive_ephemeral,
            "push_ephemeral": reg.ephemeral_legacy,
            "org.matrix.msc3202": reg.msc3202,
            "protocols": reg.protocols,
            "namespaces": {
                "users": namespaces(&reg.users),
                "aliases": namespaces(&reg.aliases),
                "rooms": namespaces(&reg.rooms),
            },
            "queue": {
                "events": queue.map_or(0, |q| q.queued),
                "transaction_in_flight": queue.and_then(|q| q.open_txn_id).map(|id| serde_json::json!({
                    "txn_id": id.to_string(),
                    "events": queue.map_or(0, |q| q.open_txn_events),
                })),
                "events_delivered": sent,
                "failed_transactions": failures,
            },
        }));
    }
    // Rows queued for an appservice whose registration was since removed
    // (reload or restart): kept, and sent if a registration with that `id`
    // comes back; listed so that an administrator sees them.
    let unregistered: Vec<Value> = queues
        .iter()
        .filter(|q| !registry.list.iter().any(|r| r.id == q.appservice_id))
        .map(|q| serde_json::json!({ "id": q.appservice_id, "events": q.queued }))
        .collect();
    Ok(serde_json::json!({
        "appservices": out,
        "total": out.len(),
        "unregistered_queues": unregistered,
    }))
}

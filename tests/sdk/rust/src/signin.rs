//! Signing in and managing addresses through matrix-rust-sdk's own methods:
//! SSO (`MatrixAuth::login_sso`, whose local callback server receives the
//! `loginToken`), token login (`login_token`, with tokens from
//! `POST /login/get_token`, MSC3882), and email (`Account`'s 3PID methods,
//! registration's `m.login.email.identity` stage, a password reset).
//!
//! Where a person's browser takes part (the identity provider's pages, the
//! link in a mail), the client asks the test: it prints one line naming the
//! step (`sso-url <url>`, `mail <purpose>`) and, for mails, waits for one
//! line on stdin once the test has acted.
//!
//! The last line is the outcome: `ok <user id> <device id> ...` or, when the
//! server refused a login, `refused <errcode>`.

use std::io::BufRead;

use anyhow::{Context, Result, bail, ensure};
use matrix_sdk::{
    Client, HttpError, RoomState,
    ruma::{
        ClientSecret, OwnedClientSecret, SessionId,
        api::client::{
            account::{
                ThirdPartyIdRemovalStatus, register::v3::Request as RegistrationRequest,
                request_password_change_token_via_email, request_registration_token_via_email,
            },
            room::create_room::v3::Request as CreateRoom,
            session::{get_login_token, get_login_types::v3::LoginType},
            uiaa::{AuthData, AuthType, MatrixUserIdentifier, Password, UserIdentifier},
        },
        events::room::message::RoomMessageEventContent,
        thirdparty::Medium,
        uint,
    },
    utils::local_server::{LocalServerBuilder, LocalServerIpAddress},
};

use crate::{saw, sync_until, watch};

/// The errcode of a server's refusal, from a plain error body or from a
/// user-interactive authentication answer's `errcode`.
trait Errcode: std::fmt::Display {
    fn errcode(&self) -> Option<String>;
}

impl Errcode for HttpError {
    fn errcode(&self) -> Option<String> {
        if let Some(kind) = self.client_api_error_kind() {
            return Some(kind.errcode().to_string());
        }
        self.as_uiaa_response()
            .and_then(|info| info.auth_error.as_ref())
            .map(|body| body.kind.errcode().to_string())
    }
}

impl Errcode for matrix_sdk::Error {
    fn errcode(&self) -> Option<String> {
        match self {
            matrix_sdk::Error::Http(http) => http.errcode(),
            _ => None,
        }
    }
}

/// The errcode of a request that must fail.
fn refused<T: std::fmt::Debug, E: Errcode>(result: Result<T, E>, what: &str) -> Result<String> {
    match result {
        Ok(ok) => bail!("{what} succeeded: {ok:?}"),
        Err(e) => e
            .errcode()
            .with_context(|| format!("{what} failed without an errcode: {e}")),
    }
}

/// A login's outcome: the refusal's errcode, or the error.
fn login_refused(e: matrix_sdk::Error, what: &str) -> Result<String> {
    match e.errcode() {
        Some(code) => Ok(format!("refused {code}")),
        None => Err(e).context(what.to_owned()),
    }
}

/// Prints `line` for the test and waits for its answer.
async fn ask(line: String) -> Result<String> {
    println!("{line}");
    tokio::task::spawn_blocking(|| {
        let mut answer = String::new();
        std::io::stdin().lock().read_line(&mut answer)?;
        ensure!(!answer.is_empty(), "stdin closed before the test answered");
        Ok(answer.trim().to_owned())
    })
    .await?
}

async fn client(homeserver: &str) -> Result<Client> {
    Client::builder()
        .homeserver_url(homeserver)
        .build()
        .await
        .context("building the client")
}

/// Proves a fresh login works: syncs, creates a room, sends a message and
/// syncs until it comes back. Returns `<user id> <device id>`.
async fn prove_session(client: &Client) -> Result<String> {
    let seen = watch(client).await?;
    let me = client
        .user_id()
        .context("no user ID after login")?
        .to_owned();
    let device = client.device_id().context("no device ID after login")?;
    let room = client
        .create_room(CreateRoom::new())
        .await
        .context("creating a room")?;
    let room_id = room.room_id().to_owned();
    let body = format!("signed in on {device}");
    room.send(RoomMessageEventContent::text_plain(&body))
        .await
        .context("sending")?;
    sync_until(client, "the message", || saw(&seen, &room_id, &me, &body)).await?;
    ensure!(
        room.state() == RoomState::Joined,
        "not joined to the room it made"
    );
    Ok(format!("{me} {device}"))
}

/// `sso <idp|-> <port> <device>`: the SDK's whole SSO login. It reads the
/// login flows (checking the provider is offered), starts its callback
/// server on `127.0.0.1:<port>`, builds the redirect URL (for the provider,
/// or the server's choice page with `-`), prints it as `sso-url <url>` for
/// the test to open in a browser, and logs in with the `loginToken` the
/// browser brings to its callback server.
pub async fn sso(homeserver: &str, idp: &str, port: u16, device: &str) -> Result<String> {
    let client = client(homeserver).await?;
    let auth = client.matrix_auth();
    let types = auth.get_login_types().await.context("GET /login")?;
    let providers: Vec<String> = types
        .flows
        .iter()
        .find_map(|flow| match flow {
            LoginType::Sso(sso) => Some(sso.identity_providers.iter().map(|p| p.id.clone())),
            _ => None,
        })
        .context("no m.login.sso flow")?
        .collect();
    ensure!(
        types.flows.iter().any(|f| matches!(f, LoginType::Token(_))),
        "no m.login.token flow beside SSO: {:?}",
        types.flows
    );
    let server = LocalServerBuilder::new()
        .ip_address(LocalServerIpAddress::Localhostv4)
        .port_range(port..port + 1);
    let mut login = auth
        .login_sso(|url| async move {
            println!("sso-url {url}");
            Ok(())
        })
        .server_builder(server)
        .device_id(device)
        .initial_device_display_name("rust-sdk sso");
    if idp != "-" {
        ensure!(
            providers.iter().any(|p| p == idp),
            "{idp} is not among the providers {providers:?}"
        );
        login = login.identity_provider_id(idp);
    }
    if let Err(e) = login.send().await {
        return login_refused(e, "SSO login");
    }
    Ok(format!("ok {}", prove_session(&client).await?))
}

/// `token <login token> <device>`: a login with a token given by hand (a
/// replayed or forged one, in the tests).
pub async fn token(homeserver: &str, token: &str, device: &str) -> Result<String> {
    let client = client(homeserver).await?;
    match client
        .matrix_auth()
        .login_token(token)
        .device_id(device)
        .send()
        .await
    {
        Ok(_) => Ok(format!("ok {}", prove_session(&client).await?)),
        Err(e) => login_refused(e, "token login"),
    }
}

fn password(user: &str, password: &str, session: Option<String>) -> AuthData {
    let mut auth = Password::new(
        UserIdentifier::Matrix(MatrixUserIdentifier::new(user.to_owned())),
        password.to_owned(),
    );
    auth.session = session;
    AuthData::Password(auth)
}

fn get_token_request(auth: Option<AuthData>) -> get_login_token::v1::Request {
    let mut request = get_login_token::v1::Request::new();
    request.auth = auth;
    request
}

/// `get-token <user> <pw> <other user> <other pw> <delay ms>`: signing in a
/// second device with a login token (MSC3882), as a device that is signed in
/// hands one to a new one. The signed-in device reads the `m.get_login_token`
/// capability and asks `POST /login/get_token` through the SDK, completing
/// its UIA with the password (first with the other user's, then a wrong one,
/// both refused); the new device logs in with the token after `delay ms` and
/// sends a message the first device sees; the token then is used up.
///
/// Prints `off <errcode>` if the capability is off (and the endpoint refuses),
/// `refused <errcode>` if the new device's login is refused, else
/// `ok <user> <new device> other=<errcode> wrong=<errcode> replay=<errcode>`.
pub async fn get_token(
    homeserver: &str,
    user: &str,
    pw: &str,
    other_user: &str,
    other_pw: &str,
    delay_ms: u64,
) -> Result<String> {
    let (first, first_seen) = crate::login(homeserver, user, pw, "TOKENOLD").await?;
    let me = first.user_id().context("user id")?.to_owned();
    let enabled = first
        .homeserver_capabilities()
        .can_get_login_token()
        .await
        .context("the capabilities")?;
    let asked = first.send(get_token_request(None)).await;
    if !enabled {
        return Ok(format!(
            "off {}",
            refused(asked, "get_token with the capability off")?
        ));
    }
    let uiaa = match asked {
        Ok(_) => bail!("a login token without UIA"),
        Err(e) => e
            .as_uiaa_response()
            .cloned()
            .with_context(|| format!("get_token answered no UIA: {e}"))?,
    };
    ensure!(
        uiaa.flows.iter().any(|f| f.stages == [AuthType::Password]),
        "no password flow: {:?}",
        uiaa.flows
    );
    let session = uiaa.session.context("no UIA session")?;
    let other = refused(
        first
            .send(get_token_request(Some(password(
                other_user,
                other_pw,
                Some(session.clone()),
            ))))
            .await,
        "get_token with another user's password",
    )?;
    let wrong = refused(
        first
            .send(get_token_request(Some(password(
                me.as_str(),
                "not the password",
                Some(session.clone()),
            ))))
            .await,
        "get_token with a wrong password",
    )?;
    let token = first
        .send(get_token_request(Some(password(
            me.as_str(),
            pw,
            Some(session),
        ))))
        .await
        .context("get_token with the password")?
        .login_token;

    tokio::time::sleep(std::time::Duration::from_millis(delay_ms)).await;
    let second = client(homeserver).await?;
    if let Err(e) = second
        .matrix_auth()
        .login_token(&token)
        .device_id("TOKENNEW")
        .initial_device_display_name("rust-sdk by token")
        .send()
        .await
    {
        return login_refused(e, "token login");
    }
    ensure!(
        second.user_id() == Some(&*me),
        "the token logged in {:?}",
        second.user_id()
    );
    let device = second.device_id().context("device id")?.to_owned();
    ensure!(
        Some(&*device) != first.device_id(),
        "the token login reused the device"
    );

    // The new device writes; the first sees it.
    let room = first
        .create_room(CreateRoom::new())
        .await
        .context("creating a room")?;
    let room_id = room.room_id().to_owned();
    crate::watch(&second).await?;
    let joined = second
        .get_room(&room_id)
        .context("the new device does not know the room")?;
    let body = "from the device signed in by token";
    joined
        .send(RoomMessageEventContent::text_plain(body))
        .await
        .context("the new device sending")?;
    sync_until(&first, "the new device's message", || {
        saw(&first_seen, &room_id, &me, body)
    })
    .await?;

    let third = client(homeserver).await?;
    let replay = refused(
        third.matrix_auth().login_token(&token).send().await,
        "a replayed token",
    )?;
    Ok(format!(
        "ok {me} {device} other={other} wrong={wrong} replay={replay}"
    ))
}

fn secret(s: &str) -> Result<OwnedClientSecret> {
    Ok(ClientSecret::parse(s)?)
}

/// The `m.login.email.identity` stage for a validated session. (Its type has
/// no public constructor: built from its JSON form.)
fn email_identity(sid: &SessionId, secret: &ClientSecret, session: Option<&str>) -> AuthData {
    let mut auth = serde_json::json!({
        "type": "m.login.email.identity",
        "threepid_creds": { "sid": sid, "client_secret": secret },
    });
    if let Some(session) = session {
        auth["session"] = session.into();
    }
    serde_json::from_value(auth).expect("a valid email identity stage")
}

async fn addresses(client: &Client) -> Result<Vec<String>> {
    let mut listed: Vec<String> = client
        .account()
        .get_3pids()
        .await
        .context("get_3pids")?
        .threepids
        .into_iter()
        .map(|t| {
            ensure!(t.medium == Medium::Email, "medium {}", t.medium);
            Ok(t.address)
        })
        .collect::<Result<_>>()?;
    listed.sort();
    Ok(listed)
}

/// Adds a validated address with the password stage (the outer error: no
/// UIA was asked for).
async fn add_3pid(
    client: &Client,
    secret: &ClientSecret,
    sid: &SessionId,
    user: &str,
    pw: &str,
) -> Result<Result<(), matrix_sdk::Error>> {
    let account = client.account();
    let session = match account.add_3pid(secret, sid, None).await {
        Ok(_) => bail!("add_3pid without UIA"),
        Err(e) => match e.as_uiaa_response() {
            Some(info) => info.session.clone(),
            None => return Ok(Err(e)),
        },
    };
    Ok(account
        .add_3pid(secret, sid, Some(password(user, pw, session)))
        .await
        .map(|_| ()))
}

/// `email <user> <pw> <address> <second address> <taken address>`: the email
/// life of an account through the SDK.
///
/// 1. Registration: `POST /register/email/requestToken`, `mail register`
///    (the test opens the link), then the SDK's `register` with the
///    `m.login.email.identity` stage; `get_3pids` lists the address.
/// 2. `request_3pid_email_token` for an address another account has: refused.
/// 3. `request_3pid_email_token` for the second address; `mail add-wrong`
///    (the test opens the link with tokens that are not this session's);
///    `add_3pid` is refused. Then `mail add` (the right link): `add_3pid`
///    behind the password adds it; adding it again is refused.
/// 4. `delete_3pid` removes it (`no-support`: no identity server).
/// 5. A forgotten password, on a client that is not logged in:
///    `POST /account/password/email/requestToken`, `mail reset`, then the
///    SDK's `change_password` with the email stage; the new password logs
///    in, the old one no more.
///
/// Prints `ok <user id> taken=<errcode> wrong=<errcode> again=<errcode>
/// old=<errcode>`.
pub async fn email(
    homeserver: &str,
    user: &str,
    pw: &str,
    address: &str,
    second: &str,
    taken: &str,
) -> Result<String> {
    // 1. Registration with the address.
    let client = client(homeserver).await?;
    let reg_secret = secret("rust-sdk-register")?;
    let sid = client
        .send(request_registration_token_via_email::v3::Request::new(
            reg_secret.clone(),
            address.to_owned(),
            uint!(1),
        ))
        .await
        .context("register/email/requestToken")?
        .sid;
    ask("mail register".into()).await?;
    let auth = client.matrix_auth();
    let mut request = RegistrationRequest::new();
    request.username = Some(user.to_owned());
    request.password = Some(pw.to_owned());
    request.initial_device_display_name = Some("rust-sdk email".to_owned());
    let uiaa = match auth.register(request.clone()).await {
        Ok(_) => bail!("registered without UIA"),
        Err(e) => e
            .as_uiaa_response()
            .cloned()
            .with_context(|| format!("POST /register answered no UIA: {e}"))?,
    };
    ensure!(
        uiaa.flows
            .iter()
            .any(|f| f.stages.contains(&AuthType::EmailIdentity)),
        "no email flow: {:?}",
        uiaa.flows
    );
    request.auth = Some(email_identity(&sid, &reg_secret, uiaa.session.as_deref()));
    auth.register(request)
        .await
        .context("registering with the email stage")?;
    let me = client.user_id().context("not logged in")?.to_owned();
    ensure!(me.localpart() == user, "registered as {me}");
    let mut want = vec![address.to_owned()];
    ensure!(
        addresses(&client).await? == want,
        "after registering: {:?}",
        addresses(&client).await?
    );

    // 2. Another account's address.
    let account = client.account();
    let taken_code = refused(
        account
            .request_3pid_email_token(&secret("rust-sdk-taken")?, taken, uint!(1))
            .await,
        "requestToken for another account's address",
    )?;

    // 3. A second address.
    let add_secret = secret("rust-sdk-add")?;
    let added = account
        .request_3pid_email_token(&add_secret, second, uint!(1))
        .await
        .context("request_3pid_email_token")?;
    ask("mail add-wrong".into()).await?;
    let wrong = refused(
        add_3pid(&client, &add_secret, &added.sid, me.as_str(), pw).await?,
        "add_3pid after only wrong tokens",
    )?;
    ensure!(
        addresses(&client).await? == want,
        "a wrong token added the address"
    );
    ask("mail add".into()).await?;
    add_3pid(&client, &add_secret, &added.sid, me.as_str(), pw)
        .await?
        .context("add_3pid")?;
    want.push(second.to_owned());
    want.sort();
    ensure!(
        addresses(&client).await? == want,
        "after add_3pid: {:?}",
        addresses(&client).await?
    );
    let again = refused(
        add_3pid(&client, &add_secret, &added.sid, me.as_str(), pw).await?,
        "add_3pid with a used session",
    )?;

    // 4. Deleting it.
    let removed = account
        .delete_3pid(second, Medium::Email, None)
        .await
        .context("delete_3pid")?;
    ensure!(
        removed.id_server_unbind_result == ThirdPartyIdRemovalStatus::NoSupport,
        "unbind result {:?}",
        removed.id_server_unbind_result
    );
    ensure!(
        addresses(&client).await? == [address.to_owned()],
        "after delete_3pid: {:?}",
        addresses(&client).await?
    );

    // 5. A forgotten password, on a client that is not logged in.
    let forgot = self::client(homeserver).await?;
    let reset_secret = secret("rust-sdk-reset")?;
    let reset = forgot
        .send(request_password_change_token_via_email::v3::Request::new(
            reset_secret.clone(),
            address.to_owned(),
            uint!(1),
        ))
        .await
        .context("account/password/email/requestToken")?;
    ask("mail reset".into()).await?;
    forgot
        .account()
        .change_password(
            "rust-sdk-new-password",
            Some(email_identity(&reset.sid, &reset_secret, None)),
        )
        .await
        .context("change_password with the email stage")?;
    let fresh = self::client(homeserver).await?;
    fresh
        .matrix_auth()
        .login_username(user, "rust-sdk-new-password")
        .send()
        .await
        .context("logging in with the new password")?;
    let old = refused(
        self::client(homeserver)
            .await?
            .matrix_auth()
            .login_username(user, pw)
            .send()
            .await,
        "the old password",
    )?;
    Ok(format!(
        "ok {me} taken={taken_code} wrong={wrong} again={again} old={old}"
    ))
}

//! The mail an email pusher sends (as Synapse's notification mails): the
//! unread notifications grouped by room, each with its sender and text, a
//! link to the client and an unsubscribe link, as plain text and as HTML in
//! which everything taken from events is escaped.

use std::collections::HashMap;

use serde_json::Value;

use super::threepid::render;

/// The placeholders the notification templates may use. In the HTML
/// template every value is HTML-escaped, and `{messages}` is the rooms and
/// messages as escaped HTML.
pub const PLACEHOLDERS: &[&str] = &[
    "app_name",
    "server_name",
    "user_id",
    "address",
    "summary",
    "messages",
    "client_link",
    "unsubscribe_link",
];

/// The longest message text quoted in a mail, in characters.
const MAX_TEXT_CHARS: usize = 500;

/// One notification, described.
#[derive(Clone, Debug)]
pub struct Message {
    /// The sender's display name in the room, else their user ID.
    pub sender: String,
    pub text: String,
}

/// The notifications of one room.
#[derive(Clone, Debug)]
pub struct Room {
    pub name: String,
    pub link: String,
    pub messages: Vec<Message>,
}

/// The notification mail's templates: `notif.txt` (a `Subject: …` line, a
/// blank line, the plain-text body) and `notif.html` (the HTML body).
#[derive(Clone, Debug)]
pub struct Templates {
    pub subject: String,
    pub text: String,
    pub html: String,
}

impl Default for Templates {
    fn default() -> Self {
        Self {
            subject: "[{app_name}] {summary}".into(),
            text: "Hello,\n\n\
                   You have unread notifications on {server_name} ({user_id}):\n\n\
                   {messages}\
                   Open them in your client: {client_link}\n\n\
                   --\n\
                   You receive this mail because you asked for notifications of missed\n\
                   messages by email ({address}). To stop them, open this link:\n\
                   {unsubscribe_link}\n"
                .into(),
            html: "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
                   <title>{summary}</title>\n</head>\n<body>\n\
                   <p>You have unread notifications on {server_name} ({user_id}):</p>\n\
                   {messages}\
                   <p><a href=\"{client_link}\">Open them in your client</a></p>\n\
                   <hr>\n\
                   <p><small>You receive this mail because you asked for notifications of \
                   missed messages by email ({address}). \
                   <a href=\"{unsubscribe_link}\">Unsubscribe</a></small></p>\n\
                   </body>\n</html>\n"
                .into(),
        }
    }
}

impl Templates {
    /// Templates from the files' texts; `None` for a file that is absent
    /// keeps the built-in one. Every `{…}` must be a known placeholder.
    pub fn parse(text: Option<&str>, html: Option<&str>) -> Result<Self, String> {
        let mut out = Self::default();
        if let Some(text) = text {
            let text = text.replace("\r\n", "\n");
            let (first, rest) = text.split_once('\n').unwrap_or((&text, ""));
            out.subject = first
                .strip_prefix("Subject:")
                .ok_or("notif.txt: the first line must be `Subject: …`")?
                .trim()
                .to_owned();
            out.text = rest
                .strip_prefix('\n')
                .ok_or("notif.txt: a blank line must follow the subject")?
                .to_owned();
        }
        if let Some(html) = html {
            out.html = html.to_owned();
        }
        for (file, t) in [
            ("notif.txt", &out.subject),
            ("notif.txt", &out.text),
            ("notif.html", &out.html),
        ] {
            render(t, &HashMap::new(), true, PLACEHOLDERS).map_err(|e| format!("{file}: {e}"))?;
        }
        Ok(out)
    }
}

/// What is known about the recipient and the server.
pub struct Recipient<'a> {
    pub app_name: &'a str,
    pub server_name: &'a str,
    pub user_id: &'a str,
    pub address: &'a str,
    pub client_link: &'a str,
    pub unsubscribe_link: &'a str,
}

/// A composed mail.
#[derive(Debug)]
pub struct Mail {
    pub subject: String,
    pub text: String,
    pub html: String,
}

/// The mail for `rooms` (none empty).
pub fn compose(templates: &Templates, to: &Recipient<'_>, rooms: &[Room]) -> Mail {
    let summary = summary(rooms);
    let mut text_messages = String::new();
    let mut html_messages = String::new();
    for room in rooms {
        text_messages.push_str(&format!("{}\n", room.name));
        html_messages.push_str(&format!(
            "<h3><a href=\"{}\">{}</a></h3>\n<ul>\n",
            escape_html(&room.link),
            escape_html(&room.name)
        ));
        for m in &room.messages {
            text_messages.push_str(&format!("  {}: {}\n", m.sender, one_line(&m.text)));
            html_messages.push_str(&format!(
                "<li><b>{}</b>: {}</li>\n",
                escape_html(&m.sender),
                escape_html(&m.text)
            ));
        }
        text_messages.push_str(&format!("  {}\n\n", room.link));
        html_messages.push_str("</ul>\n");
    }
    let mut values = HashMap::from([
        ("app_name", to.app_name.to_owned()),
        ("server_name", to.server_name.to_owned()),
        ("user_id", to.user_id.to_owned()),
        ("address", to.address.to_owned()),
        ("summary", summary),
        ("client_link", to.client_link.to_owned()),
        ("unsubscribe_link", to.unsubscribe_link.to_owned()),
    ]);
    let subject =
        one_line(&render(&templates.subject, &values, false, PLACEHOLDERS).unwrap_or_default());
    values.insert("messages", text_messages);
    let text = render(&templates.text, &values, false, PLACEHOLDERS).unwrap_or_default();
    let mut escaped: HashMap<&str, String> =
        values.iter().map(|(k, v)| (*k, escape_html(v))).collect();
    escaped.insert("messages", html_messages);
    let html = render(&templates.html, &escaped, false, PLACEHOLDERS).unwrap_or_default();
    Mail {
        subject,
        text,
        html,
    }
}

/// The subject's summary, as Synapse words it.
fn summary(rooms: &[Room]) -> String {
    let count: usize = rooms.iter().map(|r| r.messages.len()).sum();
    match rooms {
        [room] => match room.messages.as_slice() {
            [m] => format!("{} sent a message in {}", m.sender, room.name),
            _ => format!("{count} unread messages in {}", room.name),
        },
        _ => format!("{count} unread messages in {} rooms", rooms.len()),
    }
}

/// What a notification says in a mail, from its event. Encrypted content is
/// not read (the server cannot, and says so).
pub fn describe(
    event_type: &str,
    content: &Value,
    redacted: bool,
    user_id: &str,
    state_key: Option<&str>,
) -> String {
    if event_type == "m.room.encrypted" {
        return "an encrypted message".into();
    }
    if redacted {
        return "a deleted message".into();
    }
    match event_type {
        "m.room.message" => {
            let body = content["body"].as_str().unwrap_or_default();
            match content["msgtype"].as_str().unwrap_or_default() {
                "m.image" => "sent an image".into(),
                "m.video" => "sent a video".into(),
                "m.audio" => "sent an audio file".into(),
                "m.file" => "sent a file".into(),
                "m.location" => "shared a location".into(),
                "m.emote" => truncate(&format!("* {body}")),
                _ if body.is_empty() => "sent a message".into(),
                _ => truncate(body),
            }
        }
        "m.sticker" => "sent a sticker".into(),
        "m.room.member" if content["membership"] == "invite" && state_key == Some(user_id) => {
            "invited you to the room".into()
        }
        "m.call.invite" => "is calling you".into(),
        _ => "sent an event".into(),
    }
}

/// The link to a room in the client: matrix.to's form for matrix.to, Element
/// Web's for any other client.
pub fn room_link(client_base_url: &str, room_id: &str) -> String {
    let base = client_base_url.trim_end_matches('/');
    let is_matrix_to = base
        .strip_prefix("https://")
        .is_some_and(|host| host == "matrix.to");
    if is_matrix_to {
        format!("{base}/#/{room_id}")
    } else {
        format!("{base}/#/room/{room_id}")
    }
}

fn truncate(text: &str) -> String {
    if text.chars().count() <= MAX_TEXT_CHARS {
        return text.to_owned();
    }
    let mut out: String = text.chars().take(MAX_TEXT_CHARS).collect();
    out.push('…');
    out
}

fn one_line(text: &str) -> String {
    text.split(['\r', '\n'])
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Escapes text for HTML element content and quoted attribute values.
pub fn escape_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn to() -> Recipient<'static> {
        Recipient {
            app_name: "Matrix",
            server_name: "example.org",
            user_id: "@bob:example.org",
            address: "bob@example.org",
            client_link: "https://matrix.to",
            unsubscribe_link: "https://example.org/_synapse/client/unsubscribe?a=1&b=2",
        }
    }

    #[test]
    fn event_text_is_escaped_in_html_and_kept_in_text() {
        let rooms = [Room {
            name: "<b>Room</b>".into(),
            link: room_link("https://app.element.io/", "!r:example.org"),
            messages: vec![Message {
                sender: "Al & <i>ice</i>".into(),
                text: "<script>alert(1)</script>".into(),
            }],
        }];
        let mail = compose(&Templates::default(), &to(), &rooms);
        assert!(!mail.html.contains("<script>"), "{}", mail.html);
        assert!(mail.html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(mail.html.contains("Al &amp; &lt;i&gt;ice&lt;/i&gt;"));
        assert!(mail.html.contains("&lt;b&gt;Room&lt;/b&gt;"));
        assert!(mail.html.contains("?a=1&amp;b=2"));
        assert!(
            mail.html
                .contains("https://app.element.io/#/room/!r:example.org")
        );
        assert!(
            mail.text
                .contains("Al & <i>ice</i>: <script>alert(1)</script>")
        );
        assert_eq!(
            mail.subject,
            "[Matrix] Al & <i>ice</i> sent a message in <b>Room</b>"
        );
    }

    #[test]
    fn encrypted_content_is_not_quoted() {
        let content = json!({ "algorithm": "m.megolm.v1.aes-sha2", "ciphertext": "secret" });
        assert_eq!(
            describe("m.room.encrypted", &content, false, "@b:x", None),
            "an encrypted message"
        );
        let long = "x".repeat(600);
        let text = describe(
            "m.room.message",
            &json!({ "msgtype": "m.text", "body": long }),
            false,
            "@b:x",
            None,
        );
        assert_eq!(text.chars().count(), MAX_TEXT_CHARS + 1);
        assert_eq!(
            describe(
                "m.room.message",
                &json!({ "body": "hi" }),
                true,
                "@b:x",
                None
            ),
            "a deleted message"
        );
    }

    #[test]
    fn templates_refuse_unknown_placeholders() {
        assert!(Templates::parse(Some("Subject: {summary}\n\n{nope}\n"), None).is_err());
        assert!(Templates::parse(None, Some("<p>{link}</p>")).is_err());
        let t = Templates::parse(Some("Subject: Hi {user_id}\n\n{messages}"), None).unwrap();
        assert_eq!(t.subject, "Hi {user_id}");
        assert_eq!(
            room_link("https://matrix.to", "!r:x"),
            "https://matrix.to/#/!r:x"
        );
    }
}

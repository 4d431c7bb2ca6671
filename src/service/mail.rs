//! Outgoing mail over SMTP (lettre, rustls): the validation mails of
//! [`super::threepid`] and the notification mails of [`super::notif_mail`]. Built once at start from `[email]`; a mail is sent on
//! a connection of its own, with no database connection held.

use std::{collections::HashMap, time::Duration};

use anyhow::Context;
use lettre::{
    AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor,
    message::{
        Mailbox, MultiPart,
        header::{ContentType, HeaderName, HeaderValue},
    },
    transport::smtp::{
        authentication::Credentials,
        client::{Certificate, Tls, TlsParameters},
    },
};

use crate::{
    config::{Config, SmtpTls},
    domain::{
        notif_mail::{self, Templates},
        threepid::{Purpose, Template},
    },
};

pub struct Mailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    app_name: String,
    server_name: String,
    templates: HashMap<&'static str, Template>,
    notif_templates: Templates,
    /// The whole conversation's time limit (lettre's bounds each read).
    timeout: Duration,
}

impl Mailer {
    /// The mailer `[email]` describes, `None` when email is off. Every problem
    /// (a bad From, an unreadable CA file or template) stops the start here,
    /// naming the setting.
    pub fn from_config(config: &Config) -> anyhow::Result<Option<Self>> {
        let email = &config.email;
        if !email.enabled() {
            return Ok(None);
        }
        let from: Mailbox = email
            .from
            .parse()
            .with_context(|| format!("`email.from` {:?} is not a mail address", email.from))?;
        let tls = match email.tls {
            SmtpTls::Off => Tls::None,
            mode => {
                let mut params = TlsParameters::builder(email.smtp_host.clone());
                for file in config.extra_ca_files() {
                    let pem = std::fs::read(&file)
                        .with_context(|| format!("reading CA file {}", file.display()))?;
                    for der in rustls_pemfile::certs(&mut pem.as_slice()) {
                        let der = der.with_context(|| format!("CA file {}", file.display()))?;
                        params = params.add_root_certificate(
                            Certificate::from_der(der.to_vec())
                                .with_context(|| format!("CA file {}", file.display()))?,
                        );
                    }
                }
                let params = params.build_rustls().context("`email`: TLS set-up")?;
                if mode == SmtpTls::Tls {
                    Tls::Wrapper(params)
                } else {
                    Tls::Required(params)
                }
            }
        };
        let mut builder =
            AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(email.smtp_host.clone())
                .port(email.smtp_port)
                .tls(tls)
                .timeout(Some(Duration::from_secs(email.timeout_secs)));
        if let (Some(user), Some(pass)) = (&email.smtp_user, &email.smtp_pass) {
            builder = builder.credentials(Credentials::new(user.clone(), pass.clone()));
        }
        let mut templates = HashMap::new();
        for purpose in Purpose::all() {
            let template = match &email.template_dir {
                Some(dir) => {
                    let path = dir.join(format!("{}.txt", purpose.as_str()));
                    if path.exists() {
                        let text = std::fs::read_to_string(&path)
                            .with_context(|| format!("reading {}", path.display()))?;
                        Template::parse(&text).map_err(|e| {
                            anyhow::anyhow!("`email.template_dir`: {}: {e}", path.display())
                        })?
                    } else {
                        Template::default_for(purpose)
                    }
                }
                None => Template::default_for(purpose),
            };
            templates.insert(purpose.as_str(), template);
        }
        let read_optional = |name: &str| -> anyhow::Result<Option<String>> {
            let Some(dir) = &email.template_dir else {
                return Ok(None);
            };
            let path = dir.join(name);
            if !path.exists() {
                return Ok(None);
            }
            Ok(Some(
                std::fs::read_to_string(&path)
                    .with_context(|| format!("reading {}", path.display()))?,
            ))
        };
        let notif_templates = Templates::parse(
            read_optional("notif.txt")?.as_deref(),
            read_optional("notif.html")?.as_deref(),
        )
        .map_err(|e| anyhow::anyhow!("`email.template_dir`: {e}"))?;
        Ok(Some(Self {
            transport: builder.build(),
            from,
            app_name: email.app_name.clone(),
            server_name: config.server_name.clone(),
            templates,
            notif_templates,
            timeout: Duration::from_secs(email.timeout_secs),
        }))
    }

    /// Sends the `purpose` mail to `address` with its link and token.
    pub async fn send_validation(
        &self,
        purpose: Purpose,
        address: &str,
        link: &str,
        token: &str,
    ) -> anyhow::Result<()> {
        let values = HashMap::from([
            ("app_name", self.app_name.clone()),
            ("server_name", self.server_name.clone()),
            ("address", address.to_owned()),
            ("link", link.to_owned()),
            ("token", token.to_owned()),
        ]);
        let (subject, body) = self.templates[purpose.as_str()].render(&values);
        let to: Mailbox = address
            .parse()
            .with_context(|| format!("recipient {address:?}"))?;
        let message = Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(subject)
            .header(ContentType::TEXT_PLAIN)
            .body(body)
            .context("building the mail")?;
        self.send(message).await
    }

    pub fn notif_templates(&self) -> &Templates {
        &self.notif_templates
    }

    /// Sends a notification mail (plain text and HTML) to `address`, with the
    /// `List-Unsubscribe` headers (RFC 2369, and RFC 8058's one-click `POST`)
    /// naming `unsubscribe_link`.
    pub async fn send_notification(
        &self,
        address: &str,
        mail: notif_mail::Mail,
        unsubscribe_link: &str,
    ) -> anyhow::Result<()> {
        let to: Mailbox = address
            .parse()
            .with_context(|| format!("recipient {address:?}"))?;
        let message = Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(mail.subject)
            .raw_header(HeaderValue::new(
                HeaderName::new_from_ascii_str("List-Unsubscribe"),
                format!("<{unsubscribe_link}>"),
            ))
            .raw_header(HeaderValue::new(
                HeaderName::new_from_ascii_str("List-Unsubscribe-Post"),
                "List-Unsubscribe=One-Click".to_owned(),
            ))
            .multipart(MultiPart::alternative_plain_html(mail.text, mail.html))
            .context("building the mail")?;
        self.send(message).await
    }

    async fn send(&self, message: Message) -> anyhow::Result<()> {
        tokio::time::timeout(self.timeout, self.transport.send(message))
            .await
            .map_err(|_| anyhow::anyhow!("the SMTP server did not answer in time"))?
            .context("sending the mail")?;
        Ok(())
    }
}

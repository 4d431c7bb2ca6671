//! The server's ed25519 signing key: generated at first start, stored in the
//! database (so it survives restarts and is shared by every process), never
//! regenerated while one is in use.

use anyhow::Context;
use ruma::signatures::Ed25519KeyPair;

use super::event::SigningKey;
use crate::{
    domain::token,
    storage::{Pool, keys, now_ms},
};

pub async fn load_or_generate(db: &Pool) -> anyhow::Result<SigningKey> {
    if let Some(stored) = keys::current(db).await? {
        return parse(stored.key_id, &stored.pkcs8);
    }
    let pkcs8 = Ed25519KeyPair::generate();
    let key_id = format!("ed25519:{}", token::random_string(6));
    if keys::insert_if_none(db, &key_id, &pkcs8, now_ms()).await? {
        tracing::info!(%key_id, "generated the server signing key");
    }
    // Another process may have stored its key first: use whichever is current.
    let stored = keys::current(db).await?.context("signing key vanished")?;
    parse(stored.key_id, &stored.pkcs8)
}

fn parse(key_id: String, pkcs8: &[u8]) -> anyhow::Result<SigningKey> {
    let version = key_id
        .strip_prefix("ed25519:")
        .context("signing key id")?
        .to_owned();
    let pair = Ed25519KeyPair::from_der(pkcs8, version)
        .map_err(|e| anyhow::anyhow!("stored signing key is unreadable: {e}"))?;
    Ok(SigningKey { key_id, pair })
}

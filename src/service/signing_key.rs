//! The server's ed25519 signing key: generated at first start, stored in the
//! database (so it survives restarts and is shared by every process), never
//! regenerated while one is in use.

use anyhow::Context;
use ruma::signatures::Ed25519KeyPair;

use crate::{
    domain::{signing_key::SigningKey, token},
    storage::{Pool, now_ms, signing_keys},
};

pub async fn load_or_generate(db: &Pool) -> anyhow::Result<SigningKey> {
    if let Some(stored) = signing_keys::current(db).await? {
        return Ok(SigningKey::from_pkcs8(stored.key_id, &stored.pkcs8)?);
    }
    let pkcs8 = Ed25519KeyPair::generate();
    let key_id = format!("ed25519:{}", token::random_string(6));
    if signing_keys::insert_if_none(db, &key_id, &pkcs8, now_ms()).await? {
        tracing::info!(%key_id, "generated the server signing key");
    }
    // Another process may have stored its key first: use whichever is current.
    let stored = signing_keys::current(db)
        .await?
        .context("signing key vanished")?;
    Ok(SigningKey::from_pkcs8(stored.key_id, &stored.pkcs8)?)
}

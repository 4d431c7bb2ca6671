//! `profiles`: display names and avatars of local users.

use sqlx::PgExecutor;

#[derive(Debug, Clone, Default)]
pub struct Profile {
    pub displayname: Option<String>,
    pub avatar_url: Option<String>,
}

pub async fn get(db: impl PgExecutor<'_>, user_id: &str) -> sqlx::Result<Option<Profile>> {
    sqlx::query_as!(
        Profile,
        "select displayname, avatar_url from profiles where user_id = $1",
        user_id
    )
    .fetch_optional(db)
    .await
}

pub async fn set_displayname(
    db: impl PgExecutor<'_>,
    user_id: &str,
    name: Option<&str>,
) -> sqlx::Result<()> {
    sqlx::query!(
        "insert into profiles (user_id, displayname) values ($1, $2)
         on conflict (user_id) do update set displayname = excluded.displayname",
        user_id,
        name
    )
    .execute(db)
    .await?;
    Ok(())
}

pub async fn set_avatar_url(
    db: impl PgExecutor<'_>,
    user_id: &str,
    url: Option<&str>,
) -> sqlx::Result<()> {
    sqlx::query!(
        "insert into profiles (user_id, avatar_url) values ($1, $2)
         on conflict (user_id) do update set avatar_url = excluded.avatar_url",
        user_id,
        url
    )
    .execute(db)
    .await?;
    Ok(())
}

/// The custom fields (`m.tz` and namespaced keys) of a user's profile, as a
/// JSON object; `None` without a profile row.
pub async fn fields(db: impl PgExecutor<'_>, user_id: &str) -> sqlx::Result<Option<String>> {
    sqlx::query_scalar!("select fields from profiles where user_id = $1", user_id)
        .fetch_optional(db)
        .await
}

/// [`fields`] with the row locked until the transaction ends, so that
/// concurrent changes cannot together exceed the size limit.
pub async fn fields_for_update(
    db: impl PgExecutor<'_>,
    user_id: &str,
) -> sqlx::Result<Option<String>> {
    sqlx::query_scalar!(
        "select fields from profiles where user_id = $1 for update",
        user_id
    )
    .fetch_optional(db)
    .await
}

pub async fn set_fields(db: impl PgExecutor<'_>, user_id: &str, fields: &str) -> sqlx::Result<()> {
    sqlx::query!(
        "insert into profiles (user_id, fields) values ($1, $2)
         on conflict (user_id) do update set fields = excluded.fields",
        user_id,
        fields
    )
    .execute(db)
    .await?;
    Ok(())
}

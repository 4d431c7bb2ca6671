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

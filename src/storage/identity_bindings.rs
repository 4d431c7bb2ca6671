//! `user_threepid_id_servers`: which identity servers a local account's
//! addresses were bound on through this server.

use sqlx::PgExecutor;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    pub medium: String,
    pub address: String,
    pub id_server: String,
}

/// Records a binding (again: nothing changes).
pub async fn insert(
    db: impl PgExecutor<'_>,
    user_id: &str,
    medium: &str,
    address: &str,
    id_server: &str,
) -> sqlx::Result<()> {
    sqlx::query!(
        "insert into user_threepid_id_servers (user_id, medium, address, id_server)
         values ($1, $2, $3, $4) on conflict do nothing",
        user_id,
        medium,
        address,
        id_server
    )
    .execute(db)
    .await?;
    Ok(())
}

/// The identity servers one address of `user_id` was bound on.
pub async fn servers(
    db: impl PgExecutor<'_>,
    user_id: &str,
    medium: &str,
    address: &str,
) -> sqlx::Result<Vec<String>> {
    sqlx::query_scalar!(
        "select id_server from user_threepid_id_servers
         where user_id = $1 and medium = $2 and address = $3 order by id_server",
        user_id,
        medium,
        address
    )
    .fetch_all(db)
    .await
}

/// Every binding of `user_id`.
pub async fn all(db: impl PgExecutor<'_>, user_id: &str) -> sqlx::Result<Vec<Binding>> {
    sqlx::query_as!(
        Binding,
        "select medium, address, id_server from user_threepid_id_servers
         where user_id = $1 order by medium, address, id_server",
        user_id
    )
    .fetch_all(db)
    .await
}

/// Forgets one binding.
pub async fn delete(
    db: impl PgExecutor<'_>,
    user_id: &str,
    medium: &str,
    address: &str,
    id_server: &str,
) -> sqlx::Result<()> {
    sqlx::query!(
        "delete from user_threepid_id_servers
         where user_id = $1 and medium = $2 and address = $3 and id_server = $4",
        user_id,
        medium,
        address,
        id_server
    )
    .execute(db)
    .await?;
    Ok(())
}

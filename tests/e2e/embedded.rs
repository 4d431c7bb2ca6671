//! The embedded default: no `database.url`, so Lattice runs its own cluster.

use std::os::unix::fs::PermissionsExt;

use reqwest::StatusCode;

use crate::harness::{TestServer, test_config, user_id};

#[tokio::test]
async fn embedded_cluster_starts_empty_and_keeps_data_across_restarts() {
    let dir = tempfile::Builder::new()
        .prefix("lattice-emb-")
        .tempdir_in("/tmp")
        .unwrap();
    // When the tests run as root, the cluster runs as `postgres`, which must be
    // able to reach its directory.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut config = test_config();
    config.data_dir = dir.path().join("data");
    config.database.url = None;

    let server = TestServer::start_config(config.clone()).await;
    assert!(config.data_dir.join("postgres/PG_VERSION").exists());
    let alice = server.register("alice", "pw").await;
    assert_eq!(alice.user_id, user_id("alice"));
    server.stop().await;
    // Stopped in order: the postmaster is gone.
    assert!(!config.data_dir.join("postgres/postmaster.pid").exists());

    let server = TestServer::start_config(config.clone()).await;
    let (status, body) = server.login("alice", "pw").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["user_id"], user_id("alice"));
    server.stop().await;
}

//! Server ACLs (`m.room.server_acl`, spec "Server Access Control Lists"): a
//! server the room's ACL denies may not send the room's PDUs or EDUs, join,
//! leave, invite or read its events through federation.

use serde_json::Value;

use crate::{
    error::{Error, Result},
    service::AppState,
    storage::{events, rooms, state},
};

/// Whether the room's current ACL lets `server` take part (no ACL: yes).
pub async fn allowed(app: &AppState, room_id: &str, server: &str) -> Result<bool> {
    let group = rooms::get(&app.db, room_id)
        .await?
        .and_then(|r| r.current_state_group);
    allowed_at(app, group, server).await
}

/// Whether the ACL in a state group (the room's current one, already at hand)
/// lets `server` take part.
pub async fn allowed_at(app: &AppState, group: Option<i64>, server: &str) -> Result<bool> {
    let Some(group) = group else {
        return Ok(true);
    };
    let entries = state::state_for_keys(
        &app.db,
        group,
        &[("m.room.server_acl".into(), String::new())],
    )
    .await?;
    let Some((_, event_id)) = entries.first() else {
        return Ok(true);
    };
    let Some(event) = events::get(&app.db, event_id).await? else {
        return Ok(true);
    };
    let pdu: Value = serde_json::from_str(&event.json).unwrap_or_default();
    Ok(permits(&pdu["content"], server))
}

/// `403 M_FORBIDDEN` when the room's ACL denies `server`.
pub async fn check(app: &AppState, room_id: &str, server: &str) -> Result<()> {
    if allowed(app, room_id, server).await? {
        Ok(())
    } else {
        Err(Error::forbidden("Server is banned from this room"))
    }
}

/// The ACL rules: the host (port removed) must match no `deny` glob and some
/// `allow` glob; IP literals are refused unless `allow_ip_literals` (default
/// true). Globs use `*` and `?`, case-insensitively.
pub fn permits(content: &Value, server: &str) -> bool {
    let host = host_of(server);
    let ip_literal = host.starts_with('[') || host.parse::<std::net::Ipv4Addr>().is_ok();
    if ip_literal && content["allow_ip_literals"].as_bool() == Some(false) {
        return false;
    }
    let matches_any = |key: &str| {
        content[key]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .any(|pattern| glob(pattern, host))
    };
    !matches_any("deny") && matches_any("allow")
}

fn host_of(server: &str) -> &str {
    if let Some(end) = server.find(']') {
        return &server[..=end];
    }
    match server.rsplit_once(':') {
        Some((host, port)) if port.chars().all(|c| c.is_ascii_digit()) => host,
        _ => server,
    }
}

fn glob(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.to_lowercase().chars().collect();
    let n: Vec<char> = name.to_lowercase().chars().collect();
    // Iterative wildcard matching with backtracking to the last `*`.
    let (mut pi, mut ni) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ni));
            pi += 1;
        } else if let Some((sp, sn)) = star {
            pi = sp + 1;
            ni = sn + 1;
            star = Some((sp, sn + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn deny_wins_over_allow_and_ports_are_ignored() {
        let acl = json!({"allow": ["*"], "deny": ["evil.example", "*.evil.example"]});
        assert!(permits(&acl, "good.example"));
        assert!(permits(&acl, "good.example:8448"));
        assert!(!permits(&acl, "evil.example:8448"));
        assert!(!permits(&acl, "a.b.EVIL.example"));
    }

    #[test]
    fn nothing_allowed_unless_listed() {
        assert!(!permits(&json!({}), "any.example"));
        let acl = json!({"allow": ["matrix.org", "*.lattice.test", "h?st"]});
        assert!(permits(&acl, "matrix.org"));
        assert!(permits(&acl, "a.lattice.test"));
        assert!(!permits(&acl, "lattice.test"));
        assert!(permits(&acl, "host"));
        assert!(!permits(&acl, "hoost"));
    }

    #[test]
    fn ip_literals_only_when_allowed() {
        let acl = json!({"allow": ["*"], "allow_ip_literals": false});
        assert!(!permits(&acl, "1.2.3.4:8448"));
        assert!(!permits(&acl, "[::1]:8448"));
        assert!(permits(&acl, "example.org"));
        let acl = json!({"allow": ["*"]});
        assert!(permits(&acl, "1.2.3.4"));
    }
}

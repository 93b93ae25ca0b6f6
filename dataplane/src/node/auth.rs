//! Who may do what. Nodes (by their certificates) may call raft, gossip and every admin call;
//! users get what their roles grant — `read` or `readwrite` on key spans, or the built-in
//! `admin` role — on the KV and system services (etcd's model). Users and roles are ordinary
//! replicated keys under a reserved system prefix that only nodes and admins can touch; every
//! node keeps a copy, refreshed with a linearizable scan every second, so a change is in force
//! everywhere within about a second.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use pleiades_proto::identity::check_name;
use pleiades_proto::v1::{self, kv_request::Op, PermissionKind};
use prost::Message;
use tracing::{debug, warn};

use crate::transport::peer::Peer;
use crate::transport::pool::Peers;
use crate::transport::stream::PwpStream;

/// Keys from here on are the system's: users never see or write them through the KV service.
pub const SYSTEM_PREFIX: &[u8] = b"\xff\xffsys/";
const USER_PREFIX: &[u8] = b"\xff\xffsys/auth/user/";
const ROLE_PREFIX: &[u8] = b"\xff\xffsys/auth/role/";
const AUTH_PREFIX: &[u8] = b"\xff\xffsys/auth/";
const AUTH_END: &[u8] = b"\xff\xffsys/auth0";

/// The role that may do anything; the user of the same name always holds it.
pub const ADMIN: &str = "admin";

pub fn user_key(name: &str) -> Vec<u8> {
    [USER_PREFIX, name.as_bytes()].concat()
}

pub fn role_key(name: &str) -> Vec<u8> {
    [ROLE_PREFIX, name.as_bytes()].concat()
}

/// The span of every auth record, for scans.
pub fn auth_span() -> (Vec<u8>, Vec<u8>) {
    (AUTH_PREFIX.to_vec(), AUTH_END.to_vec())
}

/// The end of the keys that start with `prefix` (empty: no end).
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    Vec::new()
}

/// Whether `key` holds a user or role record.
pub fn is_auth_key(key: &[u8]) -> bool {
    key.starts_with(AUTH_PREFIX)
}

/// Checks a value written under the auth prefix: a user or role record naming what its key names,
/// with valid names and permissions. A bad record would lock users out, so it is refused.
pub fn check_auth_record(key: &[u8], value: &[u8]) -> Result<(), String> {
    if let Some(name) = key.strip_prefix(USER_PREFIX) {
        let user = v1::User::decode(value).map_err(|e| format!("not a User record: {e}"))?;
        if user.name.as_bytes() != name {
            return Err(format!("the record names user {:?}, its key another", user.name));
        }
        check_name(&user.name).map_err(|e| e.to_string())?;
        for role in &user.roles {
            check_name(role).map_err(|e| e.to_string())?;
        }
        Ok(())
    } else if let Some(name) = key.strip_prefix(ROLE_PREFIX) {
        let role = v1::Role::decode(value).map_err(|e| format!("not a Role record: {e}"))?;
        if role.name.as_bytes() != name {
            return Err(format!("the record names role {:?}, its key another", role.name));
        }
        check_name(&role.name).map_err(|e| e.to_string())?;
        if role.name == ADMIN {
            return Err("the admin role is built in and cannot be stored".into());
        }
        for permission in &role.permissions {
            if !matches!(permission.kind(), PermissionKind::Read | PermissionKind::Readwrite) {
                return Err("a permission is read or readwrite".into());
            }
            if !permission.end.is_empty() && permission.end <= permission.start {
                return Err("a permission's end must lie after its start".into());
            }
        }
        Ok(())
    } else {
        Err("only user and role records live under the auth prefix".into())
    }
}

/// Users and roles as this node last read them.
#[derive(Default, Debug, Clone)]
pub struct AuthTables {
    users: HashMap<String, Vec<String>>,
    roles: HashMap<String, Vec<v1::Permission>>,
}

impl AuthTables {
    /// From the auth records (key, value) as scanned; bad records are skipped with a warning.
    pub fn from_records(records: impl IntoIterator<Item = (Vec<u8>, Vec<u8>)>) -> Self {
        let mut tables = AuthTables::default();
        for (key, value) in records {
            if key.starts_with(USER_PREFIX) {
                match v1::User::decode(value.as_slice()) {
                    Ok(user) => {
                        tables.users.insert(user.name, user.roles);
                    }
                    Err(e) => warn!(error = %e, "skipping an unreadable user record"),
                }
            } else if key.starts_with(ROLE_PREFIX) {
                match v1::Role::decode(value.as_slice()) {
                    Ok(role) => {
                        tables.roles.insert(role.name, role.permissions);
                    }
                    Err(e) => warn!(error = %e, "skipping an unreadable role record"),
                }
            }
        }
        tables
    }

    pub fn is_admin(&self, user: &str) -> bool {
        user == ADMIN || self.users.get(user).is_some_and(|roles| roles.iter().any(|r| r == ADMIN))
    }

    /// The spans `user` may access with `kind` (readwrite implies read), merged and sorted.
    fn spans(&self, user: &str, kind: PermissionKind) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut spans: Vec<(Vec<u8>, Vec<u8>)> = self
            .users
            .get(user)
            .into_iter()
            .flatten()
            .filter_map(|role| self.roles.get(role))
            .flatten()
            .filter(|p| p.kind() == PermissionKind::Readwrite || p.kind() == kind)
            .map(|p| (p.start.clone(), p.end.clone()))
            .collect();
        spans.sort();
        spans
    }

    /// Whether the union of `user`'s `kind` spans covers [start, end) (empty end: to the end of
    /// the user keyspace).
    pub fn covers(&self, user: &str, kind: PermissionKind, start: &[u8], end: &[u8]) -> bool {
        let end = if end.is_empty() || end > SYSTEM_PREFIX { SYSTEM_PREFIX } else { end };
        let mut reached = start.to_vec();
        for (span_start, span_end) in self.spans(user, kind) {
            if span_start.as_slice() > reached.as_slice() {
                break;
            }
            if span_end.is_empty() {
                return true;
            }
            if span_end > reached {
                reached = span_end;
            }
            if reached.as_slice() >= end {
                return true;
            }
        }
        false
    }
}

/// The node's view of who may do what.
pub struct Authorizer {
    insecure: bool,
    tables: RwLock<AuthTables>,
}

pub type Denied = String;

impl Authorizer {
    pub fn new(insecure: bool) -> Self {
        Authorizer { insecure, tables: RwLock::default() }
    }

    fn tables(&self) -> std::sync::RwLockReadGuard<'_, AuthTables> {
        self.tables.read().unwrap_or_else(|p| p.into_inner())
    }

    pub fn replace(&self, tables: AuthTables) {
        *self.tables.write().unwrap_or_else(|p| p.into_inner()) = tables;
    }

    /// Raft, gossip and node-to-node calls: only nodes, each speaking for itself.
    pub fn require_node(&self, peer: &Peer, claimed: Option<u64>) -> Result<u64, Denied> {
        match peer {
            Peer::Node(id) => match claimed {
                Some(claimed) if claimed != *id => {
                    Err(format!("node {id}'s certificate cannot speak for node {claimed}"))
                }
                _ => Ok(*id),
            },
            Peer::Insecure if self.insecure => Ok(claimed.unwrap_or_default()),
            other => Err(format!("{other} is not a node; this call is for nodes only")),
        }
    }

    /// Admin calls: nodes, and users holding the admin role.
    pub fn require_admin(&self, peer: &Peer) -> Result<(), Denied> {
        match peer {
            Peer::Node(_) | Peer::Insecure => Ok(()),
            Peer::User(user) if self.tables().is_admin(user) => Ok(()),
            Peer::User(user) => Err(format!("user {user} lacks the admin role")),
        }
    }

    /// A KV operation. A user's unbounded scan is first cut at the system prefix.
    pub fn authorize_kv(&self, peer: &Peer, op: &mut Op) -> Result<(), Denied> {
        let user = match peer {
            Peer::Node(_) | Peer::Insecure => return Ok(()),
            Peer::User(user) => user,
        };
        let tables = self.tables();
        let admin = tables.is_admin(user);
        let (kind, start, end): (PermissionKind, &[u8], Vec<u8>) = match op {
            Op::Ranges(_) => return Ok(()),
            Op::Put(put) => (PermissionKind::Readwrite, &put.key, point_end(&put.key)),
            Op::Delete(delete) => (PermissionKind::Readwrite, &delete.key, point_end(&delete.key)),
            Op::Cas(cas) => (PermissionKind::Readwrite, &cas.key, point_end(&cas.key)),
            Op::Get(get) => (PermissionKind::Read, &get.key, point_end(&get.key)),
            Op::ListVersions(list) => (PermissionKind::Read, &list.key, point_end(&list.key)),
            Op::Describe(describe) => (PermissionKind::Read, &describe.key, point_end(&describe.key)),
            Op::Scan(scan) => {
                if !admin && (scan.end.is_empty() || scan.end.as_slice() > SYSTEM_PREFIX) {
                    scan.end = SYSTEM_PREFIX.to_vec();
                }
                (PermissionKind::Read, &scan.start, scan.end.clone())
            }
        };
        let touches_system = start >= SYSTEM_PREFIX || end.is_empty() || end.as_slice() > SYSTEM_PREFIX;
        if admin {
            return Ok(());
        }
        if touches_system {
            return Err(format!("user {user} may not access the system keyspace"));
        }
        if tables.covers(user, kind, start, &end) {
            Ok(())
        } else {
            let verb = if kind == PermissionKind::Read { "read" } else { "write" };
            Err(format!("user {user} may not {verb} {}", describe_span(start, &end)))
        }
    }
}

/// The exclusive end of the one-key span [key, key+\0).
fn point_end(key: &[u8]) -> Vec<u8> {
    [key, &[0]].concat()
}

fn describe_span(start: &[u8], end: &[u8]) -> String {
    if end == point_end(start).as_slice() {
        format!("key {:?}", String::from_utf8_lossy(start))
    } else {
        format!("[{:?}, {:?})", String::from_utf8_lossy(start), String::from_utf8_lossy(end))
    }
}

/// How often every node re-reads users and roles.
pub const REFRESH_INTERVAL: Duration = Duration::from_secs(1);

/// Re-reads the auth records every second through the range that holds them: a linearizable
/// scan at a replica, following `NOT_LEADER` answers to the leader.
pub async fn refresh(authorizer: Arc<Authorizer>, ranges: Arc<crate::range::Ranges>, peers: Arc<Peers>) {
    let mut tick = tokio::time::interval(REFRESH_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut leader_hint: Option<String> = None;
    loop {
        tick.tick().await;
        match read_records(&ranges, &peers, &mut leader_hint).await {
            Ok(records) => authorizer.replace(AuthTables::from_records(records)),
            Err(e) => debug!(error = %e, "cannot refresh users and roles yet"),
        }
    }
}

async fn read_records(
    ranges: &crate::range::Ranges,
    peers: &Peers,
    leader_hint: &mut Option<String>,
) -> Result<Vec<(Vec<u8>, Vec<u8>)>, String> {
    let descriptor = ranges.table.for_key(AUTH_PREFIX).ok_or("no range holds the auth records yet")?;
    let members = ranges.members();
    let mut candidates: Vec<String> = leader_hint.iter().cloned().collect();
    candidates.extend(
        descriptor.replicas.iter().filter_map(|id| members.iter().find(|m| m.node_id == *id)).map(|m| m.addr.clone()),
    );
    let mut last_error = String::from("no replica to ask");
    let mut tried = 0;
    while let Some(addr) = candidates.first().cloned() {
        candidates.remove(0);
        tried += 1;
        if tried > 8 {
            break;
        }
        match scan_auth(peers, &addr).await {
            Ok(Ok(records)) => {
                *leader_hint = Some(addr);
                return Ok(records);
            }
            Ok(Err(error)) => {
                if let Some(leader) = error.leader.filter(|l| !l.addr.is_empty()) {
                    candidates.insert(0, leader.addr);
                }
                last_error = error.message;
            }
            Err(e) => last_error = e,
        }
    }
    *leader_hint = None;
    Err(last_error)
}

/// One linearizable scan of every auth record at `addr`, page by page.
async fn scan_auth(peers: &Peers, addr: &str) -> Result<Result<Vec<(Vec<u8>, Vec<u8>)>, v1::KvError>, String> {
    use pleiades_proto::payload_type::kv;
    let connection = peers.connection(addr).await?;
    let mut stream = PwpStream::open(&connection, pleiades_proto::wire::Service::Kv, Duration::from_secs(2))
        .await
        .map_err(|e| e.to_string())?;
    let (mut start, end) = auth_span();
    let mut records = Vec::new();
    loop {
        let request = v1::KvRequest {
            request_id: 1,
            op: Some(Op::Scan(v1::ScanRequest {
                start: start.clone(),
                end: end.clone(),
                consistency: v1::ReadConsistency::Linearizable.into(),
                ..Default::default()
            })),
            ..Default::default()
        };
        let response: v1::KvResponse =
            stream.call_proto(kv::REQUEST, &request, kv::RESPONSE, "KvResponse").await.map_err(|e| e.to_string())?;
        match response.result {
            Some(v1::kv_response::Result::Scan(page)) => {
                records.extend(page.entries.into_iter().map(|e| (e.key, e.value.map(|v| v.value).unwrap_or_default())));
                if page.resume_key.is_empty() || page.resume_key.as_slice() >= end.as_slice() {
                    return Ok(Ok(records));
                }
                start = page.resume_key;
            }
            Some(v1::kv_response::Result::Error(error)) => return Ok(Err(error)),
            other => return Err(format!("unexpected answer to an auth scan: {other:?}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tables() -> AuthTables {
        let role = |name: &str, permissions: Vec<(PermissionKind, &[u8], &[u8])>| {
            let role = v1::Role {
                name: name.into(),
                permissions: permissions
                    .into_iter()
                    .map(|(kind, start, end)| v1::Permission {
                        kind: kind.into(),
                        start: start.to_vec(),
                        end: end.to_vec(),
                    })
                    .collect(),
            };
            (role_key(name), role.encode_to_vec())
        };
        let user = |name: &str, roles: &[&str]| {
            let user = v1::User { name: name.into(), roles: roles.iter().map(|r| r.to_string()).collect() };
            (user_key(name), user.encode_to_vec())
        };
        AuthTables::from_records([
            role("reader-a", vec![(PermissionKind::Read, b"a/", b"a0")]),
            role(
                "writer-b",
                vec![(PermissionKind::Readwrite, b"b/", b"b/m"), (PermissionKind::Readwrite, b"b/m", b"b0")],
            ),
            user("alice", &["reader-a"]),
            user("bob", &["reader-a", "writer-b"]),
            user("carol", &["admin"]),
        ])
    }

    fn allowed(tables: AuthTables, user: &str, mut op: Op) -> bool {
        let authorizer = Authorizer::new(false);
        authorizer.replace(tables);
        authorizer.authorize_kv(&Peer::User(user.into()), &mut op).is_ok()
    }

    fn get(key: &[u8]) -> Op {
        Op::Get(v1::GetRequest { key: key.to_vec(), ..Default::default() })
    }

    fn put(key: &[u8]) -> Op {
        Op::Put(v1::PutRequest { key: key.to_vec(), value: b"v".to_vec() })
    }

    fn scan(start: &[u8], end: &[u8]) -> Op {
        Op::Scan(v1::ScanRequest { start: start.to_vec(), end: end.to_vec(), ..Default::default() })
    }

    #[test]
    fn read_on_a_prefix_reads_it_and_nothing_else() {
        assert!(allowed(tables(), "alice", get(b"a/x")));
        assert!(!allowed(tables(), "alice", put(b"a/x")), "read is not write");
        assert!(!allowed(tables(), "alice", get(b"b/x")));
        assert!(allowed(tables(), "alice", scan(b"a/", b"a0")));
        assert!(!allowed(tables(), "alice", scan(b"a/", b"b")), "the scan runs past the permission");
        assert!(!allowed(tables(), "nobody", get(b"a/x")), "an unknown user holds nothing");
    }

    #[test]
    fn adjacent_permissions_cover_a_span_together() {
        assert!(allowed(tables(), "bob", put(b"b/z")));
        assert!(allowed(tables(), "bob", scan(b"b/", b"b0")), "two permissions meet at b/m");
        assert!(allowed(tables(), "bob", get(b"b/a")), "readwrite implies read");
    }

    #[test]
    fn the_system_keyspace_is_for_admins_and_nodes() {
        let mut key = SYSTEM_PREFIX.to_vec();
        key.extend_from_slice(b"auth/user/x");
        assert!(!allowed(tables(), "bob", get(&key)));
        assert!(allowed(tables(), "carol", put(&key)));
        assert!(allowed(tables(), ADMIN, put(&key)), "the admin user always holds the admin role");
        let authorizer = Authorizer::new(false);
        assert!(authorizer.authorize_kv(&Peer::Node(2), &mut put(&key)).is_ok());
    }

    #[test]
    fn a_users_open_scan_stops_before_the_system_keyspace() {
        let full = AuthTables::from_records([
            (
                role_key("all"),
                v1::Role {
                    name: "all".into(),
                    permissions: vec![v1::Permission { kind: PermissionKind::Read.into(), start: vec![], end: vec![] }],
                }
                .encode_to_vec(),
            ),
            (user_key("dave"), v1::User { name: "dave".into(), roles: vec!["all".into()] }.encode_to_vec()),
        ]);
        let authorizer = Authorizer::new(false);
        authorizer.replace(full);
        let mut op = scan(b"", b"");
        authorizer.authorize_kv(&Peer::User("dave".into()), &mut op).unwrap();
        let Op::Scan(scan) = op else { unreachable!() };
        assert_eq!(scan.end, SYSTEM_PREFIX);
    }

    #[test]
    fn nodes_speak_only_for_themselves() {
        let authorizer = Authorizer::new(false);
        assert_eq!(authorizer.require_node(&Peer::Node(2), Some(2)), Ok(2));
        assert!(authorizer.require_node(&Peer::Node(2), Some(3)).is_err());
        assert!(authorizer.require_node(&Peer::User(ADMIN.into()), None).is_err());
        assert!(authorizer.require_node(&Peer::Insecure, Some(3)).is_err(), "only an --insecure node takes anyone");
        assert_eq!(Authorizer::new(true).require_node(&Peer::Insecure, Some(3)), Ok(3));
        assert!(authorizer.require_admin(&Peer::User("bob".into())).is_err());
        assert!(authorizer.require_admin(&Peer::User(ADMIN.into())).is_ok());
    }

    #[test]
    fn bad_auth_records_are_refused() {
        let user = v1::User { name: "eve".into(), roles: vec!["reader".into()] }.encode_to_vec();
        assert!(check_auth_record(&user_key("eve"), &user).is_ok());
        assert!(check_auth_record(&user_key("mallory"), &user).is_err(), "key and record disagree");
        assert!(check_auth_record(&user_key("eve"), b"\xff\xff").is_err());
        let admin = v1::Role { name: ADMIN.into(), permissions: vec![] }.encode_to_vec();
        assert!(check_auth_record(&role_key(ADMIN), &admin).is_err());
        let backwards = v1::Role {
            name: "r".into(),
            permissions: vec![v1::Permission {
                kind: PermissionKind::Read.into(),
                start: b"b".to_vec(),
                end: b"a".to_vec(),
            }],
        }
        .encode_to_vec();
        assert!(check_auth_record(&role_key("r"), &backwards).is_err());
        assert_eq!(prefix_end(b"a/"), b"a0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
    }
}

//! `pleiades user|role|cert`: users and roles are records under the reserved auth prefix, changed
//! by an admin through the routing client with compare-and-swap (two admins editing one record
//! never lose each other's change); certificates are issued from a CA on disk.

use std::path::Path;

use anyhow::{bail, Context};
use pleiades_proto::identity::{check_name, Identity};
use pleiades_proto::v1::{self, PermissionKind, ReadConsistency};
use prost::Message;

use crate::cli::{CertCommand, PermissionArg, RoleCommand, UserCommand};
use crate::client::cluster::Cluster;
use crate::node::auth::{auth_span, prefix_end, role_key, user_key, ADMIN};
use crate::transport::tls::CaFiles;

/// Reads a record and its raw bytes (for the compare-and-swap that replaces it).
async fn read<M: Message + Default>(cluster: &Cluster, key: &[u8]) -> anyhow::Result<Option<(M, Vec<u8>)>> {
    match cluster.get(key, 0, ReadConsistency::Linearizable).await? {
        Some(found) => {
            let record = M::decode(found.value.as_slice()).context("a stored auth record is unreadable")?;
            Ok(Some((record, found.value)))
        }
        None => Ok(None),
    }
}

/// Applies `change` to the record at `key` (absent: `None`) and stores the result (or deletes it
/// for `None`), retrying when another admin changed it in between.
async fn update<M: Message + Default>(
    cluster: &Cluster,
    key: &[u8],
    change: impl Fn(Option<M>) -> anyhow::Result<Option<M>>,
) -> anyhow::Result<()> {
    for _ in 0..10 {
        let current = read::<M>(cluster, key).await?;
        let (record, raw) = match current {
            Some((record, raw)) => (Some(record), Some(raw)),
            None => (None, None),
        };
        let next = change(record)?.map(|m| m.encode_to_vec());
        if next.is_none() && raw.is_none() {
            return Ok(());
        }
        if cluster.cas(key, raw.as_deref(), next.as_deref()).await?.succeeded {
            return Ok(());
        }
    }
    bail!("the record kept changing under concurrent edits; try again")
}

pub async fn user(cluster: &Cluster, command: UserCommand) -> anyhow::Result<()> {
    match command {
        UserCommand::Add { name, roles } => {
            check_name(&name)?;
            for role in &roles {
                check_name(role)?;
            }
            update::<v1::User>(cluster, &user_key(&name), |existing| match existing {
                Some(_) => bail!("user {name} exists"),
                None => Ok(Some(v1::User { name: name.clone(), roles: roles.clone() })),
            })
            .await?;
            println!("user {name} added");
        }
        UserCommand::Delete { name } => {
            if name == ADMIN {
                bail!("the admin user is built in");
            }
            update::<v1::User>(cluster, &user_key(&name), |existing| match existing {
                Some(_) => Ok(None),
                None => bail!("no user {name}"),
            })
            .await?;
            println!("user {name} deleted");
        }
        UserCommand::Grant { name, role } => {
            check_name(&role)?;
            update::<v1::User>(cluster, &user_key(&name), |existing| {
                let mut user = existing.with_context(|| format!("no user {name}"))?;
                if !user.roles.contains(&role) {
                    user.roles.push(role.clone());
                }
                Ok(Some(user))
            })
            .await?;
            println!("user {name} holds role {role}");
        }
        UserCommand::Revoke { name, role } => {
            update::<v1::User>(cluster, &user_key(&name), |existing| {
                let mut user = existing.with_context(|| format!("no user {name}"))?;
                user.roles.retain(|r| *r != role);
                Ok(Some(user))
            })
            .await?;
            println!("user {name} no longer holds role {role}");
        }
        UserCommand::List => {
            for user in list::<v1::User>(cluster, b"user/").await? {
                println!("{}\t{}", user.name, user.roles.join(","));
            }
        }
    }
    Ok(())
}

pub async fn role(cluster: &Cluster, command: RoleCommand) -> anyhow::Result<()> {
    match command {
        RoleCommand::Add { name } => {
            check_name(&name)?;
            if name == ADMIN {
                bail!("the admin role is built in");
            }
            update::<v1::Role>(cluster, &role_key(&name), |existing| match existing {
                Some(_) => bail!("role {name} exists"),
                None => Ok(Some(v1::Role { name: name.clone(), permissions: vec![] })),
            })
            .await?;
            println!("role {name} added");
        }
        RoleCommand::Delete { name } => {
            update::<v1::Role>(cluster, &role_key(&name), |existing| match existing {
                Some(_) => Ok(None),
                None => bail!("no role {name}"),
            })
            .await?;
            println!("role {name} deleted");
        }
        RoleCommand::Grant { name, permission, prefix, end } => {
            let kind = match permission {
                PermissionArg::Read => PermissionKind::Read,
                PermissionArg::Readwrite => PermissionKind::Readwrite,
            };
            let (start, end) = span(&prefix, end.as_deref());
            update::<v1::Role>(cluster, &role_key(&name), |existing| {
                let mut role = existing.with_context(|| format!("no role {name}"))?;
                role.permissions.retain(|p| !(p.start == start && p.end == end));
                role.permissions.push(v1::Permission { kind: kind.into(), start: start.clone(), end: end.clone() });
                Ok(Some(role))
            })
            .await?;
            println!("role {name} may {} {}", permission_name(kind), show_span(&start, &end));
        }
        RoleCommand::Revoke { name, prefix, end } => {
            let (start, end) = span(&prefix, end.as_deref());
            update::<v1::Role>(cluster, &role_key(&name), |existing| {
                let mut role = existing.with_context(|| format!("no role {name}"))?;
                role.permissions.retain(|p| !(p.start == start && p.end == end));
                Ok(Some(role))
            })
            .await?;
            println!("role {name} no longer has {}", show_span(&start, &end));
        }
        RoleCommand::List => {
            for role in list::<v1::Role>(cluster, b"role/").await? {
                let permissions: Vec<String> = role
                    .permissions
                    .iter()
                    .map(|p| format!("{} {}", permission_name(p.kind()), show_span(&p.start, &p.end)))
                    .collect();
                println!("{}\t{}", role.name, permissions.join("; "));
            }
        }
    }
    Ok(())
}

/// A prefix alone is the span of its keys; with an end, [prefix, end).
fn span(prefix: &str, end: Option<&str>) -> (Vec<u8>, Vec<u8>) {
    let start = prefix.as_bytes().to_vec();
    let end = end.map(|e| e.as_bytes().to_vec()).unwrap_or_else(|| prefix_end(&start));
    (start, end)
}

fn show_span(start: &[u8], end: &[u8]) -> String {
    format!("[{:?}, {:?})", String::from_utf8_lossy(start), String::from_utf8_lossy(end))
}

fn permission_name(kind: PermissionKind) -> &'static str {
    match kind {
        PermissionKind::Readwrite => "readwrite",
        _ => "read",
    }
}

async fn list<M: Message + Default>(cluster: &Cluster, kind: &[u8]) -> anyhow::Result<Vec<M>> {
    let (start, _) = auth_span();
    let from = [start.as_slice(), kind].concat();
    let rows = cluster.scan(&from, &prefix_end(&from), 0, false, ReadConsistency::Linearizable).await?;
    rows.into_iter()
        .map(|row| {
            let value = row.value.map(|v| v.value).unwrap_or_default();
            M::decode(value.as_slice()).context("a stored auth record is unreadable")
        })
        .collect()
}

pub fn cert(command: CertCommand) -> anyhow::Result<()> {
    match command {
        CertCommand::CreateCa { dir, constellation } => {
            check_name(&constellation)?;
            let ca = CaFiles::in_dir(&dir);
            if ca.create(&constellation)? {
                println!("created {} and {} (keep the key private)", ca.cert.display(), ca.key.display());
            } else {
                println!("{} already exists; kept it", ca.cert.display());
            }
        }
        CertCommand::CreateNode { ca_dir, constellation, node_id, names, days, out } => {
            anyhow::ensure!(node_id > 0, "a node id is above 0");
            let identity = Identity::node(&constellation, node_id);
            issue(&ca_dir, &identity, &names, days, &out, "node")?;
        }
        CertCommand::CreateClient { ca_dir, constellation, user, days, out } => {
            check_name(&user)?;
            let identity = Identity::user(&constellation, &user);
            issue(&ca_dir, &identity, &[], days, &out, &user)?;
        }
    }
    Ok(())
}

fn issue(
    ca_dir: &Path,
    identity: &Identity,
    names: &[String],
    days: u32,
    out: &Path,
    stem: &str,
) -> anyhow::Result<()> {
    check_name(&identity.constellation)?;
    anyhow::ensure!((1..=3650).contains(&days), "--days must be 1 to 3650");
    let ca = CaFiles::in_dir(ca_dir);
    let (cert, key) = (out.join(format!("{stem}.crt")), out.join(format!("{stem}.key")));
    ca.issue(identity, names, days, &cert, &key)?;
    println!("{}: {} and {}", identity, cert.display(), key.display());
    Ok(())
}

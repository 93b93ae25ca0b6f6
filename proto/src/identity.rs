//! Who a certificate names. Every Pleiades certificate carries one SAN URI:
//! `pleiades://<constellation>/node/<id>` for a node, `pleiades://<constellation>/user/<name>` for
//! a client. The transport reads it after the TLS handshake and hands it to the services, which
//! decide what the holder may do. The constellation part keeps a certificate issued for one
//! constellation from acting in another that happens to trust the same CA.

use std::fmt;

pub const SCHEME: &str = "pleiades://";

/// Longest user or constellation name accepted (they appear in logs, metrics and keys).
pub const MAX_NAME_LEN: usize = 128;

/// The subject of a certificate.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Subject {
    Node(u64),
    User(String),
}

/// A certificate's subject within its constellation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub constellation: String,
    pub subject: Subject,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error("{0:?} is not a pleiades:// identity URI")]
    NotPleiades(String),
    #[error("identity URI {uri:?}: {detail}")]
    Malformed { uri: String, detail: &'static str },
    #[error("invalid name {0:?}: 1 to 128 characters of a-z, A-Z, 0-9, '.', '_' and '-'")]
    InvalidName(String),
}

/// Checks a user or constellation name: printable, no separators, bounded.
pub fn check_name(name: &str) -> Result<(), IdentityError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(IdentityError::InvalidName(name.into()))
    }
}

impl Identity {
    pub fn node(constellation: &str, id: u64) -> Self {
        Identity { constellation: constellation.into(), subject: Subject::Node(id) }
    }

    pub fn user(constellation: &str, name: &str) -> Self {
        Identity { constellation: constellation.into(), subject: Subject::User(name.into()) }
    }

    pub fn uri(&self) -> String {
        self.to_string()
    }

    pub fn parse(uri: &str) -> Result<Self, IdentityError> {
        let rest = uri.strip_prefix(SCHEME).ok_or_else(|| IdentityError::NotPleiades(uri.into()))?;
        let malformed = |detail| IdentityError::Malformed { uri: uri.into(), detail };
        let mut parts = rest.split('/');
        let (Some(constellation), Some(kind), Some(name), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(malformed("expected <constellation>/node/<id> or <constellation>/user/<name>"));
        };
        check_name(constellation)?;
        let subject = match kind {
            "node" => match name.parse::<u64>() {
                Ok(id) if id > 0 && name.bytes().all(|b| b.is_ascii_digit()) => Subject::Node(id),
                _ => return Err(malformed("a node id is a decimal number above 0")),
            },
            "user" => {
                check_name(name)?;
                Subject::User(name.into())
            }
            _ => return Err(malformed("the kind is neither node nor user")),
        };
        Ok(Identity { constellation: constellation.into(), subject })
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.subject {
            Subject::Node(id) => write!(f, "{SCHEME}{}/node/{id}", self.constellation),
            Subject::User(name) => write!(f, "{SCHEME}{}/user/{name}", self.constellation),
        }
    }
}

impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Subject::Node(id) => write!(f, "node {id}"),
            Subject::User(name) => write!(f, "user {name}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_round_trip() {
        for identity in [Identity::node("demo.db", 7), Identity::user("local", "admin")] {
            assert_eq!(Identity::parse(&identity.uri()), Ok(identity));
        }
        assert_eq!(Identity::node("c", 3).uri(), "pleiades://c/node/3");
    }

    #[test]
    fn malformed_uris_are_refused() {
        for uri in [
            "spiffe://c/node/1",
            "pleiades://c/node/0",
            "pleiades://c/node/+1",
            "pleiades://c/node/x",
            "pleiades://c/user/",
            "pleiades://c/user/a b",
            "pleiades://c/user/a/b",
            "pleiades://c/admin/a",
            "pleiades:///node/1",
            "pleiades://c",
        ] {
            assert!(Identity::parse(uri).is_err(), "{uri} must be refused");
        }
        assert!(check_name(&"a".repeat(129)).is_err());
    }
}

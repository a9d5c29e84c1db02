//! Who this member is: its ordinal, read from the hostname as in a StatefulSet
//! (`kiln-compiler-server-2` → 2), N, and where the leader is.

use std::fmt;

/// A member's place in the set. Construct it with [`Identity::new`], which enforces
/// that the hostname carries an ordinal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub hostname: String,
    pub ordinal: u32,
    pub workers: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error(
        "hostname {0:?} has no ordinal: a member's hostname must end in '-<number>' as in a StatefulSet (kiln-compiler-server-2); set --hostname or $HOSTNAME"
    )]
    NoOrdinal(String),
    #[error("--workers must be at least 1 (got 0): it is the number of members in the set")]
    NoWorkers,
}

impl Identity {
    pub fn new(hostname: &str, workers: u32) -> Result<Identity, IdentityError> {
        if workers == 0 {
            return Err(IdentityError::NoWorkers);
        }
        Ok(Identity { hostname: hostname.to_owned(), ordinal: ordinal_from_hostname(hostname)?, workers })
    }

    pub fn is_leader(&self) -> bool {
        self.ordinal == 0
    }

    /// The StatefulSet's name: the hostname without its `-<ordinal>` suffix.
    pub fn set_name(&self) -> &str {
        set_name(&self.hostname)
    }

    /// The leader's URL inside a StatefulSet: pod 0 through the headless service,
    /// `http://<set>-0.<service>:<port>`.
    pub fn leader_url_in_set(&self, service: &str, port: u16) -> String {
        format!("http://{}-0.{service}:{port}", self.set_name())
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (ordinal {} of {})", self.hostname, self.ordinal, self.workers)
    }
}

/// The StatefulSet's name in a pod's hostname: its first label without the
/// `-<ordinal>` suffix (`kiln-compiler-server-2.kiln.ns.svc` → `kiln-compiler-server`).
pub fn set_name(hostname: &str) -> &str {
    let label = hostname.split('.').next().unwrap_or(hostname);
    label.rsplit_once('-').map(|(set, _)| set).unwrap_or(label)
}

/// The digits after the last '-' of a hostname. Accepts a fully qualified name
/// (`kiln-compiler-server-2.kiln.ns.svc`) by looking at its first label.
pub fn ordinal_from_hostname(hostname: &str) -> Result<u32, IdentityError> {
    let label = hostname.split('.').next().unwrap_or_default();
    label
        .rsplit_once('-')
        .map(|(_, digits)| digits)
        .filter(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|d| d.parse().ok())
        .ok_or_else(|| IdentityError::NoOrdinal(hostname.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinal_is_the_digits_after_the_last_dash() {
        assert_eq!(ordinal_from_hostname("kiln-compiler-server-2"), Ok(2));
        assert_eq!(ordinal_from_hostname("feldera-compiler-server-10"), Ok(10));
        assert_eq!(ordinal_from_hostname("kiln-compiler-server-1.kiln.default.svc"), Ok(1));
        for bad in ["kiln", "kiln-", "kiln-x1", "laptop", "kiln-1a", ""] {
            assert_eq!(ordinal_from_hostname(bad), Err(IdentityError::NoOrdinal(bad.into())), "{bad}");
        }
    }

    #[test]
    fn leader_url_follows_the_set() {
        let id = Identity::new("kiln-compiler-server-3", 4).unwrap();
        assert_eq!(id.set_name(), "kiln-compiler-server");
        assert_eq!(id.leader_url_in_set("kiln-compiler", 8470), "http://kiln-compiler-server-0.kiln-compiler:8470");
        assert!(!id.is_leader());
        assert_eq!(Identity::new("a-1", 0), Err(IdentityError::NoWorkers));
    }
}

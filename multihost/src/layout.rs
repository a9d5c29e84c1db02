//! The loopback layout of a multihost run, as in the seed with its review taken in:
//! host `n` binds `127.100.<n>.1`, the coordinator `127.100.255.1`, all on the same
//! HTTP and exchange ports. The ordinal in the third octet keeps every address
//! distinct (so the shared ports never collide) without a `.0` address; the fixed,
//! non-zero second octet keeps members off `127.0.0.1`, where the farm itself
//! listens, and makes the address set small enough to pre-alias on macOS.
//!
//! [`prepare_addresses`] checks them all before anything is spawned.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener};

/// Most hosts a run can have: third octets 0..=253 (255 is the coordinator's).
pub const MAX_HOSTS: u32 = 254;
/// The HTTP port of every member and the exchange port of every host, from the
/// pipeline runtime's contract. The coordinator uses the HTTP port too, on purpose:
/// its address differs from every host's.
pub use kiln_pipeline_runtime::contract::{EXCHANGE_PORT, HTTP_PORT};
/// The coordinator's way of naming host `#`.
pub const HOST_TEMPLATE: &str = "127.100.#.1";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    #[error("--hosts must be between 1 and {MAX_HOSTS} (got {0}): each host needs its own 127.100.<n>.1 address")]
    HostCount(u32),
    #[error(
        "{address} is already in use{by}; only one multihost run fits on this machine at a time: stop it (`kill {pid}`) and try again",
        by = holder.as_ref().map(|h| format!(" by {h}")).unwrap_or_default(),
        pid = holder.as_ref().map(|h| h.pid.to_string()).unwrap_or_else(|| format!("the process that `ss -ltnp | grep {}` shows", address.port())),
    )]
    InUse { address: SocketAddr, holder: Option<crate::stale::Holder> },
    #[error(
        "{0} cannot be assigned on this machine. On macOS, alias the loopback addresses of every host and of the coordinator once: `for n in $(seq 0 253) 255; do sudo ifconfig lo0 alias 127.100.$n.1 up; done`"
    )]
    NotAssignable(SocketAddr),
    #[error("{0}: {1}")]
    Other(SocketAddr, String),
}

/// Checks the requested host count before anything is clamped or started.
pub fn check_host_count(requested: u32) -> Result<u32, LayoutError> {
    if (1..=MAX_HOSTS).contains(&requested) { Ok(requested) } else { Err(LayoutError::HostCount(requested)) }
}

/// Host `ordinal`'s address: `127.100.<ordinal>.1`. `ordinal` comes from a checked
/// host count, so it is below 254.
pub fn host_address(ordinal: u32) -> Ipv4Addr {
    let octet = u8::try_from(ordinal).ok().filter(|o| *o < 255).unwrap_or(254);
    Ipv4Addr::new(127, 100, octet, 1)
}

pub fn coordinator_address() -> Ipv4Addr {
    Ipv4Addr::new(127, 100, 255, 1)
}

/// Binds `address` for a moment, to turn "in use" and "cannot assign" into plain
/// errors with their fix before any member is spawned.
pub fn probe(address: SocketAddr) -> Result<(), LayoutError> {
    match TcpListener::bind(address) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => Err(LayoutError::InUse { address, holder: None }),
        Err(e) if e.kind() == std::io::ErrorKind::AddrNotAvailable => Err(LayoutError::NotAssignable(address)),
        Err(e) => Err(LayoutError::Other(address, e.to_string())),
    }
}

/// Probes every address a run of `hosts` needs. A busy address is reported with the
/// process holding it, except a leftover member of an earlier run whose launcher is
/// gone: that one is stopped, and a line saying so is returned.
pub fn prepare_addresses(hosts: u32) -> Result<Vec<String>, LayoutError> {
    let mut cleaned = Vec::new();
    for address in addresses(hosts) {
        match probe(address) {
            Err(LayoutError::InUse { address, .. }) => {
                let holder = crate::stale::holder_of(address);
                match holder {
                    Some(holder) if holder.is_leftover() => {
                        crate::stale::clean_up(&holder, address)
                            .map_err(|e| LayoutError::Other(address, e.to_string()))?;
                        cleaned.push(format!("stopped {holder}, which held {address}"));
                    }
                    holder => return Err(LayoutError::InUse { address, holder }),
                }
            }
            other => other?,
        }
    }
    Ok(cleaned)
}

/// Every address a run of `hosts` hosts needs, coordinator last.
pub fn addresses(hosts: u32) -> Vec<SocketAddr> {
    let mut all: Vec<SocketAddr> = (0..hosts)
        .flat_map(|n| [HTTP_PORT, EXCHANGE_PORT].map(|port| SocketAddr::V4(SocketAddrV4::new(host_address(n), port))))
        .collect();
    all.push(SocketAddr::V4(SocketAddrV4::new(coordinator_address(), HTTP_PORT)));
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_count_is_checked_before_anything_is_clamped() {
        assert_eq!(check_host_count(0), Err(LayoutError::HostCount(0)));
        assert_eq!(check_host_count(255), Err(LayoutError::HostCount(255)));
        assert_eq!(check_host_count(1), Ok(1));
        assert_eq!(check_host_count(254), Ok(254));
    }

    #[test]
    fn addresses_follow_the_layout() {
        assert_eq!(host_address(0), Ipv4Addr::new(127, 100, 0, 1));
        assert_eq!(host_address(253), Ipv4Addr::new(127, 100, 253, 1));
        assert_eq!(coordinator_address(), Ipv4Addr::new(127, 100, 255, 1));
        let all = addresses(3);
        assert_eq!(all.len(), 7);
        assert_eq!(all.last().unwrap().to_string(), "127.100.255.1:28080");
        assert_eq!(HOST_TEMPLATE.replace('#', "2"), host_address(2).to_string());
    }

    #[test]
    fn a_busy_address_is_a_plain_error_with_its_fix() {
        let taken = TcpListener::bind("127.100.7.1:0").unwrap();
        let address = taken.local_addr().unwrap();
        let error = probe(address).unwrap_err();
        assert_eq!(error, LayoutError::InUse { address, holder: None });
        assert!(error.to_string().contains("already in use"), "{error}");
    }
}

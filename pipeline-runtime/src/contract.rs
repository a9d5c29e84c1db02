//! The contract between a pipeline host and whoever runs it (`kiln launch` and
//! `kiln coordinator` link this module): the ports, the restart exit code, the
//! host's command line, its phases, its `/status` body and the start order.
//! Both sides use these types, so neither spells a flag, a phase or a port alone.

use std::ffi::OsString;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Every host's HTTP port, and the coordinator's (one per loopback address).
pub const HTTP_PORT: u16 = 28080;
/// Every host's exchange port.
pub const EXCHANGE_PORT: u16 = 29000;
/// The exit code that asks the supervisor for a restart (as in Feldera's
/// `pipeline_run.sh`).
pub const RESTART_EXIT_CODE: i32 = 55;
/// The only initial state a host starts in.
pub const INITIAL_COORDINATION: &str = "coordination";

/// Where a host is in its run, as its `/status` says.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Listening, waiting for the coordinator's start.
    Ready,
    /// Working on this host's share of the input.
    Running,
    /// Sending and receiving records.
    Exchanging,
    /// The result is available.
    Done,
    Failed,
    /// Said by the coordinator of a host that does not answer (or has not yet);
    /// never by a host.
    #[default]
    Unreachable,
}

/// A host's `GET /status` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostStatus {
    pub host_id: u32,
    pub deployment_id: String,
    /// Differs for every process, so the coordinator can tell a restarted host apart.
    pub instance: String,
    pub phase: Phase,
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub epoch: Option<u64>,
    pub exchange_address: SocketAddr,
    #[serde(default)]
    pub storage_dir: Option<PathBuf>,
    #[serde(default)]
    pub memory_limit_bytes: Option<u64>,
    #[serde(default)]
    pub records_read: u64,
    #[serde(default)]
    pub records_sent: u64,
    #[serde(default)]
    pub records_received: u64,
}

/// The coordinator's `POST /start` to a host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StartOrder {
    pub deployment_id: String,
    pub epoch: u64,
    /// Every host's exchange address, host `n` at position `n`.
    pub peers: Vec<SocketAddr>,
}

/// The host part of a pipeline's command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostArgs {
    pub host_id: u32,
    pub bind_address: IpAddr,
    pub http_port: u16,
    pub exchange_port: u16,
    pub deployment_id: String,
}

/// A pipeline binary's command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Args {
    pub config_file: PathBuf,
    /// `None` when the pipeline runs alone.
    pub host: Option<HostArgs>,
}

pub const USAGE: &str = "usage:
  alone:     PIPELINE --config-file FILE
  as a host: PIPELINE --initial coordination --host-id N --bind-address ADDRESS \\
             --default-port PORT --deployment-id ID --config-file FILE [--exchange-port PORT]";

impl Args {
    /// The command line that [`Args::parse`] reads back as `self`.
    pub fn to_args(&self) -> Vec<OsString> {
        let mut args: Vec<OsString> = Vec::new();
        if let Some(host) = &self.host {
            let flags = [
                ("--initial", INITIAL_COORDINATION.to_owned()),
                ("--host-id", host.host_id.to_string()),
                ("--bind-address", host.bind_address.to_string()),
                ("--default-port", host.http_port.to_string()),
                ("--exchange-port", host.exchange_port.to_string()),
                ("--deployment-id", host.deployment_id.clone()),
            ];
            for (flag, value) in flags {
                args.push(flag.into());
                args.push(value.into());
            }
        }
        args.push("--config-file".into());
        args.push(self.config_file.clone().into());
        args
    }

    /// Reads a pipeline's command line (without the program name).
    pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Args, String> {
        let mut flags = Flags::default();
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            let (flag, inline) = match arg.split_once('=') {
                Some((flag, value)) if flag.starts_with("--") => (flag.to_owned(), Some(value.to_owned())),
                _ => (arg.clone(), None),
            };
            if flag == "--help" || flag == "-h" {
                return Err(USAGE.to_owned());
            }
            let value = inline.or_else(|| args.next()).ok_or_else(|| format!("{flag} needs a value"));
            flags.set(&flag, value)?;
        }
        flags.into_args()
    }
}

/// The flags as read, before they are checked together.
#[derive(Default)]
struct Flags {
    config_file: Option<PathBuf>,
    initial: Option<String>,
    host_id: Option<u32>,
    bind_address: Option<IpAddr>,
    http_port: Option<u16>,
    exchange_port: Option<u16>,
    deployment_id: Option<String>,
}

fn number<T: std::str::FromStr>(flag: &str, value: &str) -> Result<T, String> {
    value.parse().map_err(|_| format!("{flag} {value:?} is not a valid number"))
}

impl Flags {
    fn set(&mut self, flag: &str, value: Result<String, String>) -> Result<(), String> {
        match flag {
            "--config-file" => self.config_file = Some(PathBuf::from(value?)),
            "--initial" => self.initial = Some(value?),
            "--host-id" => self.host_id = Some(number(flag, &value?)?),
            "--bind-address" => self.bind_address = Some(number(flag, &value?)?),
            "--default-port" => self.http_port = Some(number(flag, &value?)?),
            "--exchange-port" => self.exchange_port = Some(number(flag, &value?)?),
            "--deployment-id" => self.deployment_id = Some(value?),
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
        Ok(())
    }

    fn into_args(self) -> Result<Args, String> {
        let config_file = self.config_file.ok_or_else(|| format!("--config-file is required\n{USAGE}"))?;
        let host = match self.initial.as_deref() {
            None if self.host_id.is_some() || self.deployment_id.is_some() => {
                return Err(format!("--host-id and --deployment-id need --initial coordination\n{USAGE}"));
            }
            None => None,
            Some(INITIAL_COORDINATION) => {
                let missing = |name: &str| format!("--initial coordination needs {name}\n{USAGE}");
                Some(HostArgs {
                    host_id: self.host_id.ok_or_else(|| missing("--host-id"))?,
                    bind_address: self.bind_address.ok_or_else(|| missing("--bind-address"))?,
                    http_port: self.http_port.ok_or_else(|| missing("--default-port"))?,
                    exchange_port: self.exchange_port.unwrap_or(EXCHANGE_PORT),
                    deployment_id: self.deployment_id.ok_or_else(|| missing("--deployment-id"))?,
                })
            }
            Some(other) => {
                return Err(format!("--initial {other:?} is not supported: the only initial state is `coordination`"));
            }
        };
        Ok(Args { config_file, host })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(line: &str) -> Result<Args, String> {
        Args::parse(line.split_whitespace().map(str::to_owned))
    }

    #[test]
    fn host_mode_takes_the_launchers_flags() {
        let parsed = args("--initial coordination --host-id 2 --bind-address 127.100.2.1 --default-port=28080 --deployment-id d1 --config-file c.json").unwrap();
        let host = parsed.host.unwrap();
        assert_eq!(host.host_id, 2);
        assert_eq!(host.bind_address.to_string(), "127.100.2.1");
        assert_eq!((host.http_port, host.exchange_port), (HTTP_PORT, EXCHANGE_PORT));
        assert_eq!(parsed.config_file, PathBuf::from("c.json"));
    }

    #[test]
    fn the_command_line_reads_back_as_it_was_built() {
        let host = HostArgs {
            host_id: 7,
            bind_address: "127.100.7.1".parse().unwrap(),
            http_port: 1234,
            exchange_port: 5678,
            deployment_id: "d-9".into(),
        };
        for args in [
            Args { config_file: "/x/config.json".into(), host: Some(host) },
            Args { config_file: "alone.json".into(), host: None },
        ] {
            let line = args.to_args().into_iter().map(|a| a.into_string().unwrap());
            assert_eq!(Args::parse(line).unwrap(), args);
        }
    }

    #[test]
    fn mistakes_are_named() {
        assert!(args("--config-file c.json").unwrap().host.is_none());
        assert!(args("").unwrap_err().contains("--config-file is required"));
        assert!(args("--config-file c --initial coordination").unwrap_err().contains("needs --host-id"));
        assert!(args("--config-file c --initial standby").unwrap_err().contains("not supported"));
        assert!(args("--config-file c --host-id x").unwrap_err().contains("not a valid number"));
        assert!(args("--config-file c --verbose").unwrap_err().contains("unknown argument"));
    }

    #[test]
    fn a_status_reads_back() {
        let status = HostStatus {
            host_id: 1,
            deployment_id: "d".into(),
            instance: "i".into(),
            phase: Phase::Exchanging,
            error: None,
            epoch: Some(2),
            exchange_address: "127.100.1.1:29000".parse().unwrap(),
            storage_dir: None,
            memory_limit_bytes: Some(5),
            records_read: 3,
            records_sent: 2,
            records_received: 1,
        };
        let json = serde_json::to_string(&status).unwrap();
        assert!(json.contains("\"phase\":\"exchanging\""), "{json}");
        assert_eq!(serde_json::from_str::<HostStatus>(&json).unwrap(), status);
    }
}

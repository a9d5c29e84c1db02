//! The command line of a pipeline binary.
//!
//! Alone: `PIPELINE --config-file F`. As one host of a multihost deployment (what
//! `kiln launch` starts): `PIPELINE --initial coordination --host-id N --bind-address A
//! --default-port P --deployment-id D --config-file F [--exchange-port X]`.

use std::net::IpAddr;
use std::path::PathBuf;

/// The exchange port when `--exchange-port` is not given: the one `kiln launch` uses.
pub const DEFAULT_EXCHANGE_PORT: u16 = 29000;

pub const USAGE: &str = "usage:
  alone:     PIPELINE --config-file FILE
  as a host: PIPELINE --initial coordination --host-id N --bind-address ADDRESS \\
             --default-port PORT --deployment-id ID --config-file FILE [--exchange-port PORT]";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostArgs {
    pub host_id: u32,
    pub bind_address: IpAddr,
    pub http_port: u16,
    pub exchange_port: u16,
    pub deployment_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Args {
    pub config_file: PathBuf,
    /// `None` when the pipeline runs alone.
    pub host: Option<HostArgs>,
}

fn number<T: std::str::FromStr>(flag: &str, value: &str) -> Result<T, String> {
    value.parse().map_err(|_| format!("{flag} {value:?} is not a valid number"))
}

pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Args, String> {
    let mut config_file = None;
    let mut initial = None;
    let mut host_id = None;
    let mut bind_address = None;
    let mut http_port = None;
    let mut exchange_port = None;
    let mut deployment_id = None;
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((flag, value)) if flag.starts_with("--") => (flag.to_owned(), Some(value.to_owned())),
            _ => (arg.clone(), None),
        };
        if flag == "--help" || flag == "-h" {
            return Err(USAGE.to_owned());
        }
        let mut value = || inline.clone().or_else(|| args.next()).ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--config-file" => config_file = Some(PathBuf::from(value()?)),
            "--initial" => initial = Some(value()?),
            "--host-id" => host_id = Some(number::<u32>(&flag, &value()?)?),
            "--bind-address" => bind_address = Some(number::<IpAddr>(&flag, &value()?)?),
            "--default-port" => http_port = Some(number::<u16>(&flag, &value()?)?),
            "--exchange-port" => exchange_port = Some(number::<u16>(&flag, &value()?)?),
            "--deployment-id" => deployment_id = Some(value()?),
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    let config_file = config_file.ok_or_else(|| format!("--config-file is required\n{USAGE}"))?;
    let host = match initial.as_deref() {
        None => {
            if host_id.is_some() || deployment_id.is_some() {
                return Err(format!("--host-id and --deployment-id need --initial coordination\n{USAGE}"));
            }
            None
        }
        Some("coordination") => {
            let missing = |name: &str| format!("--initial coordination needs {name}\n{USAGE}");
            Some(HostArgs {
                host_id: host_id.ok_or_else(|| missing("--host-id"))?,
                bind_address: bind_address.ok_or_else(|| missing("--bind-address"))?,
                http_port: http_port.ok_or_else(|| missing("--default-port"))?,
                exchange_port: exchange_port.unwrap_or(DEFAULT_EXCHANGE_PORT),
                deployment_id: deployment_id.ok_or_else(|| missing("--deployment-id"))?,
            })
        }
        Some(other) => {
            return Err(format!("--initial {other:?} is not supported: the only initial state is `coordination`"));
        }
    };
    Ok(Args { config_file, host })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(line: &str) -> Result<Args, String> {
        parse(line.split_whitespace().map(str::to_owned))
    }

    #[test]
    fn host_mode_takes_the_launchers_flags() {
        let parsed = args("--initial coordination --host-id 2 --bind-address 127.100.2.1 --default-port=28080 --deployment-id d1 --config-file c.json").unwrap();
        let host = parsed.host.unwrap();
        assert_eq!(host.host_id, 2);
        assert_eq!(host.bind_address.to_string(), "127.100.2.1");
        assert_eq!((host.http_port, host.exchange_port), (28080, DEFAULT_EXCHANGE_PORT));
        assert_eq!(parsed.config_file, PathBuf::from("c.json"));
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
}

//! What a member runs with: [`MemberConfig::resolve`] turns `kiln server`'s flags
//! ([`ServerArgs`]) and what the member learned from its machine ([`Facts`]) into
//! the leader's and the worker's configurations, checked. Pure, so every refusal is
//! unit-tested; `cmd::server` gathers the facts and runs what this resolves.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::bail;
use kiln_compiler_worker::builder::BuildSettings;
use kiln_compiler_worker::cache_store::S3Settings;
use kiln_compiler_worker::sandbox::{SandboxMode, SandboxSettings};
use kiln_compiler_worker::sccache::CacheStore;
use kiln_compiler_worker::upload::RetryPolicy;
use kiln_compiler_worker::worker::{CacheChoice, WorkerConfig};
use kiln_core::identity::Identity;
use kiln_leader::LeaderConfig;

use crate::config::server::ServerArgs;

/// This build's version, which a member logs at startup and reports to the leader.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// What `kiln server` learns from its machine before it resolves its settings:
/// the only inputs of [`MemberConfig::resolve`] besides the arguments.
#[derive(Debug, Clone)]
pub struct Facts {
    pub hostname: String,
    /// The StatefulSet's replica count, with `--kubernetes`.
    pub replicas: Option<u32>,
    /// The cluster token, read from the argument, the environment or its file.
    pub cluster_token: Option<String>,
    /// The S3 store of the shared cache, resolved with its credentials.
    pub s3: Option<S3Settings>,
    /// The API token, from the argument, the environment or its file (the leader's
    /// own generated one is added at startup).
    pub api_token: Option<String>,
    /// The dependency set, read from `--depset` (or the built-in one).
    pub depset: std::sync::Arc<kiln_core::depset::DepSet>,
}

/// Everything a member runs with, resolved and checked.
#[derive(Debug, Clone)]
pub struct MemberConfig {
    pub identity: Identity,
    /// For ordinal 0: the leader's settings and where it listens.
    pub leader: Option<(LeaderConfig, SocketAddr)>,
    pub worker: WorkerConfig,
    /// Where a worker (ordinal > 0) serves its own /healthz.
    pub health_listen: Option<SocketAddr>,
    /// The certificate and key the leader's port and a worker's /healthz serve with.
    pub tls: Option<(PathBuf, PathBuf)>,
}

impl MemberConfig {
    /// Resolves a member's settings from its arguments and what it learned from
    /// its machine. Pure: no I/O. Settings that contradict each other, or that
    /// would be silently ignored, are refused with the fix.
    pub fn resolve(args: &ServerArgs, facts: &Facts) -> anyhow::Result<MemberConfig> {
        let workers = match (args.workers, facts.replicas) {
            // After a `kubectl scale`, pods restart with the set's new size: the
            // StatefulSet is the truth at startup, the guard watches it afterwards.
            (Some(workers), Some(replicas)) if workers != replicas => {
                tracing::warn!(
                    workers,
                    replicas,
                    "KILN_WORKERS disagrees with the StatefulSet: using its {replicas} replicas"
                );
                replicas
            }
            (_, Some(replicas)) => replicas,
            (Some(workers), None) => workers,
            (None, None) => bail!(
                "N is unknown: pass --workers or set KILN_WORKERS (with --kubernetes it is read from the StatefulSet)"
            ),
        };
        let identity = Identity::new(&facts.hostname, workers)?;
        let token = check_token(facts.cluster_token.as_deref())?;
        if !args.build_root.is_absolute() {
            bail!(
                "--build-root must be an absolute path (got {}): it must be the same path on every worker",
                args.build_root.display()
            );
        }
        if args.no_api_token && facts.api_token.is_some() {
            bail!(
                "--no-api-token opens the API, but an API token is given too (--api-token, --api-token-file or KILN_API_TOKEN*): give one of them"
            );
        }
        let cache = cache_choice(args, facts.s3.clone())?;
        let limit = kiln_compiler_worker::log::LIMIT_MAX_LOG_BYTES;
        if args.max_log_bytes < 1024 || args.max_log_bytes > limit {
            bail!(
                "--max-log-bytes must be between 1024 and {limit} (got {}): a build's report carries its log and must fit the leader's message limit",
                args.max_log_bytes
            );
        }
        let watermarks =
            kiln_core::disk::Watermarks { high: args.disk_high_watermark, critical: args.disk_critical_watermark };
        watermarks
            .validate()
            .map_err(|e| anyhow::anyhow!("{e}: set --disk-high-watermark and --disk-critical-watermark"))?;
        if args.claim_lease < 2 * args.heartbeat_interval {
            bail!(
                "--claim-lease ({}) must be at least twice --heartbeat-interval ({}): a worker renews its claim with each heartbeat",
                humantime::format_duration(args.claim_lease),
                humantime::format_duration(args.heartbeat_interval)
            );
        }
        if !args.failover_after.is_zero() && args.failover_after < args.heartbeat_window {
            bail!(
                "--failover-after ({}) must be 0 (never) or at least --heartbeat-window ({}): a member is missing only once it has been unhealthy",
                humantime::format_duration(args.failover_after),
                humantime::format_duration(args.heartbeat_window)
            );
        }
        let leader = identity.is_leader().then(|| {
            let config = LeaderConfig {
                data_dir: args.data_dir.clone(),
                workers: identity.workers,
                version: VERSION.to_owned(),
                cluster_token: token.clone(),
                api_token: facts.api_token.clone(),
                heartbeat_window: args.heartbeat_window,
                max_artifact_bytes: args.max_artifact_bytes,
                n_from_kubernetes: args.kubernetes,
                protect_metrics: args.protect_metrics,
                depset: facts.depset.clone(),
                retention: args.retention,
                claim_lease: args.claim_lease,
                failover_after: args.failover_after,
                watermarks,
                cache_settings: kiln_core::api::CacheSettings {
                    bucket: args.cache.bucket.clone(),
                    region: args.cache.region().to_owned(),
                    key_prefix: args.cache.key_prefix().to_owned(),
                    endpoint: args.cache.endpoint.clone(),
                    use_ssl: args.cache.use_ssl(),
                    server_side_encryption: args.cache.server_side_encryption(),
                    build_root: args.build_root.display().to_string(),
                    profile: args.profile.clone(),
                    depset: facts.depset.fingerprint().to_owned(),
                },
                serves_tls: args.tls.server().is_some(),
                // Filled in by `run` from the leader's own worker's build settings.
                binary_cache: None,
                default_profile: args.profile.clone(),
                max_connections: args.max_connections,
            };
            (config, args.listen)
        });
        let leader_url = leader_url(args, &identity);
        check_tls(args, &leader_url)?;
        let worker = WorkerConfig {
            tls_ca: args.tls.tls_ca.clone(),
            leader_url,
            identity: identity.clone(),
            cluster_token: token,
            build: BuildSettings {
                build_root: args.build_root.clone(),
                profile: args.profile.clone(),
                jobs: args.build_jobs,
                cargo: "cargo".into(),
                depset_cache: args.depset_cache.clone(),
                timeout: args.build_timeout,
                max_log_bytes: args.max_log_bytes,
                work_dir: args.data_dir.join("worker"),
                sandbox: None,
                // `kiln server` mounted the source at the build root in a namespace of
                // its own before its runtime started (`cmd::server::isolate_build_root`).
                private_mounts: args.build_root_source.as_ref().is_some_and(|source| *source != args.build_root),
                limits: kiln_process::process::Limits {
                    memory_bytes: args.build_memory,
                    processes: args.build_processes,
                    file_bytes: args.build_file_size,
                },
                tmp_bytes: args.build_tmp_size,
                disk_bytes: args.build_disk,
                depset: facts.depset.clone(),
            },
            cache,
            upload: RetryPolicy {
                budget: args.upload_budget,
                min_delay: args.upload_min_delay,
                max_delay: args.upload_max_delay,
            },
            heartbeat_interval: args.heartbeat_interval,
            version: VERSION.to_owned(),
            sandbox: SandboxSettings {
                mode: if args.sandbox == "off" { SandboxMode::Off } else { SandboxMode::Auto },
                bwrap: args.sandbox_bwrap.clone(),
                build_uid: args.build_uid,
                build_gid: args.build_uid,
                // Unique among live members of the machine (test farms run side by side).
                group_name: format!("kiln-member-{}", std::process::id()),
                memory_bytes: args.build_memory,
                processes: args.build_processes,
            },
            watermarks,
        };
        let health_listen = args.health_listen.filter(|_| !identity.is_leader());
        Ok(MemberConfig { identity, leader, worker, health_listen, tls: args.tls.server() })
    }
}

/// The leader URL's scheme and the CA must agree; the leader's own worker reaches
/// it on loopback by the scheme it serves.
fn check_tls(args: &ServerArgs, leader_url: &str) -> anyhow::Result<()> {
    let https = leader_url.starts_with("https://");
    match (https, &args.tls.tls_ca) {
        (true, None) => bail!(
            "the leader URL {leader_url} is https://, but no CA is given: pass --tls-ca (KILN_TLS_CA) with the CA that signed the leader's certificate"
        ),
        (false, Some(ca)) => bail!(
            "--tls-ca {} is given, but the leader URL {leader_url} is not https://: use an https:// leader URL",
            ca.display()
        ),
        _ => Ok(()),
    }
}

fn check_token(token: Option<&str>) -> anyhow::Result<String> {
    let Some(token) = token else {
        bail!("no cluster token: set KILN_CLUSTER_TOKEN or --cluster-token-file (every member needs the same one)")
    };
    if token.len() < 16 {
        bail!("the cluster token is too short ({} characters): use at least 16 random characters", token.len());
    }
    Ok(token.to_owned())
}

fn cache_choice(args: &ServerArgs, s3: Option<S3Settings>) -> anyhow::Result<CacheChoice> {
    if args.sccache == "off" {
        let ignored: Vec<&str> = [
            ("--sccache-bucket", args.cache.bucket.is_some()),
            ("--sccache-binary", args.sccache_binary.is_some()),
            ("--sccache-dir", args.sccache_dir.is_some()),
        ]
        .into_iter()
        .filter_map(|(flag, given)| given.then_some(flag))
        .collect();
        if !ignored.is_empty() {
            bail!(
                "--sccache=off turns the compile cache off, but {} {} given too: drop {}, or use --sccache=auto",
                ignored.join(" and "),
                if ignored.len() == 1 { "is" } else { "are" },
                if ignored.len() == 1 { "it" } else { "them" }
            );
        }
        return Ok(CacheChoice::Off);
    }
    let store = match s3 {
        Some(s3) => {
            if args.sccache_dir.is_some() {
                bail!("--sccache-dir is a local cache, but --sccache-bucket names a shared one: give one of them");
            }
            CacheStore::S3(s3)
        }
        None => CacheStore::LocalDisk {
            dir: args.sccache_dir.clone().unwrap_or_else(|| args.data_dir.join("sccache")),
            read_only: args.cache.read_only,
        },
    };
    Ok(CacheChoice::Auto { binary: args.sccache_binary.clone(), store })
}

fn leader_url(args: &ServerArgs, identity: &Identity) -> String {
    if let Some(url) = &args.leader_url {
        return url.clone();
    }
    if identity.is_leader() {
        // The leader's own worker reaches it on loopback, as it serves.
        return args.loopback_leader_url(args.listen.port());
    }
    identity.leader_url_in_set(&args.service, args.leader_port)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::leader::DEFAULT_PORT;

    fn facts(hostname: &str) -> Facts {
        Facts {
            hostname: hostname.into(),
            replicas: None,
            cluster_token: Some("t".repeat(20)),
            s3: None,
            api_token: None,
            depset: kiln_core::depset::DepSet::embedded(),
        }
    }

    fn args(options: &[&str]) -> ServerArgs {
        ServerArgs::parse_options(options).unwrap()
    }

    #[test]
    fn the_leader_is_ordinal_zero_and_listens_where_asked() {
        let config = MemberConfig::resolve(&args(&["--workers=3", "--build-root=/b"]), &facts("kiln-0")).unwrap();
        assert_eq!((config.identity.ordinal, config.identity.workers), (0, 3));
        let (leader, listen) = config.leader.expect("ordinal 0 leads");
        assert_eq!(leader.workers, 3);
        assert_eq!(listen.port(), DEFAULT_PORT);
        assert_eq!(config.worker.leader_url, format!("http://127.0.0.1:{DEFAULT_PORT}"));

        let worker = MemberConfig::resolve(
            &args(&["--workers=3", "--build-root=/b", "--health-listen=127.0.0.1:1"]),
            &facts("kiln-2"),
        )
        .unwrap();
        assert!(worker.leader.is_none());
        assert_eq!(worker.worker.leader_url, format!("http://kiln-0.kiln-compiler:{DEFAULT_PORT}"));
        assert!(worker.health_listen.is_some());
    }

    #[test]
    fn the_statefulset_decides_n_at_startup() {
        let facts = Facts { replicas: Some(5), ..facts("kiln-1") };
        let config = MemberConfig::resolve(&args(&["--workers=3", "--build-root=/b"]), &facts).unwrap();
        assert_eq!(config.identity.workers, 5);
    }

    #[test]
    fn conflicting_or_missing_settings_are_refused_with_the_fix() {
        let refused =
            |options: &[&str], facts: &Facts| MemberConfig::resolve(&args(options), facts).unwrap_err().to_string();
        let error = refused(&["--workers=2", "--build-root=/b", "--sccache=off", "--sccache-bucket=x"], &facts("k-1"));
        assert!(error.contains("--sccache=off") && error.contains("--sccache-bucket"), "{error}");
        let error = refused(
            &["--workers=2", "--build-root=/b", "--sccache=off", "--sccache-dir=/x", "--sccache-binary=/y"],
            &facts("k-1"),
        );
        assert!(error.contains("--sccache-binary and --sccache-dir are given"), "{error}");
        let error = refused(&["--workers=2", "--build-root=/b", "--max-log-bytes=99999999"], &facts("k-1"));
        assert!(error.contains("--max-log-bytes must be between"), "{error}");
        let error = refused(&["--build-root=/b"], &facts("k-1"));
        assert!(error.contains("N is unknown"), "{error}");
        let error = refused(&["--workers=2", "--build-root=relative"], &facts("k-1"));
        assert!(error.contains("absolute path"), "{error}");
        let error = refused(&["--workers=2", "--build-root=/b"], &Facts { cluster_token: None, ..facts("k-1") });
        assert!(error.contains("no cluster token"), "{error}");
        let error = refused(
            &["--workers=2", "--build-root=/b"],
            &Facts { cluster_token: Some("short".into()), ..facts("k-1") },
        );
        assert!(error.contains("too short"), "{error}");
        let error = refused(&["--workers=2", "--build-root=/b", "--tls-ca=/ca.pem"], &facts("k-1"));
        assert!(error.contains("--tls-ca /ca.pem is given") && error.contains("not https://"), "{error}");
        let error = refused(&["--workers=2", "--build-root=/b", "--leader=https://leader:8470"], &facts("k-1"));
        assert!(error.contains("no CA is given") && error.contains("--tls-ca"), "{error}");
        let error =
            refused(&["--workers=2", "--build-root=/b", "--tls-cert=/c.pem", "--tls-key=/k.pem"], &facts("k-0"));
        assert!(
            error.contains("https://127.0.0.1:8470") && error.contains("--tls-ca"),
            "the leader's own worker: {error}"
        );
        let error = refused(&["--workers=2", "--build-root=/b"], &facts("no-ordinal"));
        assert!(error.contains("has no ordinal"), "{error}");
    }
}

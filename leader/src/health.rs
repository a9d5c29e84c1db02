//! Cluster health, computed live from the members' heartbeats.
//!
//! **Invariant:** health is derived at the moment it is asked for, from when each
//! member last reported, so a member that stopped reporting turns unhealthy as soon
//! as its last report is older than the window: old news is never shown as current.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use kiln_core::api::Progress;
use kiln_core::cluster::ClaimKey;
use serde::Serialize;

/// What a member said in its last heartbeat.
#[derive(Debug, Clone, PartialEq)]
pub struct MemberReport {
    pub workers: u32,
    pub version: String,
    pub incarnation: u64,
    pub cache_healthy: bool,
    pub cache_message: String,
    /// Still preparing its build root.
    pub preparing: bool,
    /// How its builds are isolated, in words.
    pub sandbox: String,
    /// It cannot make its sandbox and refuses to build.
    pub sandbox_unavailable: bool,
    /// The fingerprint of its dependency set.
    pub depset: String,
    /// How full its build root's volume is, in percent.
    pub disk_used_percent: f64,
    /// Its volume is above the critical watermark (why, in words): it takes no work.
    pub disk_critical: String,
    /// The build it has in hand and how far it has come.
    pub building: Option<(ClaimKey, Progress)>,
    /// Its share of the machine's CPUs, in words.
    pub cpus: String,
}

/// The last report of every member that has reported since the leader started.
#[derive(Debug, Default)]
pub struct Members {
    reports: Mutex<HashMap<u32, (Instant, MemberReport)>>,
    /// The last refused second incarnation of each ordinal, and when.
    conflicts: Mutex<HashMap<u32, (u64, Instant)>>,
}

impl Members {
    pub fn conflict(&self, ordinal: u32, incarnation: u64, at: Instant) {
        self.conflicts.lock().unwrap_or_else(|p| p.into_inner()).insert(ordinal, (incarnation, at));
    }

    /// Ordinals a second incarnation asked for within `window` of `now`.
    pub fn conflicts(&self, window: Duration, now: Instant) -> HashMap<u32, u64> {
        let conflicts = self.conflicts.lock().unwrap_or_else(|p| p.into_inner());
        conflicts
            .iter()
            .filter(|(_, (_, at))| now.saturating_duration_since(*at) <= window)
            .map(|(ordinal, (incarnation, _))| (*ordinal, *incarnation))
            .collect()
    }

    pub fn record(&self, ordinal: u32, report: MemberReport, at: Instant) {
        self.lock().insert(ordinal, (at, report));
    }

    /// The progress `ordinal` last reported for `claim`, if it is building it.
    pub fn progress_of(&self, ordinal: u32, claim: ClaimKey) -> Option<Progress> {
        let reports = self.lock();
        let (_, report) = reports.get(&ordinal)?;
        report.building.filter(|(held, _)| *held == claim).map(|(_, progress)| progress)
    }

    pub fn snapshot(&self) -> HashMap<u32, (Instant, MemberReport)> {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u32, (Instant, MemberReport)>> {
        // The map is only ever replaced entry by entry, so a panic elsewhere cannot
        // leave it half-written: a poisoned lock is still consistent.
        self.reports.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// One ordinal's health, as `/cluster_healthz` shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MemberHealth {
    pub ordinal: u32,
    pub healthy: bool,
    pub message: String,
    /// Milliseconds since its last report; null if it never reported.
    pub last_report_age_ms: Option<u64>,
    pub version: Option<String>,
    pub workers: Option<u32>,
    pub cache: Option<String>,
    pub sandbox: Option<String>,
    /// The fingerprint of its dependency set.
    pub depset: Option<String>,
    /// How full its build root's volume is, in percent.
    pub disk_used_percent: Option<f64>,
    /// The build it said it has in hand, and how far it has come.
    pub building: Option<Building>,
    /// Its share of the machine's CPUs: pinned to a CPU set or not, and cargo's jobs.
    pub cpus: Option<String>,
    /// Silent for longer than `--failover-after`: the healthy members build its
    /// pipelines.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub missing: bool,
    /// While it is missing: the healthy ordinals that build its pipelines.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub covered_by: Vec<u32>,
}

/// A build in a member's hands, as its last heartbeat described it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Building {
    pub pipeline_id: u64,
    pub version: u64,
    pub attempt: u64,
    pub crates_done: u32,
    pub crates_total: u32,
}

/// The body of `/cluster_healthz`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClusterHealth {
    pub all_healthy: bool,
    pub workers_expected: u32,
    /// The fingerprint of the leader's dependency set, which every member must have.
    pub depset: String,
    pub checked_at: String,
    pub heartbeat_window_ms: u64,
    pub members: Vec<MemberHealth>,
}

impl ClusterHealth {
    /// What a caller without the API token sees: health, but not which store, bucket
    /// or endpoint the members use (nor the store's own error text), nor the claims
    /// the members hold (what a build is, and its attempt, are the API's to tell).
    pub fn redact(&mut self) {
        const HIDDEN: &str = "shown with the API token";
        for member in &mut self.members {
            member.building = None;
            if member.cache.is_some() {
                member.cache = Some(HIDDEN.into());
            }
            member.message = member
                .message
                .split("; ")
                .map(|part| {
                    if part.starts_with("cache store:") {
                        format!("cache store: unhealthy ({HIDDEN})")
                    } else {
                        part.to_owned()
                    }
                })
                .collect::<Vec<_>>()
                .join("; ");
        }
    }
}

/// What every member must agree with the leader on.
#[derive(Debug, Clone, Copy)]
pub struct Expected<'a> {
    pub workers: u32,
    pub version: &'a str,
    /// The fingerprint of the leader's dependency set.
    pub depset: &'a str,
}

/// The leader's view of the set at `now`: each ordinal is healthy when its last
/// report is within `window`, agrees on N, the version and the dependency set, and
/// its cache store answers.
pub fn cluster_health(
    reports: &HashMap<u32, (Instant, MemberReport)>,
    expected: Expected<'_>,
    window: Duration,
    now: Instant,
    checked_at: String,
) -> ClusterHealth {
    let Expected { workers, version, depset } = expected;
    let members: Vec<MemberHealth> = (0..workers)
        .map(|ordinal| match reports.get(&ordinal) {
            None => MemberHealth {
                ordinal,
                healthy: false,
                message: "never reported since the leader started".into(),
                last_report_age_ms: None,
                version: None,
                workers: None,
                cache: None,
                sandbox: None,
                depset: None,
                disk_used_percent: None,
                building: None,
                cpus: None,
                missing: false,
                covered_by: Vec::new(),
            },
            Some((at, report)) => {
                let age = now.saturating_duration_since(*at);
                let problems: Vec<String> = [
                    (age > window).then(|| {
                        format!("no report for {:.1}s (window {:.0}s)", age.as_secs_f64(), window.as_secs_f64())
                    }),
                    (report.workers != workers)
                        .then(|| format!("started with {} workers, the leader with {workers}", report.workers)),
                    (report.version != version)
                        .then(|| format!("runs version {}, the leader {version}", report.version)),
                    (report.depset != depset).then(|| {
                        format!(
                            "its dependency set {} differs from the leader's {}: start it with the leader's --depset; it gets no work until then",
                            short(&report.depset),
                            short(depset)
                        )
                    }),
                    report.preparing.then(|| "preparing its build root (the dependency set)".to_owned()),
                    (!report.cache_healthy).then(|| format!("cache store: {}", report.cache_message)),
                    report.sandbox_unavailable.then(|| report.sandbox.clone()),
                    (!report.disk_critical.is_empty()).then(|| report.disk_critical.clone()),
                ]
                .into_iter()
                .flatten()
                .collect();
                MemberHealth {
                    ordinal,
                    healthy: problems.is_empty(),
                    message: if problems.is_empty() { "healthy".into() } else { problems.join("; ") },
                    last_report_age_ms: Some(age.as_millis().min(u128::from(u64::MAX)) as u64),
                    version: Some(report.version.clone()),
                    workers: Some(report.workers),
                    cache: Some(report.cache_message.clone()),
                    sandbox: Some(report.sandbox.clone()),
                    depset: Some(report.depset.clone()),
                    disk_used_percent: Some(report.disk_used_percent),
                    building: report.building.map(|(claim, progress)| Building {
                        pipeline_id: claim.pipeline_id,
                        version: claim.version,
                        attempt: claim.attempt,
                        crates_done: progress.crates_done,
                        crates_total: progress.crates_total,
                    }),
                    cpus: Some(report.cpus.clone()).filter(|c| !c.is_empty()),
                    missing: false,
                covered_by: Vec::new(),
                }
            }
        })
        .collect();
    ClusterHealth {
        all_healthy: members.iter().all(|m| m.healthy),
        workers_expected: workers,
        depset: depset.to_owned(),
        checked_at,
        heartbeat_window_ms: window.as_millis() as u64,
        members,
    }
}

/// The most of a member's own words (its disk state) that health shows.
pub const MAX_MEMBER_TEXT: usize = 512;

/// A member's build progress as shown: as given, except never more done than to
/// build (a hostile or confused member cannot show 7/5 or overflow a bar).
pub fn bounded_progress(crates_done: u32, crates_total: u32) -> Progress {
    Progress { crates_done: crates_done.min(crates_total), crates_total }
}

/// `text` cut to [`MAX_MEMBER_TEXT`] bytes on a character boundary.
pub fn bounded_text(mut text: String) -> String {
    if text.len() > MAX_MEMBER_TEXT {
        let end = (0..=MAX_MEMBER_TEXT).rev().find(|&i| text.is_char_boundary(i)).unwrap_or(0);
        text.truncate(end);
        text.push_str(" [...]");
    }
    text
}

fn short(fingerprint: &str) -> &str {
    if fingerprint.is_empty() { "(none)" } else { &fingerprint[..fingerprint.len().min(12)] }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expected(workers: u32, version: &str) -> Expected<'_> {
        Expected { workers, version, depset: "set" }
    }

    fn report(workers: u32, version: &str) -> MemberReport {
        MemberReport {
            workers,
            version: version.into(),
            incarnation: 1,
            cache_healthy: true,
            cache_message: "sccache on local disk".into(),
            preparing: false,
            sandbox: "sandbox: on".into(),
            sandbox_unavailable: false,
            depset: "set".into(),
            disk_used_percent: 40.0,
            disk_critical: String::new(),
            building: None,
            cpus: String::new(),
        }
    }

    #[test]
    fn a_members_words_are_bounded() {
        let long = bounded_text("é".repeat(10_000));
        assert!(long.len() <= MAX_MEMBER_TEXT + 6 && long.ends_with("[...]"), "{}", long.len());
        assert_eq!(bounded_text("full".into()), "full");
        let hostile = bounded_progress(u32::MAX, 5);
        assert_eq!((hostile.crates_done, hostile.crates_total), (5, 5));
        assert_eq!(hostile.percent(), 100);
        let nothing = bounded_progress(3, 0);
        assert_eq!((nothing.crates_done, nothing.percent()), (0, 0), "no division by zero");
        let honest = bounded_progress(2, 5);
        assert_eq!((honest.crates_done, honest.crates_total), (2, 5));
    }

    /// A caller without the token sees health, not the store nor the claims held.
    #[test]
    fn what_an_anonymous_caller_sees_is_redacted() {
        let now = Instant::now();
        let mut building = report(1, "1.0");
        building.building = Some((ClaimKey { pipeline_id: 7, version: 2, attempt: 3 }, Progress::default()));
        building.cache_message = "sccache on S3 (bucket secret-bucket at http://minio:9000)".into();
        let reports = HashMap::from([(0, (now, building))]);
        let mut health = cluster_health(&reports, expected(1, "1.0"), Duration::from_secs(10), now, "t".into());
        assert!(health.members[0].building.is_some(), "token holders see the claim");
        health.redact();
        let shown = serde_json::to_string(&health).unwrap();
        assert!(health.members[0].building.is_none(), "{shown}");
        assert!(!shown.contains("secret-bucket") && !shown.contains("\"attempt\""), "{shown}");
        assert!(health.all_healthy, "health itself is still shown");
    }

    #[test]
    fn each_ordinal_is_judged_at_the_moment_of_asking() {
        let start = Instant::now();
        let mut reports = HashMap::new();
        reports.insert(0, (start, report(3, "1.0")));
        reports.insert(1, (start, report(3, "1.0")));
        let window = Duration::from_secs(10);
        let health = cluster_health(&reports, expected(3, "1.0"), window, start + Duration::from_secs(1), "t".into());
        assert!(!health.all_healthy);
        assert!(health.members[0].healthy && health.members[1].healthy);
        assert_eq!(health.members[2].message, "never reported since the leader started");

        reports.insert(2, (start + Duration::from_secs(5), report(3, "1.0")));
        let later = cluster_health(&reports, expected(3, "1.0"), window, start + Duration::from_secs(12), "t".into());
        assert!(!later.members[0].healthy, "a silent member turns unhealthy");
        assert!(later.members[0].message.starts_with("no report for 12.0s"), "{}", later.members[0].message);
        assert!(later.members[2].healthy);
    }

    #[test]
    fn disagreement_and_a_dead_cache_are_unhealthy() {
        let now = Instant::now();
        let mut reports = HashMap::new();
        reports.insert(0, (now, report(2, "1.0")));
        let mut broken = report(3, "0.9");
        broken.cache_healthy = false;
        broken.cache_message = "bucket missing".into();
        broken.depset = "another-set-fingerprint".into();
        reports.insert(1, (now, broken));
        let health = cluster_health(&reports, expected(2, "1.0"), Duration::from_secs(10), now, "t".into());
        assert!(health.members[0].healthy);
        let message = &health.members[1].message;
        assert!(
            message.contains("started with 3 workers")
                && message.contains("version 0.9")
                && message.contains("bucket missing")
                && message.contains("dependency set another-set- differs from the leader's set"),
            "{message}"
        );
    }
}

//! A scripted leader for the worker's unit tests: claims answered from a queue,
//! failures returned where the test says, and every call recorded (with whether
//! it was accepted), so a test asserts what the leader would have received,
//! without a socket or a process.
//!
//! A leader can also be "down" until a moment of tokio's clock: every call fails
//! as unavailable until then, which with a paused clock tests retry budgets in
//! milliseconds. When the queued claims run out, the fake cancels the token the
//! test gave it and holds the next claim open, as a leader with no work does, so
//! a claim loop under test ends by itself once its script is played.

use std::collections::VecDeque;
use std::io::Read;
use std::sync::Mutex;

use kiln_core::cluster::ClaimKey;
use kiln_core::retry::{Disposition, Failure};
use tokio_util::sync::CancellationToken;

use crate::link::{Assignment, Heartbeat, HeartbeatAnswer, LeaderLink, StatusReport, Upload};

/// A call the fake received.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Call {
    Claim,
    Heartbeat(Heartbeat),
    Report(StatusReport),
    /// An upload: its claim, its declared SHA-256 and size, and the bytes read.
    Upload {
        claim: ClaimKey,
        sha256: String,
        size: u64,
        bytes: Vec<u8>,
    },
}

/// What the fake answers and what it received.
#[derive(Debug, Default)]
pub(crate) struct Script {
    /// Answers to claims, in order.
    pub claims: VecDeque<Result<Option<Assignment>, Failure>>,
    /// Failures for the next reports, in order; a report finding none is accepted.
    pub report_failures: VecDeque<Failure>,
    /// Failures for the next uploads, in order; an upload finding none is accepted.
    pub upload_failures: VecDeque<Failure>,
    /// Answers to heartbeats; a heartbeat finding none gets `leader_workers: 1`.
    pub heartbeats: VecDeque<Result<HeartbeatAnswer, Failure>>,
    /// Every call is refused as unavailable until this moment of tokio's clock.
    pub down_until: Option<tokio::time::Instant>,
    /// Cancelled when a claim finds no answer left.
    pub claims_exhausted: Option<CancellationToken>,
    /// Every call, with whether it was accepted.
    pub calls: Vec<(Call, bool)>,
}

/// A [`LeaderLink`] that plays a [`Script`].
#[derive(Debug, Default)]
pub(crate) struct FakeLink {
    pub script: Mutex<Script>,
}

pub(crate) fn failure(disposition: Disposition, message: &str) -> Failure {
    Failure { disposition, message: message.to_owned() }
}

impl FakeLink {
    pub(crate) fn with(script: Script) -> FakeLink {
        FakeLink { script: Mutex::new(script) }
    }

    fn script(&self) -> std::sync::MutexGuard<'_, Script> {
        self.script.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every call, in the order received, with whether it was accepted.
    pub(crate) fn calls(&self) -> Vec<(Call, bool)> {
        self.script().calls.clone()
    }

    /// The calls the leader accepted, in order.
    pub(crate) fn accepted(&self) -> Vec<Call> {
        self.calls().into_iter().filter(|(_, accepted)| *accepted).map(|(call, _)| call).collect()
    }

    /// The reports the leader accepted, in order.
    pub(crate) fn reports(&self) -> Vec<StatusReport> {
        self.accepted()
            .into_iter()
            .filter_map(|call| match call {
                Call::Report(report) => Some(report),
                _ => None,
            })
            .collect()
    }

    /// Records `call`, answered by `answer` unless the leader is down.
    fn answer<T>(&self, call: Call, answer: impl FnOnce(&mut Script) -> Result<T, Failure>) -> Result<T, Failure> {
        let mut script = self.script();
        let down = script.down_until.is_some_and(|until| tokio::time::Instant::now() < until);
        let result = if down {
            Err(failure(Disposition::Transient, "the leader is down (Unavailable)"))
        } else {
            answer(&mut script)
        };
        script.calls.push((call, result.is_ok()));
        result
    }
}

impl LeaderLink for FakeLink {
    async fn heartbeat(&self, beat: Heartbeat) -> Result<HeartbeatAnswer, Failure> {
        self.answer(Call::Heartbeat(beat), |script| {
            script.heartbeats.pop_front().unwrap_or(Ok(HeartbeatAnswer { leader_workers: 1, cancel_current: false }))
        })
    }

    async fn claim(&self, _depset: &str) -> Result<Option<Assignment>, Failure> {
        let mut exhausted = None;
        let answer = self.answer(Call::Claim, |script| match script.claims.pop_front() {
            Some(answer) => answer,
            None => {
                exhausted = Some(script.claims_exhausted.clone());
                Ok(None)
            }
        });
        if let Some(token) = exhausted {
            if let Some(token) = token {
                token.cancel();
            }
            // A leader with no work holds the claim open.
            std::future::pending::<()>().await;
        }
        answer
    }

    async fn report(&self, report: StatusReport) -> Result<(), Failure> {
        self.answer(Call::Report(report), |script| script.report_failures.pop_front().map_or(Ok(()), Err))
    }

    async fn upload(&self, upload: &Upload) -> Result<(), Failure> {
        let mut bytes = Vec::new();
        upload.binary.reader().and_then(|mut file| file.read_to_end(&mut bytes)).expect("reading the test's binary");
        let call =
            Call::Upload { claim: upload.claim, sha256: upload.digest.sha256.clone(), size: upload.digest.size, bytes };
        self.answer(call, |script| script.upload_failures.pop_front().map_or(Ok(()), Err))
    }
}

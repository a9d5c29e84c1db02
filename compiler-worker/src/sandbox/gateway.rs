//! The cache gateway: how a sandboxed build reaches the shared compile cache
//! without holding its credentials.
//!
//! Every sccache server of a sandboxed member runs in a sandbox (a build's own, or
//! the member's long-lived one: see [`super::cache_server`]), so that whatever
//! sccache runs, rustc and proc-macros included, is as confined as a build. A server
//! speaks S3, anonymously, to `127.0.0.1:`[`SANDBOX_PORT`] in its sandbox's private
//! network namespace, where the sandbox's first program relays it to one of this
//! gateway's Unix sockets. The gateway, outside, holds the store's credentials and
//! answers only three requests:
//!
//! - `GET` and `HEAD` of one object under the key prefix (no listing, so a build
//!   cannot find what it could not compute the key of);
//! - `PUT` of one object, unless the store is read-only, and never over an object
//!   that exists (a build cannot replace an entry another build stored; it is
//!   answered as written and left alone).
//!
//! Only keys of sccache's shape are served: `<prefix><a>/<b>/<c>/<digest>`, the
//! digest in lowercase hex starting with `abc`, and sccache's `.sccache_check`.
//! Anything else (another bucket, any other key, `DELETE`, `POST`, a listing) is
//! refused with 403 or 405.
//!
//! **Who writes what others read.** The gateway has two doors: the build's door,
//! whose scope the worker sets for each build, and the shared door
//! ([`Gateway::open_shared_door`]), which only the long-lived server's sandbox
//! shows and which always writes [`Scope::Shared`] (no submitted code ever runs in
//! that server). The worker sets each build's [`Scope`] from
//! the layout it wrote, before the build starts and outside the sandbox, so
//! nothing inside can take part: a build in which no code of the submitter runs
//! writes where every build reads ([`Scope::Shared`]); a build that runs submitted
//! code (a build script, a proc-macro of the program's own) reads the shared
//! entries and its own pipeline's, and writes only its pipeline's
//! (`<prefix>pipelines/<name>/...`, [`Scope::Pipeline`]). Its hostile entry under
//! the key an honest crate will have so lands where only its own pipeline looks.
//!
//! Objects live in the configured store: the S3 bucket, or for a local store the
//! directory `<sccache-dir>/gateway/`, written through a temporary file and a
//! rename so that members sharing the directory never see half an object.
//!
//! **What a hit saved.** The gateway sees each compilation of a miss from both
//! ends: the build's server asks for the entry and is told it does not exist
//! (the compile starts), then stores it (the compile has ended). It stores that
//! interval with the entry (S3 user metadata `kiln-compile-ms`; for a local store,
//! a file of the same key under `<sccache-dir>/gateway-costs/`, outside what
//! builds can name), so any worker that later reads the entry as a hit knows the
//! compile time it saved. [`Gateway::take_savings`] gives one build's sum.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::Context;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};

use crate::cache_store::{CacheStore, S3Settings};

/// The port the sandbox's relay listens on, inside the sandbox's own network
/// namespace (nothing else listens there).
pub const SANDBOX_PORT: u16 = 4566;

/// The largest object a build may store (the biggest rlib of a large crate is a few
/// hundred megabytes; a bigger one is not cached, and the build goes on).
pub const MAX_OBJECT_BYTES: usize = 512 << 20;

/// Requests served at once on each of the gateway's two sockets. An object is held
/// in memory while it passes, so this bounds what a build that floods the gateway
/// costs the worker: `2 × MAX_CONCURRENT × MAX_OBJECT_BYTES`; the rest wait their
/// turn.
const MAX_CONCURRENT: usize = 4;

/// The bucket name a sandbox's sccache uses for a local store.
const LOCAL_BUCKET: &str = "kiln-local-cache";

/// The user metadata (S3) under which an entry's compile cost is stored.
const COST_METADATA: &str = "kiln-compile-ms";

/// The most misses whose compile start is remembered at once: a build that asks
/// for endless keys it never stores costs the worker a bounded map.
const MAX_MISSES_REMEMBERED: usize = 100_000;

/// The longest compile a cost may record (a build's own time limit is shorter).
const MAX_COST_MS: u64 = 24 * 3600 * 1000;

#[derive(Debug)]
enum Backend {
    S3 {
        client: aws_sdk_s3::Client,
        settings: S3Settings,
    },
    /// Objects in `dir`, their compile costs in `costs` (same relative keys).
    Local {
        dir: PathBuf,
        costs: PathBuf,
    },
}

#[derive(Debug)]
struct Gate {
    backend: Backend,
    /// The bucket the sandbox's sccache names.
    bucket: String,
    /// `prefix/` (empty for the whole bucket): every key must start with it.
    prefix: String,
    read_only: bool,
    /// Where the build in hand may write.
    scope: Mutex<Scope>,
    ledger: Mutex<Ledger>,
}

/// Where one build's compile-cache entries go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// No code of the submitter runs in the build: its entries are what rustc made
    /// of the sources alone, and every build may read them.
    Shared,
    /// The build runs code of the submitter's: it reads the shared entries and
    /// those of its own pipeline (named here), and writes only its pipeline's.
    Pipeline(String),
}

impl Scope {
    /// The key prefix below the farm's of a pipeline's own entries.
    fn namespace(&self) -> Option<String> {
        match self {
            Scope::Shared => None,
            Scope::Pipeline(name) => Some(format!("pipelines/{name}/")),
        }
    }
}

/// What the cache saved the build in hand, as the gateway saw it pass.
#[derive(Debug, Default)]
struct Ledger {
    /// Keys asked for and not found, with when: a compile of each started then.
    missed: HashMap<String, Instant>,
    savings: Savings,
}

/// The compile time one build's hits saved: the sum of the costs recorded with
/// the entries it read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Savings {
    pub saved_ms: u64,
    /// Hits read with a recorded cost.
    pub hits_with_cost: u64,
    /// Hits read with none (an entry stored before costs were recorded, or by a
    /// member with `--sandbox=off`).
    pub hits_without_cost: u64,
}

impl Ledger {
    fn missed(&mut self, key: &str) {
        if self.missed.len() < MAX_MISSES_REMEMBERED && !self.missed.contains_key(key) {
            self.missed.insert(key.to_owned(), Instant::now());
        }
    }

    /// The compile time of the entry being stored, if its miss was seen.
    fn stored(&mut self, key: &str) -> Option<u64> {
        let started = self.missed.remove(key)?;
        Some((started.elapsed().as_millis() as u64).min(MAX_COST_MS))
    }

    fn hit(&mut self, cost_ms: Option<u64>) {
        match cost_ms {
            Some(ms) => {
                self.savings.saved_ms = self.savings.saved_ms.saturating_add(ms.min(MAX_COST_MS));
                self.savings.hits_with_cost += 1;
            }
            None => self.savings.hits_without_cost += 1,
        }
    }
}

impl Gate {
    fn ledger(&self) -> std::sync::MutexGuard<'_, Ledger> {
        self.ledger.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A recorded cost, as stored: decimal milliseconds. Anything else is no cost.
fn parse_cost(text: &str) -> Option<u64> {
    text.trim().parse::<u64>().ok().map(|ms| ms.min(MAX_COST_MS))
}

/// One socket of the gateway: where the scope of what is written through it
/// comes from.
#[derive(Debug, Clone)]
struct Door {
    gate: Arc<Gate>,
    /// A scope of its own (the member's long-lived cache server's door is always
    /// [`Scope::Shared`]), or none: the build in hand's, as the worker set it.
    fixed: Option<Scope>,
}

impl Door {
    fn namespace(&self) -> Option<String> {
        match &self.fixed {
            Some(scope) => scope.namespace(),
            None => self.gate.scope.lock().unwrap_or_else(|p| p.into_inner()).namespace(),
        }
    }
}

/// The running gateway. Dropping it stops it.
#[derive(Debug)]
pub struct Gateway {
    socket: PathBuf,
    gate: Arc<Gate>,
    region: String,
    key_prefix: String,
    served: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.served.iter().for_each(|s| s.abort());
    }
}

impl Gateway {
    /// Serves `store` on the Unix socket `socket` (replaced if it exists).
    pub async fn start(store: &CacheStore, socket: &Path) -> anyhow::Result<Gateway> {
        let (backend, bucket, region, key_prefix, read_only) = match store {
            CacheStore::S3(settings) => (
                Backend::S3 { client: settings.transfer_client().await, settings: settings.clone() },
                settings.bucket.clone(),
                settings.region.clone(),
                settings.key_prefix.clone(),
                settings.read_only,
            ),
            CacheStore::LocalDisk { dir, read_only } => {
                let costs = dir.join("gateway-costs");
                let dir = dir.join("gateway");
                std::fs::create_dir_all(dir.join(".incoming"))
                    .with_context(|| format!("creating the local cache directory {}", dir.display()))?;
                (
                    Backend::Local { dir, costs },
                    LOCAL_BUCKET.to_owned(),
                    "us-east-1".to_owned(),
                    String::new(),
                    *read_only,
                )
            }
        };
        let prefix = match key_prefix.trim_end_matches('/') {
            "" => String::new(),
            p => format!("{p}/"),
        };
        let gate = Arc::new(Gate {
            backend,
            bucket,
            prefix,
            read_only,
            scope: Mutex::new(Scope::Shared),
            ledger: Mutex::default(),
        });
        let served = serve(Door { gate: gate.clone(), fixed: None }, socket)?;
        Ok(Gateway { socket: socket.to_owned(), gate, region, key_prefix, served: vec![served] })
    }

    /// Opens a second socket whose writes always go where every build reads, for
    /// the member's long-lived cache server alone (see
    /// [`crate::sandbox::cache_server`]): no build's scope, set or forgotten, can
    /// reach it.
    pub fn open_shared_door(&mut self, socket: &Path) -> anyhow::Result<()> {
        let served = serve(Door { gate: self.gate.clone(), fixed: Some(Scope::Shared) }, socket)?;
        self.served.push(served);
        Ok(())
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Sets where the next build's entries go (the worker, before each build).
    pub fn set_scope(&self, scope: Scope) {
        *self.gate.scope.lock().unwrap_or_else(|p| p.into_inner()) = scope;
    }

    /// Who may write this store, in words, for startup and health.
    pub fn writers(&self) -> &'static str {
        if self.gate.read_only {
            "read-only: no build writes the compile cache"
        } else {
            "builds that run no code of their submitter write the shared compile cache; builds that do write only their pipeline's own namespace"
        }
    }

    /// What the hits read since the last call saved, and forgets the misses seen:
    /// called before a build (to start afresh) and after it (its figures).
    pub fn take_savings(&self) -> Savings {
        let mut ledger = self.gate.ledger();
        ledger.missed.clear();
        std::mem::take(&mut ledger.savings)
    }

    /// The settings of a build's own sccache server: the gateway, as the sandbox
    /// reaches it, and no credentials (there are none to give).
    pub fn sandbox_env(&self) -> Vec<(String, String)> {
        vec![
            ("SCCACHE_BUCKET".into(), self.gate.bucket.clone()),
            ("SCCACHE_REGION".into(), self.region.clone()),
            ("SCCACHE_S3_KEY_PREFIX".into(), self.key_prefix.clone()),
            ("SCCACHE_ENDPOINT".into(), format!("127.0.0.1:{SANDBOX_PORT}")),
            ("SCCACHE_S3_USE_SSL".into(), "false".into()),
            ("SCCACHE_S3_NO_CREDENTIALS".into(), "true".into()),
            // The gateway applies the store's encryption itself.
            ("SCCACHE_S3_SERVER_SIDE_ENCRYPTION".into(), "false".into()),
            ("SCCACHE_S3_RW_MODE".into(), if self.gate.read_only { "READ_ONLY" } else { "READ_WRITE" }.into()),
            ("SCCACHE_IDLE_TIMEOUT".into(), "0".into()),
            // (sccache 0.19 and later; for 0.16 the gateway answers the check.)
            ("SCCACHE_SKIP_CACHE_CHECK".into(), "true".into()),
        ]
    }
}

/// Serves `door` on the Unix socket `socket` (replaced if it exists).
fn serve(door: Door, socket: &Path) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let _ = std::fs::remove_file(socket);
    let listener = tokio::net::UnixListener::bind(socket)
        .with_context(|| format!("listening on the cache gateway's socket {}", socket.display()))?;
    let app = axum::Router::new()
        .fallback(handle)
        .layer(DefaultBodyLimit::max(MAX_OBJECT_BYTES))
        .layer(tower::limit::ConcurrencyLimitLayer::new(MAX_CONCURRENT))
        .with_state(door);
    Ok(tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "the cache gateway stopped");
        }
    }))
}

/// An S3-style error answer.
fn refuse(status: StatusCode, code: &str, message: &str) -> Response {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>{code}</Code><Message>{message}</Message></Error>"
    );
    (status, [(header::CONTENT_TYPE, "application/xml")], body).into_response()
}

/// The object key a request names, if the gateway serves it: path-style
/// `/<bucket>/<key>`, the key under the prefix, made of plain segments.
fn object_key(gate: &Gate, uri: &Uri) -> Result<String, &'static str> {
    let forbidden = |why: &'static str| why;
    if uri.query().is_some_and(|q| !q.is_empty() && !q.starts_with("x-id=")) {
        return Err(forbidden("the cache gateway serves single objects only (no listing, no multipart)"));
    }
    let path = uri.path().strip_prefix('/').unwrap_or_default();
    let (bucket, key) = path.split_once('/').unwrap_or((path, ""));
    if bucket != gate.bucket {
        return Err(forbidden("only the farm's cache bucket is served"));
    }
    let Some(rest) = key.strip_prefix(gate.prefix.as_str()) else {
        return Err(forbidden("the key is outside the farm's key prefix"));
    };
    if !sccache_shaped(rest) {
        return Err(forbidden("not a key of sccache's shape"));
    }
    Ok(key.to_owned())
}

/// The shortest and longest digest sccache names an entry by (lowercase hex).
const DIGEST_HEX: std::ops::RangeInclusive<usize> = 32..=128;

/// sccache's own keys below the prefix: `a/b/c/abc...` (a digest in lowercase hex,
/// filed under its first three digits) or its `.sccache_check`.
fn sccache_shaped(rest: &str) -> bool {
    if rest == ".sccache_check" {
        return true;
    }
    let hex = |s: &str| s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    let parts: Vec<&str> = rest.split('/').collect();
    let [a, b, c, digest] = parts[..] else { return false };
    DIGEST_HEX.contains(&digest.len()) && hex(digest) && [a, b, c].concat() == digest[..3]
}

async fn handle(State(door): State<Door>, method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let gate = &door.gate;
    let key = match object_key(gate, &uri) {
        Ok(key) => key,
        Err(why) => {
            tracing::warn!(%method, path = uri.path(), why, "the cache gateway refused a request from a build");
            return refuse(StatusCode::FORBIDDEN, "AccessDenied", why);
        }
    };
    // sccache's startup check (read, then write `.sccache_check`) is answered here,
    // without the store: the worker checked the store at startup, and a store that
    // fails later must cost a build its cache, not its server (sccache 0.16 exits
    // when the check fails, and has no way to skip it).
    if key[gate.prefix.len()..] == *".sccache_check" {
        return match method {
            Method::PUT if gate.read_only => {
                refuse(StatusCode::FORBIDDEN, "AccessDenied", "the compile cache is read-only for this farm")
            }
            Method::PUT => StatusCode::OK.into_response(),
            _ => answer(None, false),
        };
    }
    let range = headers.get(header::RANGE).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let namespace = door.namespace();
    // The same key in the build's own namespace, when it has one.
    let own = namespace.map(|ns| format!("{}{ns}{}", gate.prefix, &key[gate.prefix.len()..]));
    let result = match method {
        Method::GET | Method::HEAD => {
            let with_body = method == Method::GET;
            let range = if with_body { range.as_deref() } else { None };
            gate.read(&key, own.as_deref(), range, with_body).await
        }
        Method::PUT if gate.read_only => {
            return refuse(StatusCode::FORBIDDEN, "AccessDenied", "the compile cache is read-only for this farm");
        }
        Method::PUT => gate.put(&key, own.as_deref().unwrap_or(&key), body).await,
        _ => return refuse(StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed", "only GET, HEAD and PUT of an object"),
    };
    result.unwrap_or_else(|e| {
        tracing::warn!(%method, key, error = %format!("{e:#}"), "the cache store failed a build's request");
        refuse(StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable", "the cache store failed")
    })
}

/// One object as the gateway answers it.
struct Found {
    length: u64,
    total: u64,
    start: u64,
    modified: std::time::SystemTime,
    body: Option<Body>,
}

fn answer(found: Option<Found>, partial: bool) -> Response {
    let Some(found) = found else {
        return refuse(StatusCode::NOT_FOUND, "NoSuchKey", "no such cached object");
    };
    let mut response = Response::new(found.body.unwrap_or_default());
    let h = response.headers_mut();
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(found.length));
    if let Ok(v) = HeaderValue::from_str(&httpdate::fmt_http_date(found.modified)) {
        h.insert(header::LAST_MODIFIED, v);
    }
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    if partial {
        let end = (found.start + found.length).saturating_sub(1);
        if let Ok(v) = HeaderValue::from_str(&format!("bytes {}-{end}/{}", found.start, found.total)) {
            h.insert(header::CONTENT_RANGE, v);
        }
        *response.status_mut() = StatusCode::PARTIAL_CONTENT;
    }
    response
}

/// `bytes=a-b`, `bytes=a-` or `bytes=-n` of an object of `total` bytes: (start, length).
fn parse_range(range: &str, total: u64) -> Option<(u64, u64)> {
    let (first, last) = range.strip_prefix("bytes=")?.split_once('-')?;
    let (start, end) = match (first.trim(), last.trim()) {
        ("", n) => {
            let n: u64 = n.parse().ok()?;
            (total.saturating_sub(n), total.checked_sub(1)?)
        }
        (a, "") => (a.parse().ok()?, total.checked_sub(1)?),
        (a, b) => (a.parse().ok()?, b.parse::<u64>().ok()?.min(total.checked_sub(1)?)),
    };
    (start <= end && start < total).then(|| (start, end - start + 1))
}

impl Gate {
    /// The shared entry `key`, or else the build's own (`own`); a miss of both is
    /// remembered under `key`, as the build asked for it.
    async fn read(
        &self,
        key: &str,
        own: Option<&str>,
        range: Option<&str>,
        with_body: bool,
    ) -> anyhow::Result<Response> {
        for candidate in std::iter::once(key).chain(own) {
            if let Some(found) = self.get(candidate, range, with_body).await? {
                return Ok(found);
            }
        }
        self.ledger().missed(key);
        Ok(answer(None, false))
    }

    /// One stored object, or None when there is none.
    async fn get(&self, key: &str, range: Option<&str>, with_body: bool) -> anyhow::Result<Option<Response>> {
        match &self.backend {
            Backend::Local { dir, costs } => {
                let path = dir.join(key);
                let data = match with_body {
                    true => match tokio::fs::read(&path).await {
                        Ok(data) => Some(data),
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                        Err(e) => return Err(e.into()),
                    },
                    false => None,
                };
                let metadata = match tokio::fs::metadata(&path).await {
                    Ok(m) => m,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                    Err(e) => return Err(e.into()),
                };
                if with_body && range.is_none() {
                    let cost = tokio::fs::read_to_string(costs.join(key)).await.ok().and_then(|t| parse_cost(&t));
                    self.ledger().hit(cost);
                }
                let total = data.as_ref().map_or(metadata.len(), |d| d.len() as u64);
                let modified = metadata.modified()?;
                let (start, length) = match range.map(|r| parse_range(r, total)) {
                    Some(Some(span)) => span,
                    Some(None) => {
                        return Ok(Some(refuse(StatusCode::RANGE_NOT_SATISFIABLE, "InvalidRange", "bad range")));
                    }
                    None => (0, total),
                };
                let body = data.map(|d| Body::from(d[start as usize..(start + length) as usize].to_vec()));
                Ok(Some(answer(Some(Found { length, total, start, modified, body }), range.is_some())))
            }
            Backend::S3 { client, settings } => {
                if !with_body {
                    return match client.head_object().bucket(&settings.bucket).key(key).send().await {
                        Ok(head) => {
                            let length = head.content_length().unwrap_or(0).max(0) as u64;
                            let modified = modified_of(head.last_modified());
                            Ok(Some(answer(
                                Some(Found { length, total: length, start: 0, modified, body: None }),
                                false,
                            )))
                        }
                        Err(e) if e.raw_response().is_some_and(|r| r.status().as_u16() == 404) => Ok(None),
                        Err(e) => Err(anyhow::Error::new(e).context("HEAD in the store")),
                    };
                }
                let request = client.get_object().bucket(&settings.bucket).key(key).set_range(range.map(str::to_owned));
                match request.send().await {
                    Ok(object) => {
                        if range.is_none() {
                            let cost = object.metadata().and_then(|m| m.get(COST_METADATA)).and_then(|t| parse_cost(t));
                            self.ledger().hit(cost);
                        }
                        let modified = modified_of(object.last_modified());
                        let length = object.content_length().unwrap_or(0).max(0) as u64;
                        let (start, total) =
                            object.content_range().and_then(parse_content_range).unwrap_or((0, length));
                        let data = object.body.collect().await.context("reading an object from the store")?;
                        let body = Some(Body::from(data.into_bytes()));
                        Ok(Some(answer(Some(Found { length, total, start, modified, body }), range.is_some())))
                    }
                    Err(e) if e.raw_response().is_some_and(|r| r.status().as_u16() == 404) => Ok(None),
                    Err(e) => Err(anyhow::Error::new(e).context("GET from the store")),
                }
            }
        }
    }

    /// Stores what the build sent for `asked` (the key its sccache named) at `key`
    /// (the same, or its pipeline's own).
    async fn put(&self, asked: &str, key: &str, body: Bytes) -> anyhow::Result<Response> {
        let stored = || StatusCode::OK.into_response();
        let cost = self.ledger().stored(asked);
        match &self.backend {
            Backend::Local { dir, costs } => {
                let path = dir.join(key);
                if tokio::fs::try_exists(&path).await? {
                    return Ok(stored());
                }
                let (dir, cost_path) = (dir.clone(), costs.join(key));
                tokio::task::spawn_blocking(move || -> std::io::Result<()> {
                    // The cost first: an entry readable without its cost would
                    // count as a hit with none.
                    if let Some(ms) = cost {
                        std::fs::create_dir_all(cost_path.parent().unwrap_or(&dir))?;
                        std::fs::write(&cost_path, ms.to_string())?;
                    }
                    let incoming = tempfile::NamedTempFile::new_in(dir.join(".incoming"))?;
                    std::fs::write(incoming.path(), &body)?;
                    std::fs::create_dir_all(path.parent().unwrap_or(&dir))?;
                    // Not over an object another member stored meanwhile.
                    match incoming.persist_noclobber(&path) {
                        Ok(_) => Ok(()),
                        Err(e) if e.error.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
                        Err(e) => Err(e.error),
                    }
                })
                .await??;
                Ok(stored())
            }
            Backend::S3 { client, settings } => {
                match client.head_object().bucket(&settings.bucket).key(key).send().await {
                    Ok(_) => return Ok(stored()),
                    Err(e) if e.raw_response().is_some_and(|r| r.status().as_u16() == 404) => {}
                    Err(e) => return Err(anyhow::Error::new(e).context("HEAD in the store before a write")),
                }
                let mut put = client.put_object().bucket(&settings.bucket).key(key).body(body.into());
                if let Some(ms) = cost {
                    put = put.metadata(COST_METADATA, ms.to_string());
                }
                if settings.server_side_encryption {
                    put = put.server_side_encryption(aws_sdk_s3::types::ServerSideEncryption::Aes256);
                }
                put.send().await.context("PUT into the store")?;
                Ok(stored())
            }
        }
    }
}

fn modified_of(time: Option<&aws_sdk_s3::primitives::DateTime>) -> std::time::SystemTime {
    time.and_then(|t| std::time::SystemTime::try_from(*t).ok()).unwrap_or(std::time::UNIX_EPOCH)
}

/// `bytes a-b/total` → (a, total).
fn parse_content_range(value: &str) -> Option<(u64, u64)> {
    let (span, total) = value.strip_prefix("bytes ")?.split_once('/')?;
    let (start, _) = span.split_once('-')?;
    Some((start.parse().ok()?, total.parse().ok()?))
}

#[cfg(test)]
mod tests;

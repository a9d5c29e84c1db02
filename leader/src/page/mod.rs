//! The status page for people (`GET /`, `/ui/...`): the members, the queue of each
//! ordinal, the pipelines and each pipeline's log and history, rendered on the
//! server (maud escapes every value it writes) and kept current by one small script
//! that asks for the live part again every two seconds.
//!
//! **Trust.** The page is behind the API token like the API: a sign-in form takes
//! the token and sets a session cookie (`HttpOnly`, `SameSite=Strict`) holding a
//! digest of it, never the token. The cookie is accepted for reading; the one
//! action (cancel) is a form carrying a token derived from the session, so another
//! site cannot make a signed-in browser cancel builds. Every answer carries a
//! Content-Security-Policy that allows only the leader's own script and style: a
//! build log or a name that slipped markup past the escaping still runs nothing.

use std::sync::Arc;

use axum::Form;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use kiln_core::api::{PipelineRecord, Status};
use maud::{DOCTYPE, Markup, html};

use crate::auth::{SESSION_COOKIE, SESSION_LIFETIME, form_token, session_cookie, session_of, signed_in, unix_now};
use crate::catalog::{DEFAULT_PAGE, PageQuery};
use crate::error::ApiError;
use crate::health::{ClusterHealth, MemberHealth};
use crate::service::LeaderState;

const CSS: &str = include_str!("app.css");
const JS: &str = include_str!("app.js");

const SECURITY_HEADERS: [(header::HeaderName, &str); 5] = [
    (
        header::CONTENT_SECURITY_POLICY,
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; \
         form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    ),
    (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
    (header::REFERRER_POLICY, "no-referrer"),
    (header::X_FRAME_OPTIONS, "DENY"),
    (header::CACHE_CONTROL, "no-store"),
];

/// Percent-encodes everything but unreserved characters, for a query value.
pub(crate) fn query_value(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn page(title: &str, signed_in_as_session: bool, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · Kiln" }
                link rel="stylesheet" href="/ui/app.css";
                script src="/ui/app.js" defer {}
            }
            body {
                header {
                    h1 { a href="/" { "Kiln" } }
                    span.muted { "compile farm" }
                    @if signed_in_as_session {
                        form method="post" action="/ui/logout" { button type="submit" { "Sign out" } }
                    }
                }
                (body)
            }
        }
    }
}

fn respond(status: StatusCode, markup: Markup) -> Response {
    let mut response = (status, markup).into_response();
    for (name, value) in SECURITY_HEADERS {
        response.headers_mut().insert(name, HeaderValue::from_static(value));
    }
    response
}

fn login_page(problem: Option<&str>) -> Response {
    let body = html! {
        main.login {
            h2 { "Sign in" }
            p { "This farm's page is behind its API token." }
            @if let Some(problem) = problem { p.error role="alert" { (problem) } }
            form method="post" action="/ui/login" {
                label for="token" { "API token" }
                input #token type="password" name="token" autocomplete="current-password" required autofocus;
                button type="submit" { "Sign in" }
            }
            p.muted {
                "kiln up keeps the token in <data-dir>/api-token; the Helm chart in the Secret <release>-api-token."
            }
        }
    };
    respond(StatusCode::UNAUTHORIZED, page("Sign in", false, body))
}

#[derive(Debug, serde::Deserialize)]
pub struct Login {
    token: String,
}

/// `POST /ui/login`: a right token sets the session cookie and goes to the page.
pub async fn login(State(state): State<Arc<LeaderState>>, Form(login): Form<Login>) -> Response {
    let Some(expected) = &state.config.api_token else { return Redirect::to("/").into_response() };
    if !kiln_core::digest::same_secret(login.token.trim(), expected) {
        tracing::warn!("status page: sign-in with a wrong token refused");
        return login_page(Some("That is not this farm's API token."));
    }
    let secure = if state.config.serves_tls { "; Secure" } else { "" };
    let lifetime = SESSION_LIFETIME.as_secs();
    let session = session_of(expected, unix_now() + lifetime);
    let cookie = format!("{SESSION_COOKIE}={session}; Path=/; Max-Age={lifetime}; HttpOnly; SameSite=Strict{secure}");
    let mut response = Redirect::to("/").into_response();
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

/// `POST /ui/logout`: forgets the session.
pub async fn logout() -> Response {
    let mut response = Redirect::to("/").into_response();
    let cookie = format!("{SESSION_COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0");
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

pub async fn css() -> Response {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8"), (header::CACHE_CONTROL, "no-cache")], CSS).into_response()
}

pub async fn js() -> Response {
    ([(header::CONTENT_TYPE, "text/javascript; charset=utf-8"), (header::CACHE_CONTROL, "no-cache")], JS)
        .into_response()
}

/// The filters of the pipeline list, from the query string.
#[derive(Debug, Default, serde::Deserialize)]
pub struct Filters {
    status: Option<String>,
    name: Option<String>,
}

impl Filters {
    fn status(&self) -> Option<Status> {
        let wanted = self.status.as_deref()?;
        Status::ALL.into_iter().find(|s| s.as_str() == wanted)
    }

    fn name(&self) -> Option<String> {
        self.name.clone().map(|n| n.trim().to_owned()).filter(|n| !n.is_empty())
    }

    /// The same filters as a query string, for the live part's address.
    fn query(&self) -> String {
        let mut parts = Vec::new();
        if let Some(status) = self.status() {
            parts.push(format!("status={status}"));
        }
        if let Some(name) = self.name() {
            parts.push(format!("name={}", query_value(&name)));
        }
        if parts.is_empty() { String::new() } else { format!("?{}", parts.join("&")) }
    }
}

/// `GET /`: the farm.
pub async fn farm(
    State(state): State<Arc<LeaderState>>,
    headers: HeaderMap,
    Query(filters): Query<Filters>,
) -> Response {
    if !signed_in(&state, &headers) {
        return login_page(None);
    }
    let part = farm_part(&state, &filters).await.map(|live| ("Farm".to_owned(), live));
    answer(&headers, part, Some(format!("/ui/live/farm{}", filters.query())))
}

/// The whole page around a live part (`src`: the live part's own address), or,
/// without `src`, the live part alone (what the page's script fetches).
fn answer(headers: &HeaderMap, part: Result<(String, Markup), ApiError>, src: Option<String>) -> Response {
    match (part, src) {
        (Err(e), None) => e.into_response(),
        // For a person, in words on a page (escaped like everything else).
        (Err(e), Some(_)) => {
            let body = html! { main { p.error role="alert" { (e) } p { a href="/" { "Back to the farm" } } } };
            respond(e.http_status(), page("Not shown", session_cookie(headers).is_some(), body))
        }
        (Ok((_, live)), None) => respond(StatusCode::OK, live),
        (Ok((title, live)), Some(src)) => {
            let body = html! { main #live data-src=(src) aria-live="polite" { (live) } };
            respond(StatusCode::OK, page(&title, session_cookie(headers).is_some(), body))
        }
    }
}

/// `GET /ui/live/farm`: the live part of the farm's page.
pub async fn farm_live(
    State(state): State<Arc<LeaderState>>,
    headers: HeaderMap,
    Query(filters): Query<Filters>,
) -> Response {
    if !signed_in(&state, &headers) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    answer(&headers, farm_part(&state, &filters).await.map(|live| (String::new(), live)), None)
}

async fn farm_part(state: &LeaderState, filters: &Filters) -> Result<Markup, ApiError> {
    let health = state.cluster_health();
    let counts = state.counts().await?;
    let query = PageQuery { after: 0, limit: DEFAULT_PAGE, status: filters.status(), name_prefix: filters.name() };
    let listed = state.page(query).await?;
    let records: Vec<PipelineRecord> = listed.records.iter().map(|r| state.shown(r)).collect();
    let total: u64 = counts.by_status.values().sum();
    Ok(html! {
        p {
            @if health.all_healthy { span.healthy { "All " (health.workers_expected) " members healthy." } }
            @else { span.unhealthy { (health.members.iter().filter(|m| !m.healthy).count()) " of " (health.workers_expected) " members unhealthy." } }
            " " (total) " pipelines"
            @for (status, count) in &counts.by_status {
                @if *count > 0 { " · " span class={ "status s-" (status) } { (count) " " (status) } }
            }
            "."
        }
        h2 { "Members" }
        (members_table(&health, &counts.pending_by_ordinal))
        h2 #pipelines { "Pipelines" }
        form.filters method="get" action="/" {
            label for="f-status" { "Status"
                select #f-status name="status" {
                    option value="" { "any" }
                    @for status in Status::ALL {
                        option value=(status) selected[filters.status() == Some(status)] { (status) }
                    }
                }
            }
            label for="f-name" { "Name starts with"
                input #f-name type="search" name="name" value=[filters.name()];
            }
            button type="submit" { "Filter" }
        }
        (pipelines_table(&records))
        @if listed.next_after.is_some() {
            p.muted { "The first " (DEFAULT_PAGE) " are shown: filter by status or name, or page through /v0/pipelines." }
        }
        p.muted { "Checked " (health.checked_at) "." }
    })
}

fn age(ms: Option<u64>) -> String {
    match ms {
        None => "never".to_owned(),
        Some(ms) if ms < 1000 => "just now".to_owned(),
        Some(ms) => format!("{:.0} s ago", ms as f64 / 1000.0),
    }
}

fn seconds(ms: Option<u64>) -> String {
    ms.map_or_else(|| "–".to_owned(), |ms| format!("{:.1} s", ms as f64 / 1000.0))
}

fn members_table(health: &ClusterHealth, queues: &std::collections::BTreeMap<u32, u64>) -> Markup {
    html! {
        div.scroll { table {
            thead { tr {
                th scope="col" { "Ordinal" } th scope="col" { "Health" } th scope="col" { "Last report" }
                th scope="col" { "Building" } th scope="col" { "Queue" } th.wide scope="col" { "Sandbox" }
                th.wide scope="col" { "Cache" } th scope="col" { "Disk" }
            } }
            tbody {
                @for member in &health.members { (member_row(member, queues.get(&member.ordinal).copied().unwrap_or(0))) }
            }
        } }
    }
}

fn member_row(member: &MemberHealth, queued: u64) -> Markup {
    html! {
        tr data-ordinal=(member.ordinal) {
            td.num { (member.ordinal) @if member.ordinal == 0 { " (leader)" } }
            td class=(if member.healthy { "healthy" } else { "unhealthy" }) {
                (if member.healthy { "✓ " } else { "✗ " }) (member.message)
            }
            td { (age(member.last_report_age_ms)) }
            td {
                @if let Some(b) = &member.building {
                    a href={ "/ui/pipelines/" (b.pipeline_id) } { "pipeline " (b.pipeline_id) " v" (b.version) }
                    @if b.crates_total > 0 {
                        " " progress value=(b.crates_done) max=(b.crates_total) {}
                        " " (b.crates_done) "/" (b.crates_total) " crates"
                    }
                } @else { span.muted { "idle" } }
            }
            td.num { (queued) " pending" }
            td.wide { (member.sandbox.as_deref().unwrap_or("–")) }
            td.wide { (member.cache.as_deref().unwrap_or("–")) }
            td.num { @if let Some(used) = member.disk_used_percent { (format!("{used:.0} %")) } @else { "–" } }
        }
    }
}

fn status_cell(r: &PipelineRecord) -> Markup {
    html! {
        span class={ "status s-" (r.status) } { (r.status) }
        @if let Some(p) = r.progress.filter(|_| r.status == Status::Compiling) {
            " " progress value=(p.crates_done) max=(p.crates_total) aria-label="crates done" {}
            " " span.progress { (p.crates_done) "/" (p.crates_total) " crates" }
        }
    }
}

fn cache_cell(r: &PipelineRecord) -> Markup {
    html! {
        @match (&r.binary_cache_hit, &r.cache) {
            (Some(hit), _) => {
                "binary cache" br; span.muted { "built as pipeline " (hit.pipeline_id) " v" (hit.version) ", " (format!("{:.1}", hit.saved_ms as f64 / 1000.0)) " s saved" }
            }
            (None, Some(c)) if c.enabled => {
                (c.hits) " hits / " (c.misses) " misses"
                @if c.saved_ms + c.miss_compile_ms > 0 {
                    br; span.muted { (format!("{:.1}", c.saved_ms as f64 / 1000.0)) " s saved, " (c.time_from_cache_percent) " % of compile time from cache" }
                }
            }
            (None, Some(_)) => span.muted { "off" },
            (None, None) => span.muted { "–" },
        }
    }
}

fn pipelines_table(records: &[PipelineRecord]) -> Markup {
    html! {
        @if records.is_empty() {
            p.muted { "No pipelines yet. Submit one with " code { "kiln submit DIR --wait" } "." }
        } @else {
            div.scroll { table #pipeline-table {
                thead { tr {
                    th scope="col" { "ID" } th scope="col" { "Name" } th scope="col" { "Version" } th scope="col" { "Status" }
                    th scope="col" { "Worker" } th scope="col" { "Compile" } th.wide scope="col" { "Upload" }
                    th scope="col" { "Cache" } th.wide scope="col" { "Binary SHA-256" }
                } }
                tbody {
                    @for r in records {
                        tr data-pipeline=(r.name) data-status=(r.status) {
                            td.num { (r.id) }
                            td { a href={ "/ui/pipelines/" (r.id) } { (r.name) } }
                            td.num { (r.version) }
                            td { (status_cell(r)) }
                            td.num {
                                @if let Some(by) = r.built_by {
                                    span title=(r.builder()) { (by) " for " (r.worker) }
                                } @else { (r.worker) }
                            }
                            td.num { (seconds(r.compile_ms)) }
                            td.num.wide { (seconds(r.upload_ms)) }
                            td { (cache_cell(r)) }
                            td.wide {
                                @if let Some(sha) = &r.binary_sha256 {
                                    a href={ "/v0/pipelines/" (r.id) "/binary" } title=(sha) { code { (sha[..12.min(sha.len())]) "…" } }
                                } @else { span.muted { "–" } }
                            }
                        }
                    }
                }
            } }
        }
    }
}

/// `GET /ui/pipelines/{key}`: one pipeline, its history and its log.
pub async fn pipeline(State(state): State<Arc<LeaderState>>, headers: HeaderMap, Path(key): Path<String>) -> Response {
    if !signed_in(&state, &headers) {
        return login_page(None);
    }
    let form = form_token(state.config.api_token.as_deref().unwrap_or(""));
    answer(&headers, pipeline_part(&state, &key, &form).await, Some(format!("/ui/live/pipelines/{}", key_path(&key))))
}

/// `GET /ui/live/pipelines/{key}`: the live part of a pipeline's page.
pub async fn pipeline_live(
    State(state): State<Arc<LeaderState>>,
    headers: HeaderMap,
    Path(key): Path<String>,
) -> Response {
    if !signed_in(&state, &headers) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let form = form_token(state.config.api_token.as_deref().unwrap_or(""));
    answer(&headers, pipeline_part(&state, &key, &form).await, None)
}

/// A key as a path segment: ids and pipeline names are plain, anything else is
/// percent-encoded.
fn key_path(key: &str) -> String {
    query_value(key)
}

async fn pipeline_part(state: &LeaderState, key: &str, form: &str) -> Result<(String, Markup), ApiError> {
    let (record, log) = state.log(key).await?;
    let r = state.shown(&record);
    let live = html! {
        h2 { (r.name) " " span.muted { "(id " (r.id) ", version " (r.version) ")" } }
        dl {
            dt { "Status" } dd { (status_cell(&r)) }
            @if let Some(error) = &r.error { dt { "Error" } dd { (error) } }
            @if let Some(why) = &r.rebuilding { dt { "Rebuilding" } dd { (why) } }
            dt { "Profile" } dd { (r.profile.as_deref().unwrap_or("the farm's")) }
            dt { "Worker" } dd { (r.builder()) ", attempt " (r.attempt) }
            dt { "Compile" } dd { (seconds(r.compile_ms)) }
            dt { "Upload" } dd { (seconds(r.upload_ms)) @if r.upload_retries > 0 { " (" (r.upload_retries) " retries)" } }
            dt { "Cache" } dd { (cache_cell(&r)) }
            dt { "Source SHA-256" } dd { code { (r.source_sha256) } }
            dt { "Binary SHA-256" } dd {
                @if let Some(sha) = &r.binary_sha256 {
                    code { (sha) } " " a href={ "/v0/pipelines/" (r.id) "/binary" } { "download" }
                    @if let Some(size) = r.binary_size { " (" (size) " bytes)" }
                } @else { span.muted { "none yet" } }
            }
            @if let Some(depset) = &r.depset { dt { "Dependency set" } dd { code { (depset) } } }
        }
        @if r.status.cancellable() {
            form method="post" action={ "/ui/pipelines/" (r.id) "/cancel" } {
                input type="hidden" name="form" value=(form);
                button #cancel type="submit" { "Cancel this build" }
            }
        }
        h2 { "History" }
        ol { @for event in &r.history { li { span.muted { (humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_millis(event.at_ms))) } " " (event.event) } } }
        h2 { "Build log" }
        @match &log {
            Some(log) => pre #log { (log) },
            None => p.muted { "No build log yet: its status is " (r.status) "." },
        }
    };
    Ok((r.name.clone(), live))
}

#[derive(Debug, serde::Deserialize)]
pub struct CancelForm {
    form: String,
}

/// `POST /ui/pipelines/{key}/cancel`: the cancel button.
pub async fn cancel(
    State(state): State<Arc<LeaderState>>,
    headers: HeaderMap,
    Path(key): Path<String>,
    Form(submitted): Form<CancelForm>,
) -> Response {
    if !signed_in(&state, &headers) {
        return login_page(None);
    }
    let expected = form_token(state.config.api_token.as_deref().unwrap_or(""));
    if !kiln_core::digest::same_secret(&submitted.form, &expected) {
        return ApiError::Forbidden(
            "this cancel did not come from the farm's own page: reload the page and try again".into(),
        )
        .into_response();
    }
    match state.cancel(&key).await {
        Ok(record) => Redirect::to(&format!("/ui/pipelines/{}", record.id)).into_response(),
        Err(e) => e.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markup_in_values_is_escaped() {
        let live = html! { pre { ("<script>alert(1)</script>") } };
        assert_eq!(live.into_string(), "<pre>&lt;script&gt;alert(1)&lt;/script&gt;</pre>");
    }
}

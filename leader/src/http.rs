//! The leader's HTTP face: `/healthz`, `/cluster_healthz`, `/metrics` and the
//! `/v0/pipelines` API, plus the gRPC service mounted on the same port. Handlers
//! decode, call [`LeaderState`], encode; errors go through [`ApiError`].

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use base64::Engine;
pub use kiln_core::api::SHA256_HEADER;
use kiln_core::api::{Change, PipelineRecord, Status, SubmitRequest, SubmitResponse};
use kiln_core::program::{MAX_PROGRAM_BYTES, ProgramFile};

use crate::auth::{authorized, check_token};
use crate::catalog::{DEFAULT_PAGE, MAX_PAGE, PageQuery};
use crate::error::ApiError;
use crate::grpc::ClusterService;
use crate::page;
use crate::service::LeaderState;

/// The whole router: HTTP API and gRPC service.
pub fn router(state: Arc<LeaderState>) -> Router {
    let token: Arc<str> = state.config.cluster_token.as_str().into();
    let grpc = kiln_proto::cluster_server::ClusterServer::new(ClusterService::new(state.clone()))
        .max_decoding_message_size(kiln_proto::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(kiln_proto::MAX_MESSAGE_BYTES);
    let grpc = tonic::service::interceptor::InterceptedService::new(grpc, check_token(token));

    let api = Router::new()
        .route("/v0/pipelines", get(list_pipelines).post(submit))
        .route("/v0/pipelines/{key}", get(get_pipeline).delete(delete_pipeline))
        .route("/v0/pipelines/{key}/log", get(pipeline_log))
        .route("/v0/pipelines/{key}/binary", get(pipeline_binary))
        .route("/v0/pipelines/{key}/cancel", axum::routing::post(cancel_pipeline))
        .route("/v0/cache-settings", get(cache_settings))
        // Base64 makes a program a third larger; leave room for the JSON around it.
        .layer(DefaultBodyLimit::max((MAX_PROGRAM_BYTES as usize) * 3 / 2 + 64 * 1024))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_api_token));

    // The status page checks the token (or its session) itself: an unsigned
    // visitor gets the sign-in form rather than a JSON error.
    let ui = Router::new()
        .route("/", get(page::farm))
        .route("/ui/live/farm", get(page::farm_live))
        .route("/ui/pipelines/{key}", get(page::pipeline))
        .route("/ui/live/pipelines/{key}", get(page::pipeline_live))
        .route("/ui/pipelines/{key}/cancel", axum::routing::post(page::cancel))
        .route("/ui/login", axum::routing::post(page::login))
        .route("/ui/logout", axum::routing::post(page::logout))
        .route("/ui/app.css", get(page::css))
        .route("/ui/app.js", get(page::js));

    Router::new()
        .merge(ui)
        .route("/healthz", get(healthz))
        .route("/cluster_healthz", get(cluster_healthz))
        .route("/metrics", get(metrics))
        .merge(api)
        .route_service("/kiln.cluster.v1.Cluster/{*rpc}", grpc)
        .with_state(state)
}

fn unauthorized() -> Response {
    ApiError::Unauthorized(
        "this leader wants an API token: pass --api-token, or set KILN_API_TOKEN or KILN_API_TOKEN_FILE \
         (kiln up keeps it in <data-dir>/api-token, found there by the commands run beside it; \
         the Helm chart keeps it in the Secret <release>-api-token)"
            .into(),
    )
    .into_response()
}

async fn require_api_token(
    State(state): State<Arc<LeaderState>>,
    headers: HeaderMap,
    request: axum::extract::Request,
    next: Next,
) -> Response {
    // The page's session cookie reads (the page links to logs and binaries); only
    // the token itself changes anything, so another site cannot submit or delete
    // through a signed-in browser.
    let reads = request.method() == axum::http::Method::GET || request.method() == axum::http::Method::HEAD;
    let allowed = authorized(&state, &headers) || (reads && crate::auth::signed_in(&state, &headers));
    if !allowed {
        return unauthorized();
    }
    next.run(request).await
}

async fn healthz(State(state): State<Arc<LeaderState>>) -> Response {
    match state.self_check().await {
        Ok(()) => Json(serde_json::json!({ "status": "healthy" })).into_response(),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({ "status": "unhealthy", "reason": e.to_string() })),
        )
            .into_response(),
    }
}

async fn cluster_healthz(State(state): State<Arc<LeaderState>>, headers: HeaderMap) -> Response {
    let mut health = state.cluster_health();
    if !authorized(&state, &headers) {
        // Open to probes, but the store's bucket and endpoint are for token holders.
        health.redact();
    }
    let status = if health.all_healthy { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, [(header::CACHE_CONTROL, "no-store")], Json(health)).into_response()
}

async fn metrics(State(state): State<Arc<LeaderState>>, headers: HeaderMap) -> Result<Response, ApiError> {
    if state.config.protect_metrics && !authorized(&state, &headers) {
        return Ok(unauthorized());
    }
    let text = state.metrics_text().await?;
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text).into_response())
}

async fn submit(State(state): State<Arc<LeaderState>>, body: axum::body::Bytes) -> Result<Response, ApiError> {
    let request: SubmitRequest = serde_json::from_slice(&body).map_err(|e| {
        ApiError::BadRequest(format!(
            "the body is not a program: {e}; send {{\"name\": ..., \"files\": [{{\"path\", \"content_base64\", \"executable\"}}]}}"
        ))
    })?;
    let files = request
        .files
        .into_iter()
        .map(|f| {
            let content = base64::engine::general_purpose::STANDARD
                .decode(&f.content_base64)
                .map_err(|e| ApiError::BadRequest(format!("file {:?}: content_base64 is not base64: {e}", f.path)))?;
            Ok(ProgramFile { path: f.path, content, executable: f.executable })
        })
        .collect::<Result<Vec<_>, ApiError>>()?;
    let submitted = state.submit(request.name, files, request.profile).await?;
    let status = if submitted.change == Change::Created { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(SubmitResponse { change: submitted.change, pipeline: state.shown(&submitted.record) }))
        .into_response())
}

/// `GET /v0/pipelines?limit=&after=&status=&name=`: the query of one page.
#[derive(Debug, Default, serde::Deserialize)]
struct ListQuery {
    limit: Option<String>,
    after: Option<String>,
    status: Option<String>,
    name: Option<String>,
}

impl ListQuery {
    fn parse(&self) -> Result<PageQuery, ApiError> {
        let number = |what: &str, value: &Option<String>| -> Result<Option<u64>, ApiError> {
            value
                .as_deref()
                .map(|v| v.parse::<u64>())
                .transpose()
                .map_err(|_| ApiError::BadRequest(format!("{what} must be a whole number, got {value:?}")))
        };
        let limit = number("limit", &self.limit)?.unwrap_or(DEFAULT_PAGE as u64);
        if limit == 0 || limit > MAX_PAGE as u64 {
            return Err(ApiError::BadRequest(format!(
                "limit must be between 1 and {MAX_PAGE} (got {limit}); follow the Link header for the next page"
            )));
        }
        let status = match self.status.as_deref() {
            None => None,
            Some(name) => Some(Status::ALL.into_iter().find(|s| s.as_str() == name).ok_or_else(|| {
                let known: Vec<&str> = Status::ALL.iter().map(|s| s.as_str()).collect();
                ApiError::BadRequest(format!("status {name:?} is not a status: one of {}", known.join(", ")))
            })?),
        };
        Ok(PageQuery {
            after: number("after", &self.after)?.unwrap_or(0),
            limit: limit as usize,
            status,
            name_prefix: self.name.clone().filter(|n| !n.is_empty()),
        })
    }
}

/// One page of pipelines in id order; a `Link: <...>; rel="next"` header names the
/// next page while there is one (RFC 8288, as GitHub's API pages).
async fn list_pipelines(
    State(state): State<Arc<LeaderState>>,
    Query(query): Query<ListQuery>,
) -> Result<Response, ApiError> {
    let page_query = query.parse()?;
    let page = state.page(page_query.clone()).await?;
    let records: Vec<PipelineRecord> = page.records.iter().map(|r| state.shown(r)).collect();
    let mut response = Json(records).into_response();
    if let Some(after) = page.next_after {
        let mut next = format!("/v0/pipelines?after={after}&limit={}", page_query.limit);
        if let Some(status) = page_query.status {
            next.push_str(&format!("&status={status}"));
        }
        if let Some(name) = &page_query.name_prefix {
            next.push_str(&format!("&name={}", page::query_value(name)));
        }
        if let Ok(value) = format!("<{next}>; rel=\"next\"").parse() {
            response.headers_mut().insert(header::LINK, value);
        }
    }
    if !page.unreadable.is_empty() {
        let ids: Vec<String> = page.unreadable.iter().map(u64::to_string).collect();
        if let Ok(value) = ids.join(",").parse() {
            response.headers_mut().insert(UNREADABLE_HEADER, value);
        }
    }
    Ok(response)
}

/// Names the records of a page that could not be read (and were left out).
pub const UNREADABLE_HEADER: &str = "x-kiln-unreadable";

async fn get_pipeline(
    State(state): State<Arc<LeaderState>>,
    Path(key): Path<String>,
) -> Result<Json<PipelineRecord>, ApiError> {
    Ok(Json(state.shown(&state.find(&key).await?)))
}

/// `POST /v0/pipelines/{key}/cancel`: the build stops; the record ends `cancelled`.
async fn cancel_pipeline(
    State(state): State<Arc<LeaderState>>,
    Path(key): Path<String>,
) -> Result<Json<PipelineRecord>, ApiError> {
    Ok(Json(state.cancel(&key).await?.to_api()))
}

/// `GET /v0/cache-settings`: what a CI job needs to share the farm's cache.
async fn cache_settings(State(state): State<Arc<LeaderState>>) -> Json<kiln_core::api::CacheSettings> {
    Json(state.config.cache_settings.clone())
}

async fn delete_pipeline(
    State(state): State<Arc<LeaderState>>,
    Path(key): Path<String>,
) -> Result<Json<PipelineRecord>, ApiError> {
    Ok(Json(state.delete(&key).await?.to_api()))
}

async fn pipeline_log(State(state): State<Arc<LeaderState>>, Path(key): Path<String>) -> Result<Response, ApiError> {
    let (record, log) = state.log(&key).await?;
    let text = match log {
        Some(log) => log,
        None => format!(
            "pipeline {} version {} has no build log yet: its status is {}\n",
            record.id, record.version, record.status
        ),
    };
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response())
}

async fn pipeline_binary(State(state): State<Arc<LeaderState>>, Path(key): Path<String>) -> Result<Response, ApiError> {
    let record = state.find(&key).await?;
    let (sha, file, size) = state.open_binary(&record).await?;
    let body = Body::from_stream(tokio_util::io::ReaderStream::with_capacity(file, kiln_proto::UPLOAD_CHUNK_BYTES));
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
            (header::CONTENT_LENGTH, size.to_string()),
            (header::HeaderName::from_static(SHA256_HEADER), sha),
            (header::CONTENT_DISPOSITION, format!("attachment; filename=\"{}\"", record.name)),
        ],
        body,
    )
        .into_response())
}

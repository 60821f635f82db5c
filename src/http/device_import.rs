//! Bulk device transfer: `POST /v1/devices/import` (NDJSON in, streamed into
//! `service::device_import`) and `GET /v1/devices/export` (NDJSON out, a page at a time in
//! token order), for teams moving their tokens from another push provider.

use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use http_body::Frame;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::openapi::ServerKeyErrors;
use super::{ApiQuery, AppState, ServerCaller};
use crate::error::{ApiError, Result};
use crate::model::device::DeviceState;
use crate::service::device_import::{DeviceLine, ImportReport, Importer};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(import))
        .routes(routes!(export))
}

/// The media type of both directions.
const NDJSON: &str = "application/x-ndjson";
/// Devices read per page of an export.
const EXPORT_PAGE: u32 = 1_000;

fn is_ndjson(request: &Request) -> bool {
    request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| {
            let v = v.trim();
            [
                "application/x-ndjson",
                "application/ndjson",
                "application/jsonl",
            ]
            .iter()
            .any(|t| v.eq_ignore_ascii_case(t))
        })
}

#[utoipa::path(
    post,
    path = "/v1/devices/import",
    operation_id = "import_devices",
    tag = "devices",
    summary = "Import devices from NDJSON, one registration per line",
    description = "Each line is a JSON object: `token` and the fields of `PUT /v1/devices/{token}` \
                   (without `user_auth`). Lines are validated as registrations and upserted in \
                   batches of 1000, each batch committed as it is read; importing the same \
                   lines again writes nothing and counts them `unchanged`. Blank lines are \
                   skipped. The answer lists the first 1000 rejected lines with their reason.",
    request_body(content = String, content_type = "application/x-ndjson",
        description = "one `DeviceLine` JSON object per line"),
    security(("api_key" = [])),
    responses(
        (status = 200, description = "what was imported and which lines were rejected", body = ImportReport),
        ServerKeyErrors,
        (status = 408, description = "the body did not arrive in time; the batches read so far are stored", body = crate::error::ErrorBody),
        (status = 415, description = "Content-Type is not application/x-ndjson", body = crate::error::ErrorBody),
    ),
)]
async fn import(
    State(state): State<AppState>,
    caller: ServerCaller,
    request: Request,
) -> Result<Json<ImportReport>> {
    use http_body_util::BodyExt;
    if !is_ndjson(&request) {
        return Err(ApiError::UnsupportedMediaType(
            "Content-Type must be application/x-ndjson".into(),
        ));
    }
    let mut body = request.into_body();
    let mut importer = Importer::new(&state.store, caller.app_id(), &state.config.devices);
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| body_error(&e))?;
        if let Some(data) = frame.data_ref() {
            importer.feed(data).await?;
        }
    }
    let report = importer.finish().await?;
    tracing::info!(
        app = caller.app_id(),
        created = report.created,
        updated = report.updated,
        unchanged = report.unchanged,
        rejected = report.rejected,
        "devices imported"
    );
    Ok(Json(report))
}

fn body_error(e: &axum::Error) -> ApiError {
    match super::find_cause::<crate::server::BodyTimeout>(e) {
        Some(timeout) => ApiError::RequestTimeout {
            secs: timeout.0.as_secs(),
        },
        None => ApiError::BadRequest(format!("cannot read body: {e}")),
    }
}

/// `?state=` of an export.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct ExportQuery {
    /// Only devices in this state (default `active`).
    state: Option<DeviceState>,
}

#[utoipa::path(
    get,
    path = "/v1/devices/export",
    operation_id = "export_devices",
    tag = "devices",
    summary = "Export devices as NDJSON, one registration per line",
    description = "Every device of the app in `state` (default `active`), in token order, each \
                   line in the form `POST /v1/devices/import` takes. Streamed a page at a time.",
    params(ExportQuery),
    security(("api_key" = [])),
    responses(
        (status = 200, description = "one `DeviceLine` per line", body = String, content_type = "application/x-ndjson"),
        ServerKeyErrors,
        (status = 422, description = "`state` is not a device state", body = crate::error::ErrorBody),
    ),
)]
async fn export(
    State(state): State<AppState>,
    caller: ServerCaller,
    ApiQuery(query): ApiQuery<ExportQuery>,
) -> Response {
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(4);
    let store = state.store.clone();
    let app_id = caller.app_id().to_string();
    let wanted = query.state.unwrap_or_default();
    tokio::spawn(async move {
        let mut after: Option<String> = None;
        loop {
            let page = match store
                .devices_in_state(&app_id, wanted, after.as_deref(), EXPORT_PAGE)
                .await
            {
                Ok(page) => page,
                Err(e) => {
                    tracing::error!(error = %format!("{e:#}"), app = %app_id, "device export failed");
                    // Ends the body with an error, so the client sees a cut-off, not an end.
                    let _ = tx.send(Err(std::io::Error::other("export failed"))).await;
                    return;
                }
            };
            let mut chunk = Vec::with_capacity(page.len() * 256);
            for device in &page {
                if serde_json::to_writer(&mut chunk, &DeviceLine::of(device)).is_err() {
                    let _ = tx.send(Err(std::io::Error::other("export failed"))).await;
                    return;
                }
                chunk.push(b'\n');
            }
            // A closed channel is a client that went away.
            if !chunk.is_empty() && tx.send(Ok(Bytes::from(chunk))).await.is_err() {
                return;
            }
            if page.len() < EXPORT_PAGE as usize {
                return;
            }
            after = page.last().map(|d| d.token.clone());
        }
    });
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, NDJSON)],
        Body::new(ChannelBody(rx)),
    )
        .into_response()
}

/// A response body fed through a channel by the task that pages through the devices.
struct ChannelBody(tokio::sync::mpsc::Receiver<std::io::Result<Bytes>>);

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<std::result::Result<Frame<Bytes>, std::io::Error>>> {
        self.0
            .poll_recv(cx)
            .map(|chunk| chunk.map(|r| r.map(Frame::data)))
    }
}

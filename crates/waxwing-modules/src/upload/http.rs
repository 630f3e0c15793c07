//! `PUT`/`GET /upload/<owner>/<id>/<filename>`: the HTTP half of XEP-0363.
//! The PUT is checked against its signed URL (`token.rs`) and the slot's
//! `Authorization` header, streamed to disk chunk by chunk (never held in
//! memory whole) and counted against the exact size of the slot.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures_util::StreamExt;
use http::{HeaderMap, HeaderValue, StatusCode, header};
use serde::Deserialize;
use tokio::io::AsyncWriteExt;

use super::UploadState;
use super::store::{self, Meta};
use super::token::{self, Slot};

/// Longest wait for the next chunk of a PUT body.
const BODY_IDLE: std::time::Duration = std::time::Duration::from_secs(30);

pub(super) fn routes<S: Clone + Send + Sync + 'static>(state: Arc<UploadState>) -> Router<S> {
    use tower_http::cors::{AllowOrigin, CorsLayer};
    // Web clients of any origin may upload with the slot's headers and
    // show what others shared (XEP-0363 §5 asks for CORS on both).
    let cors = CorsLayer::new()
        .allow_origin(AllowOrigin::any())
        .allow_methods([http::Method::GET, http::Method::HEAD, http::Method::PUT])
        .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE])
        .max_age(std::time::Duration::from_secs(86_400));
    Router::new()
        .route(
            "/upload/{owner}/{id}/{filename}",
            get(get_file).put(put_file),
        )
        .layer(cors)
        .with_state(state)
}

#[derive(Deserialize)]
struct PutQuery {
    size: u64,
    #[serde(default)]
    r#type: String,
    exp: u64,
    sig: String,
}

fn refuse(status: StatusCode, why: &str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        format!("{why}\n"),
    )
        .into_response()
}

/// The media type without parameters, lower case (`image/jpeg`).
fn essence(ct: &str) -> String {
    ct.split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

async fn put_file(
    State(state): State<Arc<UploadState>>,
    Path((owner, id, filename)): Path<(String, String, String)>,
    Query(q): Query<PutQuery>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let Some(key) = state.key() else {
        return refuse(StatusCode::SERVICE_UNAVAILABLE, "upload is unavailable");
    };
    let slot = Slot {
        owner,
        id,
        filename,
        size: q.size,
        content_type: q.r#type,
        expires: q.exp,
    };
    if !token::verify(&key, &slot, &q.sig) {
        return refuse(StatusCode::FORBIDDEN, "this is not a valid upload slot");
    }
    let auth = headers
        .get(header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    if !token::verify_authorization(&key, &slot.owner, &slot.id, auth) {
        return refuse(
            StatusCode::FORBIDDEN,
            "this slot belongs to another upload request",
        );
    }
    if store::now_secs() > slot.expires {
        return refuse(StatusCode::FORBIDDEN, "this upload slot has expired");
    }
    let length = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.parse::<u64>().ok());
    match length {
        None => return refuse(StatusCode::LENGTH_REQUIRED, "Content-Length is required"),
        Some(n) if n > slot.size => {
            return refuse(StatusCode::PAYLOAD_TOO_LARGE, "larger than the slot's size");
        }
        Some(n) if n < slot.size => {
            return refuse(StatusCode::BAD_REQUEST, "smaller than the slot's size");
        }
        Some(_) => {}
    }
    let sent_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    if !slot.content_type.is_empty() && essence(sent_type) != essence(&slot.content_type) {
        return refuse(
            StatusCode::BAD_REQUEST,
            "Content-Type differs from the slot's content type",
        );
    }
    let content_type = if slot.content_type.is_empty() {
        "application/octet-stream".to_string()
    } else {
        slot.content_type.clone()
    };
    // The quota again, now with uploads in flight: slots are cheap, bytes are not.
    let Some(_reservation) = state.reserve(&slot.owner, slot.size).await else {
        return refuse(StatusCode::INSUFFICIENT_STORAGE, "upload quota exceeded");
    };
    let dir = store::slot_dir(&state.config.dir, &slot.owner, &slot.id);
    if let Err(e) = tokio::fs::create_dir_all(&dir).await {
        tracing::error!(dir = %dir.display(), error = %e, "cannot create the upload directory");
        return refuse(StatusCode::INTERNAL_SERVER_ERROR, "cannot store the file");
    }
    if tokio::fs::try_exists(dir.join("data"))
        .await
        .unwrap_or(false)
    {
        return refuse(StatusCode::CONFLICT, "this slot has been used already");
    }
    let part = dir.join("part");
    let result = receive(body, &part, slot.size).await;
    if let Err(resp) = result {
        let _ = tokio::fs::remove_file(&part).await;
        let _ = tokio::fs::remove_dir(&dir).await;
        return resp;
    }
    let meta = Meta {
        content_type,
        filename: slot.filename.clone(),
        uploaded: store::now_secs(),
    };
    let stored = async {
        tokio::fs::write(dir.join("meta"), meta.encode()).await?;
        tokio::fs::rename(&part, dir.join("data")).await
    }
    .await;
    if let Err(e) = stored {
        tracing::error!(dir = %dir.display(), error = %e, "cannot store an upload");
        let _ = tokio::fs::remove_dir_all(&dir).await;
        return refuse(StatusCode::INTERNAL_SERVER_ERROR, "cannot store the file");
    }
    tracing::debug!(owner = %slot.owner, id = %slot.id, size = slot.size, "file uploaded");
    StatusCode::CREATED.into_response()
}

/// Streams `body` into `part`, refusing more or fewer bytes than `size`.
async fn receive(body: Body, part: &std::path::Path, size: u64) -> Result<(), Response> {
    let mut file = tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(part)
        .await
        .map_err(|e| {
            tracing::warn!(path = %part.display(), error = %e, "cannot create an upload file");
            refuse(
                StatusCode::CONFLICT,
                "an upload to this slot is in progress",
            )
        })?;
    let mut stream = body.into_data_stream();
    let mut written = 0u64;
    loop {
        let chunk = match tokio::time::timeout(BODY_IDLE, stream.next()).await {
            Err(_) => return Err(refuse(StatusCode::REQUEST_TIMEOUT, "the upload stalled")),
            Ok(None) => break,
            Ok(Some(Err(_))) => {
                return Err(refuse(StatusCode::BAD_REQUEST, "the upload broke off"));
            }
            Ok(Some(Ok(c))) => c,
        };
        written += chunk.len() as u64;
        if written > size {
            return Err(refuse(
                StatusCode::PAYLOAD_TOO_LARGE,
                "larger than the slot's size",
            ));
        }
        file.write_all(&chunk).await.map_err(|e| {
            tracing::error!(path = %part.display(), error = %e, "cannot write an upload");
            refuse(StatusCode::INSUFFICIENT_STORAGE, "cannot store the file")
        })?;
    }
    if written != size {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            "smaller than the slot's size",
        ));
    }
    file.sync_data().await.map_err(|e| {
        tracing::error!(path = %part.display(), error = %e, "cannot write an upload");
        refuse(StatusCode::INSUFFICIENT_STORAGE, "cannot store the file")
    })?;
    Ok(())
}

/// Types browsers display without running anything; the rest is sent as
/// an attachment (downloaded, never rendered in our origin).
const INLINE_TYPES: &[&str] = &[
    "image/png",
    "image/jpeg",
    "image/gif",
    "image/webp",
    "image/avif",
    "video/mp4",
    "video/webm",
    "video/ogg",
    "audio/mpeg",
    "audio/ogg",
    "audio/webm",
    "audio/wav",
    "audio/mp4",
    "audio/aac",
    "audio/flac",
    "text/plain",
];

async fn get_file(
    State(state): State<Arc<UploadState>>,
    Path((owner, id, filename)): Path<(String, String, String)>,
) -> Response {
    let not_found = || refuse(StatusCode::NOT_FOUND, "no such file");
    // Path segments from the URL are never `..` here: axum matched exactly
    // three segments; a segment with a separator or dot-dot is refused anyway.
    if [&owner, &id].iter().any(|s| !super::is_token(s)) {
        return not_found();
    }
    let dir = store::slot_dir(&state.config.dir, &owner, &id);
    let retention = state.config.retention;
    let (meta, file) = match tokio::task::spawn_blocking({
        let dir = dir.clone();
        move || store::live_meta(&dir, retention, store::now_secs())
    })
    .await
    {
        Ok(Some(meta)) if meta.filename == filename => {
            match tokio::fs::File::open(dir.join("data")).await {
                Ok(f) => (meta, f),
                Err(_) => return not_found(),
            }
        }
        _ => return not_found(),
    };
    let Ok(len) = file.metadata().await.map(|m| m.len()) else {
        return not_found();
    };
    let essence = essence(&meta.content_type);
    let disposition = if INLINE_TYPES.contains(&essence.as_str()) {
        "inline"
    } else {
        "attachment"
    };
    // Other types keep their type but go out as attachments, under a
    // sandboxing policy: never rendered as a document of our origin.
    let ct = HeaderValue::from_str(&meta.content_type)
        .unwrap_or(HeaderValue::from_static("application/octet-stream"));
    let mut resp = Response::new(Body::from_stream(tokio_util::io::ReaderStream::new(file)));
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, ct);
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    h.insert(
        header::CONTENT_DISPOSITION,
        HeaderValue::from_str(&content_disposition(disposition, &meta.filename))
            .unwrap_or(HeaderValue::from_static("attachment")),
    );
    // A file opened directly runs nothing and cannot reach our origin.
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; style-src 'unsafe-inline'; sandbox"),
    );
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=86400, immutable"),
    );
    resp
}

/// `inline; filename="cat.jpg"; filename*=UTF-8''cat.jpg` (RFC 6266): an
/// ASCII fallback with quotes and controls replaced, and the exact name
/// percent-encoded.
fn content_disposition(kind: &str, filename: &str) -> String {
    let ascii: String = filename
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() && c != '"' && c != '\\' || c == ' ' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!(
        "{kind}; filename=\"{ascii}\"; filename*=UTF-8''{}",
        super::percent_encode(filename)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_disposition_escapes_the_name() {
        assert_eq!(
            content_disposition("inline", "cat.jpg"),
            "inline; filename=\"cat.jpg\"; filename*=UTF-8''cat.jpg"
        );
        assert_eq!(
            content_disposition("attachment", "a \"b\"\r\né.txt"),
            "attachment; filename=\"a _b____.txt\"; filename*=UTF-8''a%20%22b%22%0D%0A%C3%A9.txt"
        );
    }
}

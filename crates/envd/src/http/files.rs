//! `GET /files` (download) and `POST /files` (upload): multipart or octet-stream, optionally
//! gzip-encoded, as the run-as user; files written are owned by that user.

use super::HttpError;
use crate::{
    auth::{self, FileAccess, FileOperation},
    fs::entry::METADATA_XATTR_PREFIX,
    paths,
    rpc::filesystem::create_dirs_owned,
    state::Envd,
    users::User,
};
use async_compression::tokio::{bufread::GzipDecoder, bufread::GzipEncoder};
use axum::{
    Json,
    body::Body,
    extract::{Request, State},
    response::{IntoResponse, Response},
};
use bytes::Bytes;
use futures::{Stream, StreamExt, TryStreamExt};
use http::{HeaderMap, HeaderValue, StatusCode, header};
use serde::{Deserialize, Serialize};
use std::{collections::BTreeMap, io, path::Path, pin::Pin, sync::Arc};
use tokio::io::{AsyncWriteExt, BufReader};
use tokio_util::io::{ReaderStream, StreamReader};
use tower::ServiceExt;

/// Limits on client metadata, as E2B's envd enforces them (xattr sizes).
const METADATA_KEY_MAX: usize = 246;
const METADATA_TOTAL_MAX: usize = 4096;
const METADATA_HEADER_PREFIX: &str = "x-metadata-";

type ByteStream = Pin<Box<dyn Stream<Item = io::Result<Bytes>> + Send>>;

#[derive(Deserialize, Default)]
struct FileQuery {
    path: Option<String>,
    username: Option<String>,
    signature: Option<String>,
    signature_expiration: Option<i64>,
}

/// One written file, as the SDKs expect it back.
#[derive(Serialize)]
pub(super) struct WrittenEntry {
    name: String,
    path: String,
    r#type: &'static str,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    metadata: BTreeMap<String, String>,
}

/// Parses the query, authorizes it and resolves the user: everything both directions share.
fn prepare(
    envd: &Envd,
    request: &Request,
    operation: FileOperation,
) -> Result<(FileQuery, User), HttpError> {
    let query: FileQuery = match request.uri().query() {
        Some(query) => serde_urlencoded_query(query)?,
        None => FileQuery::default(),
    };
    let username = query.username.clone().unwrap_or_default();
    let access = FileAccess {
        path: query.path.as_deref().unwrap_or(""),
        username: &username,
        signature: query.signature.as_deref(),
        expiration: query.signature_expiration,
    };
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    auth::authorize_file_access(envd, request.headers(), &access, operation, now)?;
    let user = envd
        .user(query.username.as_deref())
        .map_err(|e| HttpError::new(StatusCode::UNAUTHORIZED, e.to_string()))?;
    Ok((query, user))
}

fn serde_urlencoded_query(query: &str) -> Result<FileQuery, HttpError> {
    axum::extract::Query::<FileQuery>::try_from_uri(
        &format!("/?{query}")
            .parse()
            .map_err(|_| HttpError::bad_request("invalid query string"))?,
    )
    .map(|q| q.0)
    .map_err(|e| HttpError::bad_request(format!("invalid query: {e}")))
}

pub(super) async fn download(
    State(envd): State<Arc<Envd>>,
    request: Request,
) -> Result<Response, HttpError> {
    let (query, user) = prepare(&envd, &request, FileOperation::Read)?;
    let requested = query
        .path
        .ok_or_else(|| HttpError::bad_request("query parameter 'path' is required"))?;
    let path = paths::resolve(&requested, &user.home);
    let metadata = tokio::fs::metadata(&path)
        .await
        .map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => HttpError::new(
                StatusCode::NOT_FOUND,
                format!("path '{}' does not exist", path.display()),
            ),
            io::ErrorKind::PermissionDenied => HttpError::new(
                StatusCode::FORBIDDEN,
                format!("permission denied: '{}'", path.display()),
            ),
            _ => HttpError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("'{}': {e}", path.display()),
            ),
        })?;
    if metadata.is_dir() {
        return Err(HttpError::bad_request(format!(
            "path '{}' is a directory",
            path.display()
        )));
    }
    let disposition = content_disposition(&path);

    let mut response =
        if accepts_gzip(request.headers()) && !request.headers().contains_key(header::RANGE) {
            let file = tokio::fs::File::open(&path)
                .await
                .map_err(|e| read_error(&e, &path))?;
            let encoder =
                GzipEncoder::with_quality(BufReader::new(file), async_compression::Level::Fastest);
            let mut response = Body::from_stream(ReaderStream::new(encoder)).into_response();
            let headers = response.headers_mut();
            headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            response
        } else {
            // Range and conditional requests are tower-http's, identity encoding only.
            let served = tower_http::services::ServeFile::new(&path)
                .oneshot(request)
                .await
                .unwrap_or_else(|never| match never {});
            served.map(Body::new)
        };
    let headers = response.headers_mut();
    headers.insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
    if let Some(disposition) = disposition {
        headers.insert(header::CONTENT_DISPOSITION, disposition);
    }
    Ok(response)
}

fn accepts_gzip(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|coding| {
            let mut parts = coding.split(';').map(str::trim);
            let is_gzip = parts
                .next()
                .is_some_and(|name| name.eq_ignore_ascii_case("gzip"));
            let quality = parts
                .find_map(|param| param.strip_prefix("q="))
                .and_then(|q| q.trim().parse::<f32>().ok())
                .unwrap_or(1.0);
            is_gzip && quality > 0.0
        })
}

fn content_disposition(path: &Path) -> Option<HeaderValue> {
    let name = path
        .file_name()?
        .to_string_lossy()
        .replace(['"', '\\'], "_");
    HeaderValue::from_bytes(format!("inline; filename=\"{name}\"").as_bytes()).ok()
}

fn read_error(err: &io::Error, path: &Path) -> HttpError {
    HttpError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        format!("reading '{}': {err}", path.display()),
    )
}

pub(super) async fn upload(
    State(envd): State<Arc<Envd>>,
    request: Request,
) -> Result<Json<Vec<WrittenEntry>>, HttpError> {
    let (query, user) = prepare(&envd, &request, FileOperation::Write)?;
    let metadata = client_metadata(request.headers())?;
    let content_type = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/octet-stream")
        .to_owned();
    let gzip = match request
        .headers()
        .get(header::CONTENT_ENCODING)
        .map(HeaderValue::as_bytes)
    {
        None => false,
        Some(encoding) if encoding.eq_ignore_ascii_case(b"gzip") => true,
        Some(encoding) if encoding.eq_ignore_ascii_case(b"identity") => false,
        Some(_) => {
            return Err(HttpError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "only gzip content encoding is supported",
            ));
        }
    };
    let body: ByteStream = Box::pin(
        request
            .into_body()
            .into_data_stream()
            .map_err(io::Error::other),
    );
    let body = if gzip { gunzip(body) } else { body };

    let mut written = Vec::new();
    if content_type
        .to_ascii_lowercase()
        .starts_with("multipart/form-data")
    {
        let boundary = multer::parse_boundary(&content_type)
            .map_err(|e| HttpError::bad_request(format!("invalid multipart request: {e}")))?;
        let mut multipart = multer::Multipart::new(body, boundary);
        while let Some(field) = multipart
            .next_field()
            .await
            .map_err(|e| HttpError::bad_request(format!("invalid multipart body: {e}")))?
        {
            if field.name() != Some("file") {
                continue;
            }
            let destination = query
                .path
                .clone()
                .filter(|_| written.is_empty())
                .or_else(|| field.file_name().map(str::to_owned))
                .filter(|p| !p.is_empty())
                .ok_or_else(|| {
                    HttpError::bad_request(
                        "each file part needs a filename with its destination path",
                    )
                })?;
            let path = paths::resolve(&destination, &user.home);
            let data = field.map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e));
            written.push(write_file(&path, &user, data, &metadata).await?);
        }
    } else {
        let destination = query.path.filter(|p| !p.is_empty()).ok_or_else(|| {
            HttpError::bad_request("query parameter 'path' is required for non-multipart uploads")
        })?;
        let path = paths::resolve(&destination, &user.home);
        written.push(write_file(&path, &user, body, &metadata).await?);
    }
    if written.is_empty() {
        return Err(HttpError::bad_request("the request contains no file"));
    }
    Ok(Json(written))
}

fn gunzip(body: ByteStream) -> ByteStream {
    Box::pin(ReaderStream::new(GzipDecoder::new(StreamReader::new(body))))
}

/// `X-Metadata-<key>: <value>` headers, validated against xattr limits.
fn client_metadata(headers: &HeaderMap) -> Result<BTreeMap<String, String>, HttpError> {
    let mut metadata = BTreeMap::new();
    let mut total = 0;
    for (name, value) in headers {
        let Some(key) = name.as_str().strip_prefix(METADATA_HEADER_PREFIX) else {
            continue;
        };
        let value = value.to_str().map_err(|_| {
            HttpError::bad_request(format!("metadata '{key}' must be printable ASCII"))
        })?;
        if key.is_empty() || key.len() > METADATA_KEY_MAX {
            return Err(HttpError::bad_request(format!(
                "metadata key '{key}' must be 1 to {METADATA_KEY_MAX} bytes"
            )));
        }
        total += key.len() + value.len();
        metadata.insert(key.to_owned(), value.to_owned());
    }
    if total > METADATA_TOTAL_MAX {
        return Err(HttpError::bad_request(format!(
            "metadata exceeds {METADATA_TOTAL_MAX} bytes"
        )));
    }
    Ok(metadata)
}

/// Streams `data` into `path` (created or truncated), creating parent directories; everything
/// created belongs to `user`.
async fn write_file(
    path: &Path,
    user: &User,
    data: impl Stream<Item = io::Result<Bytes>>,
    metadata: &BTreeMap<String, String>,
) -> Result<WrittenEntry, HttpError> {
    if tokio::fs::metadata(path).await.is_ok_and(|m| m.is_dir()) {
        return Err(HttpError::bad_request(format!(
            "path '{}' is a directory",
            path.display()
        )));
    }
    if let Some(parent) = path.parent() {
        let (parent, owner) = (parent.to_owned(), user.clone());
        tokio::task::spawn_blocking(move || create_dirs_owned(&parent, &owner))
            .await
            .map_err(|e| HttpError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
            .map_err(|e| write_error(&e, path))?;
    }
    let mut file = tokio::fs::File::create(path)
        .await
        .map_err(|e| write_error(&e, path))?;
    let mut data = std::pin::pin!(data);
    while let Some(chunk) = data.next().await {
        let chunk = chunk.map_err(|e| {
            HttpError::bad_request(format!("reading upload of '{}': {e}", path.display()))
        })?;
        file.write_all(&chunk)
            .await
            .map_err(|e| write_error(&e, path))?;
    }
    file.flush().await.map_err(|e| write_error(&e, path))?;
    drop(file);
    user.take_ownership(path);
    for (key, value) in metadata {
        xattr::set(
            path,
            format!("{METADATA_XATTR_PREFIX}{key}"),
            value.as_bytes(),
        )
        .map_err(|e| {
            HttpError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot store metadata on '{}': {e}", path.display()),
            )
        })?;
    }
    Ok(WrittenEntry {
        name: path
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned()),
        path: path.to_string_lossy().into_owned(),
        r#type: "file",
        metadata: metadata.clone(),
    })
}

fn write_error(err: &io::Error, path: &Path) -> HttpError {
    let path = path.display();
    match err.kind() {
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => HttpError::new(
            StatusCode::INSUFFICIENT_STORAGE,
            format!("not enough disk space to write '{path}'"),
        ),
        io::ErrorKind::IsADirectory => {
            HttpError::bad_request(format!("path '{path}' is a directory"))
        }
        io::ErrorKind::NotADirectory => {
            HttpError::bad_request(format!("a parent of '{path}' is not a directory"))
        }
        io::ErrorKind::PermissionDenied => HttpError::new(
            StatusCode::FORBIDDEN,
            format!("permission denied: '{path}'"),
        ),
        _ => HttpError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("writing '{path}': {err}"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::accepts_gzip;
    use http::{HeaderMap, HeaderValue};

    #[test]
    fn gzip_negotiation() {
        let check = |value: &'static str| {
            let mut headers = HeaderMap::new();
            headers.insert("accept-encoding", HeaderValue::from_static(value));
            accepts_gzip(&headers)
        };
        assert!(check("gzip, deflate"));
        assert!(check("zstd,gzip,br"));
        assert!(check("GZIP;q=0.5"));
        assert!(!check("gzip;q=0"));
        assert!(!check("identity"));
        assert!(!accepts_gzip(&HeaderMap::new()));
    }
}

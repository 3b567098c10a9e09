//! An in-process stand-in for OCI Object Storage's native API, on loopback.
//!
//! It is **not** the real service: it follows Oracle's documented API (the table in
//! `/work/shared/reference/oci.md` §4) and verifies request signatures the way Oracle documents
//! them (§1), and its verifier is itself checked against Oracle's published signing vectors
//! (`oci_native::the_stand_in_verifies_oracles_published_signing_vectors`). Behaviour Oracle does
//! not document is a guess; differences from the service are listed here:
//!
//! - one namespace ([`NAMESPACE`]) and one bucket ([`BUCKET`]), objects in memory;
//! - ListObjects pages after [`PAGE_SIZE`] entries (the service: up to 1000) so that paging
//!   with `nextStartWith` is exercised by small tests;
//! - no versioning, storage tiers, checksums headers or `opc-meta-*` round trips.
//!
//! What it enforces, each answered as the service does (JSON `{code, message}` and an
//! `opc-request-id`):
//! - every request signed (`Signature` scheme, `rsa-sha256`, a known `keyId`) over at least
//!   `date`/`x-date`, `(request-target)` (the raw path and query received) and `host`; POST
//!   bodies also over `content-length`, `content-type` and a matching `x-content-sha256`;
//!   a date more than 5 minutes off is refused → 401 `NotAuthenticated`;
//! - bodies with `Content-Length`, never `Transfer-Encoding: chunked` → 411 `LengthRequired`;
//! - object names percent-encoded except `/` and RFC 3986 unreserved characters → 400;
//! - `if-none-match: *` on PutObject/CommitMultipartUpload of an existing object, a stale
//!   `if-match`, or any condition on UploadPart → 412; `if-none-match: <etag>` on GET → 304;
//! - one byte range per GET (`a-b`, `a-`, `-n`) → 206 with `content-range`; past the end → 416;
//! - commits must list uploaded parts with their etags.

use base64::Engine as _;
use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rsa::{
    RsaPublicKey,
    pkcs1v15::{Signature, VerifyingKey},
    sha2::{Digest, Sha256},
    signature::Verifier,
};
use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

pub const NAMESPACE: &str = "kilntest";
pub const BUCKET: &str = "kiln-templates";
pub const PAGE_SIZE: usize = 2;

struct Object {
    data: Bytes,
    etag: String,
    modified: SystemTime,
}

struct Upload {
    object: String,
    parts: BTreeMap<u32, (String, Bytes)>,
}

#[derive(Default)]
struct State {
    keys: HashMap<String, RsaPublicKey>,
    objects: BTreeMap<String, Object>,
    uploads: HashMap<String, Upload>,
    counter: u64,
    /// `<method> <path and query> -> <status>` of every request.
    log: Vec<String>,
}

impl State {
    fn next_id(&mut self) -> String {
        self.counter += 1;
        format!("{:08x}-{:04x}", self.counter, self.counter % 0xffff)
    }
}

/// The stand-in on 127.0.0.1:<free port>.
pub struct OciServer {
    pub addr: std::net::SocketAddr,
    state: Arc<Mutex<State>>,
}

impl OciServer {
    /// Accepts signatures of the given `(keyId, public key)` pairs.
    pub async fn start(keys: Vec<(String, RsaPublicKey)>) -> Self {
        let state = Arc::new(Mutex::new(State {
            keys: keys.into_iter().collect(),
            ..State::default()
        }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = state.clone();
        tokio::spawn(async move {
            loop {
                let Ok((socket, _)) = listener.accept().await else {
                    continue;
                };
                let state = shared.clone();
                let handler = hyper::service::service_fn(move |request| {
                    let state = state.clone();
                    async move { Ok::<_, std::convert::Infallible>(handle(&state, request).await) }
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(socket), handler),
                );
            }
        });
        Self { addr, state }
    }

    /// Every request so far, as `<method> <path and query> -> <status>`.
    pub fn log(&self) -> Vec<String> {
        self.state.lock().unwrap().log.clone()
    }

    /// Names of the stored objects.
    pub fn names(&self) -> Vec<String> {
        self.state.lock().unwrap().objects.keys().cloned().collect()
    }

    /// Multipart uploads neither committed nor aborted.
    pub fn open_uploads(&self) -> usize {
        self.state.lock().unwrap().uploads.len()
    }
}

type Answer = Response<Full<Bytes>>;

async fn handle(state: &Mutex<State>, request: Request<hyper::body::Incoming>) -> Answer {
    let (parts, body) = request.into_parts();
    let line = format!(
        "{} {}",
        parts.method,
        parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("")
    );
    let chunked = parts
        .headers
        .get(header::TRANSFER_ENCODING)
        .is_some_and(|v| v.to_str().unwrap_or("").contains("chunked"));
    let answer = match body.collect().await {
        Err(e) => error(StatusCode::BAD_REQUEST, "InvalidParameter", &e.to_string()),
        Ok(_) if chunked => error(
            StatusCode::LENGTH_REQUIRED,
            "LengthRequired",
            "chunked request bodies are not supported",
        ),
        Ok(collected) => {
            let body = collected.to_bytes();
            let mut state = state.lock().unwrap();
            serve(&mut state, &parts, body)
        }
    };
    let mut state = state.lock().unwrap();
    state
        .log
        .push(format!("{line} -> {}", answer.status().as_u16()));
    let id = state.next_id();
    let mut answer = answer;
    answer
        .headers_mut()
        .insert("opc-request-id", id.parse().unwrap());
    answer
}

fn serve(state: &mut State, parts: &http::request::Parts, body: Bytes) -> Answer {
    let method = &parts.method;
    let has_body = *method == Method::PUT || *method == Method::POST;
    if has_body && !parts.headers.contains_key(header::CONTENT_LENGTH) {
        return error(
            StatusCode::LENGTH_REQUIRED,
            "LengthRequired",
            "Content-Length is required",
        );
    }
    let path = parts.uri.path();
    let Some(rest) = path.strip_prefix(&format!("/n/{NAMESPACE}/b/{BUCKET}/")) else {
        return error(StatusCode::NOT_FOUND, "BucketNotFound", "no such bucket");
    };
    let (kind, raw_name) = match rest.split_once('/') {
        Some((kind, name)) => (kind, name),
        None => (rest, ""),
    };
    // PutObject and UploadPart bodies are not signed; everything else with a body is.
    let data_body = *method == Method::PUT;
    if let Err(reason) = verify(state, parts, &body, data_body, SystemTime::now()) {
        return error(StatusCode::UNAUTHORIZED, "NotAuthenticated", &reason);
    }
    if let Some(c) = raw_name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "-._~/%".contains(*c)))
    {
        return error(
            StatusCode::BAD_REQUEST,
            "InvalidParameter",
            &format!("{c:?} must be percent-encoded in an object name"),
        );
    }
    let name = percent_encoding::percent_decode_str(raw_name)
        .decode_utf8_lossy()
        .into_owned();
    let query: HashMap<String, String> = parts
        .uri
        .query()
        .map(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .into_owned()
                .collect()
        })
        .unwrap_or_default();
    let headers = &parts.headers;
    match (method.clone(), kind, name.is_empty()) {
        (Method::GET | Method::HEAD, "o", false) => {
            get(state, &name, headers, *method == Method::HEAD)
        }
        (Method::PUT, "o", false) => put(state, &name, headers, body),
        (Method::DELETE, "o", false) => match state.objects.remove(&name) {
            Some(_) => empty(StatusCode::NO_CONTENT),
            None => error(StatusCode::NOT_FOUND, "ObjectNotFound", &name),
        },
        (Method::GET, "o", true) => list(state, &query),
        (Method::POST, "u", true) => create_upload(state, &body),
        (Method::PUT, "u", false) => upload_part(state, &name, &query, headers, body),
        (Method::POST, "u", false) => commit(state, &name, &query, headers, &body),
        (Method::DELETE, "u", false) => {
            match query
                .get("uploadId")
                .and_then(|id| state.uploads.remove(id))
            {
                Some(_) => empty(StatusCode::NO_CONTENT),
                None => error(StatusCode::NOT_FOUND, "NoSuchUpload", "no such upload"),
            }
        }
        _ => error(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            &format!("{method} {path}"),
        ),
    }
}

/// Checks the request's signature as Oracle documents it; `Err` says why it is refused.
fn verify(
    state: &State,
    parts: &http::request::Parts,
    body: &[u8],
    data_body: bool,
    now: SystemTime,
) -> Result<(), String> {
    let (key_id, names, signature) = authorization(&parts.headers)?;
    let key = state
        .keys
        .get(&key_id)
        .ok_or_else(|| format!("unknown keyId {key_id}"))?;
    let date_name = if names.iter().any(|n| n == "x-date") {
        "x-date"
    } else {
        "date"
    };
    let mut required = vec![date_name, "(request-target)", "host"];
    let body_signed = !data_body && (parts.method == Method::POST || parts.method == Method::PUT);
    if body_signed {
        required.extend(["content-length", "content-type", "x-content-sha256"]);
    }
    for name in required {
        if !names.iter().any(|n| n == name) {
            return Err(format!("{name} is not signed"));
        }
    }
    if body_signed {
        let hash = base64::engine::general_purpose::STANDARD.encode(Sha256::digest(body));
        if header_text(&parts.headers, "x-content-sha256")? != hash {
            return Err("x-content-sha256 does not match the body".into());
        }
        if header_text(&parts.headers, "content-length")? != body.len().to_string() {
            return Err("content-length does not match the body".into());
        }
    }
    let date = parse_date(&header_text(&parts.headers, date_name)?)
        .ok_or_else(|| format!("{date_name} is not an IMF-fixdate"))?;
    let skew = now
        .duration_since(date)
        .or_else(|_| date.duration_since(now))
        .unwrap_or_default();
    if skew > Duration::from_secs(300) {
        return Err(format!("{date_name} is {skew:?} off"));
    }
    let text = signing_string(parts, &names)?;
    let signature = Signature::try_from(signature.as_slice()).map_err(|e| e.to_string())?;
    VerifyingKey::<Sha256>::new(key.clone())
        .verify(text.as_bytes(), &signature)
        .map_err(|_| "the signature does not verify".to_string())
}

/// An IMF-fixdate, its weekday not checked: Oracle's published vectors are dated
/// "Thu, 05 Jan 2014", a Sunday.
fn parse_date(value: &str) -> Option<SystemTime> {
    let (_, rest) = value.split_once(", ")?;
    let naive = chrono::NaiveDateTime::parse_from_str(rest, "%d %b %Y %H:%M:%S GMT").ok()?;
    Some(naive.and_utc().into())
}

/// `keyId`, the signed header names and the signature bytes of a `Signature` authorization.
fn authorization(headers: &HeaderMap) -> Result<(String, Vec<String>, Vec<u8>), String> {
    let value = header_text(headers, "authorization")?;
    let params = value
        .strip_prefix("Signature ")
        .ok_or("the authorization scheme is not Signature")?;
    // `k="v"` pairs separated by commas; values hold no quotes.
    let mut found = HashMap::new();
    for pair in params.split("\",") {
        let (key, value) = pair.split_once("=\"").ok_or("malformed authorization")?;
        found.insert(
            key.trim().to_string(),
            value.trim_end_matches('"').to_string(),
        );
    }
    if found.get("algorithm").map(String::as_str) != Some("rsa-sha256") {
        return Err("algorithm is not rsa-sha256".into());
    }
    if found.get("version").is_some_and(|v| v != "1") {
        return Err("version is not 1".into());
    }
    let key_id = found.remove("keyId").ok_or("no keyId")?;
    let names = found
        .get("headers")
        .ok_or("no headers")?
        .split(' ')
        .map(str::to_string)
        .collect();
    let signature = base64::engine::general_purpose::STANDARD
        .decode(found.get("signature").ok_or("no signature")?)
        .map_err(|e| format!("signature: {e}"))?;
    Ok((key_id, names, signature))
}

/// The signing string rebuilt from the request as received.
fn signing_string(parts: &http::request::Parts, names: &[String]) -> Result<String, String> {
    names
        .iter()
        .map(|name| {
            let value = if name == "(request-target)" {
                format!(
                    "{} {}",
                    parts.method.as_str().to_ascii_lowercase(),
                    parts
                        .uri
                        .path_and_query()
                        .map(|p| p.as_str())
                        .unwrap_or("/")
                )
            } else {
                header_text(&parts.headers, name)?
            };
            Ok(format!("{name}: {value}"))
        })
        .collect::<Result<Vec<_>, String>>()
        .map(|lines| lines.join("\n"))
}

fn header_text(headers: &HeaderMap, name: &str) -> Result<String, String> {
    headers
        .get(name)
        .ok_or_else(|| format!("{name} is signed but not sent"))?
        .to_str()
        .map(str::to_string)
        .map_err(|_| format!("{name} is not ASCII"))
}

fn get(state: &State, name: &str, headers: &HeaderMap, head: bool) -> Answer {
    let Some(object) = state.objects.get(name) else {
        return error(StatusCode::NOT_FOUND, "ObjectNotFound", name);
    };
    let condition = |h| headers.get(h).map(|v| v.to_str().unwrap_or("").to_string());
    if condition(header::IF_MATCH).is_some_and(|m| m != "*" && m != object.etag) {
        return error(StatusCode::PRECONDITION_FAILED, "IfMatchFailed", name);
    }
    if condition(header::IF_NONE_MATCH).is_some_and(|m| m == "*" || m == object.etag) {
        return empty(StatusCode::NOT_MODIFIED);
    }
    let len = object.data.len() as u64;
    let mut builder = Response::builder()
        .header("etag", &object.etag)
        .header("last-modified", httpdate::fmt_http_date(object.modified));
    let (status, bytes) = match condition(header::RANGE) {
        None => (StatusCode::OK, object.data.clone()),
        Some(range) => {
            let Some((first, last)) = parse_range(&range, len) else {
                return error(StatusCode::RANGE_NOT_SATISFIABLE, "InvalidRange", &range);
            };
            builder = builder.header("content-range", format!("bytes {first}-{last}/{len}"));
            (
                StatusCode::PARTIAL_CONTENT,
                object.data.slice(first as usize..last as usize + 1),
            )
        }
    };
    let builder = builder
        .status(status)
        .header(header::CONTENT_LENGTH, bytes.len());
    if head {
        builder.body(Full::new(Bytes::new())).unwrap()
    } else {
        builder.body(Full::new(bytes)).unwrap()
    }
}

/// First and last byte of one RFC 7233 range within `len` bytes; `None` if unsatisfiable.
fn parse_range(value: &str, len: u64) -> Option<(u64, u64)> {
    let spec = value.strip_prefix("bytes=")?;
    if spec.contains(',') || len == 0 {
        return None;
    }
    let (first, last) = spec.split_once('-')?;
    if first.is_empty() {
        let n: u64 = last.parse().ok()?;
        return (n > 0).then(|| (len.saturating_sub(n), len - 1));
    }
    let first: u64 = first.parse().ok()?;
    let last = if last.is_empty() {
        len - 1
    } else {
        last.parse::<u64>().ok()?.min(len - 1)
    };
    (first < len && first <= last).then_some((first, last))
}

/// 412 if `if-none-match: *` finds the object or `if-match` does not match it.
fn write_conditions(state: &State, name: &str, headers: &HeaderMap) -> Option<Answer> {
    let existing = state.objects.get(name);
    if let Some(value) = headers.get(header::IF_NONE_MATCH) {
        if value != "*" {
            return Some(error(
                StatusCode::BAD_REQUEST,
                "InvalidParameter",
                "if-none-match only accepts *",
            ));
        }
        if existing.is_some() {
            return Some(error(
                StatusCode::PRECONDITION_FAILED,
                "IfNoneMatchFailed",
                name,
            ));
        }
    }
    if let Some(value) = headers.get(header::IF_MATCH)
        && existing.is_none_or(|o| value.to_str().unwrap_or("") != o.etag)
    {
        return Some(error(
            StatusCode::PRECONDITION_FAILED,
            "IfMatchFailed",
            name,
        ));
    }
    None
}

fn store(state: &mut State, name: &str, data: Bytes) -> Answer {
    let etag = state.next_id();
    let modified = SystemTime::now();
    state.objects.insert(
        name.to_string(),
        Object {
            data,
            etag: etag.clone(),
            modified,
        },
    );
    Response::builder()
        .header("etag", etag)
        .header("last-modified", httpdate::fmt_http_date(modified))
        .body(Full::new(Bytes::new()))
        .unwrap()
}

fn put(state: &mut State, name: &str, headers: &HeaderMap, body: Bytes) -> Answer {
    if let Some(refused) = write_conditions(state, name, headers) {
        return refused;
    }
    store(state, name, body)
}

fn list(state: &State, query: &HashMap<String, String>) -> Answer {
    let prefix = query.get("prefix").map(String::as_str).unwrap_or("");
    let start = query.get("start").map(String::as_str).unwrap_or("");
    let limit = query
        .get("limit")
        .and_then(|l| l.parse().ok())
        .unwrap_or(1000usize)
        .min(PAGE_SIZE);
    let delimiter = match query.get("delimiter").map(String::as_str) {
        None => false,
        Some("/") => true,
        Some(_) => {
            return error(
                StatusCode::BAD_REQUEST,
                "InvalidParameter",
                "delimiter must be /",
            );
        }
    };
    let fields: BTreeSet<&str> = query
        .get("fields")
        .map(|f| f.split(',').collect())
        .unwrap_or_default();
    let mut objects = Vec::new();
    let mut prefixes = BTreeSet::new();
    let mut next = None;
    let mut count = 0;
    for (name, object) in state
        .objects
        .iter()
        .filter(|(n, _)| n.as_str() >= start && n.starts_with(prefix))
    {
        if count == limit {
            next = Some(name.clone());
            break;
        }
        if delimiter && let Some(i) = name[prefix.len()..].find('/') {
            if prefixes.insert(name[..prefix.len() + i + 1].to_string()) {
                count += 1;
            }
            continue;
        }
        let mut summary = serde_json::json!({ "name": name });
        if fields.contains("size") {
            summary["size"] = object.data.len().into();
        }
        if fields.contains("etag") {
            summary["etag"] = object.etag.clone().into();
        }
        if fields.contains("timeCreated") {
            summary["timeCreated"] = chrono::DateTime::<chrono::Utc>::from(object.modified)
                .to_rfc3339()
                .into();
        }
        objects.push(summary);
        count += 1;
    }
    let mut listing = serde_json::json!({ "objects": objects, "prefixes": prefixes });
    if let Some(next) = next {
        listing["nextStartWith"] = next.into();
    }
    json(StatusCode::OK, &listing)
}

fn create_upload(state: &mut State, body: &[u8]) -> Answer {
    let Some(object) = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["object"].as_str().map(str::to_string))
    else {
        return error(
            StatusCode::BAD_REQUEST,
            "InvalidParameter",
            "object is required",
        );
    };
    let id = state.next_id();
    state.uploads.insert(
        id.clone(),
        Upload {
            object: object.clone(),
            parts: BTreeMap::new(),
        },
    );
    json(
        StatusCode::OK,
        &serde_json::json!({
            "namespace": NAMESPACE, "bucket": BUCKET, "object": object, "uploadId": id,
            "timeCreated": chrono::Utc::now().to_rfc3339(),
        }),
    )
}

fn upload_part(
    state: &mut State,
    name: &str,
    query: &HashMap<String, String>,
    headers: &HeaderMap,
    body: Bytes,
) -> Answer {
    if headers.contains_key(header::IF_MATCH) || headers.contains_key(header::IF_NONE_MATCH) {
        // The service applies a condition on UploadPart to the part, which never matches.
        return error(StatusCode::PRECONDITION_FAILED, "IfMatchFailed", name);
    }
    let number = query
        .get("uploadPartNum")
        .and_then(|n| n.parse::<u32>().ok())
        .filter(|n| (1..=10_000).contains(n));
    let Some(number) = number else {
        return error(
            StatusCode::BAD_REQUEST,
            "InvalidParameter",
            "uploadPartNum must be 1 to 10000",
        );
    };
    let etag = state.next_id();
    let Some(upload) = query
        .get("uploadId")
        .and_then(|id| state.uploads.get_mut(id))
        .filter(|u| u.object == name)
    else {
        return error(StatusCode::NOT_FOUND, "NoSuchUpload", name);
    };
    upload.parts.insert(number, (etag.clone(), body));
    Response::builder()
        .header("etag", etag)
        .body(Full::new(Bytes::new()))
        .unwrap()
}

fn commit(
    state: &mut State,
    name: &str,
    query: &HashMap<String, String>,
    headers: &HeaderMap,
    body: &[u8],
) -> Answer {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Commit {
        parts_to_commit: Vec<Part>,
    }
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Part {
        part_num: u32,
        etag: String,
    }
    let Some(id) = query
        .get("uploadId")
        .filter(|id| state.uploads.get(*id).is_some_and(|u| u.object == name))
        .cloned()
    else {
        return error(StatusCode::NOT_FOUND, "NoSuchUpload", name);
    };
    let commit: Commit = match serde_json::from_slice(body) {
        Ok(commit) => commit,
        Err(e) => return error(StatusCode::BAD_REQUEST, "InvalidParameter", &e.to_string()),
    };
    if commit.parts_to_commit.is_empty() {
        return error(
            StatusCode::BAD_REQUEST,
            "InvalidParameter",
            "no parts to commit",
        );
    }
    if let Some(refused) = write_conditions(state, name, headers) {
        return refused;
    }
    let upload = &state.uploads[&id];
    let mut numbers = BTreeSet::new();
    let mut data = Vec::new();
    let mut parts = commit.parts_to_commit;
    parts.sort_by_key(|p| p.part_num);
    for part in &parts {
        match upload.parts.get(&part.part_num) {
            Some((etag, bytes)) if *etag == part.etag && numbers.insert(part.part_num) => {
                data.extend_from_slice(bytes);
            }
            _ => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "InvalidParameter",
                    &format!(
                        "part {} with etag {} was not uploaded",
                        part.part_num, part.etag
                    ),
                );
            }
        }
    }
    state.uploads.remove(&id);
    store(state, name, data.into())
}

fn json(status: StatusCode, value: &serde_json::Value) -> Answer {
    let body = value.to_string();
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CONTENT_LENGTH, body.len())
        .body(Full::new(Bytes::from(body)))
        .unwrap()
}

fn error(status: StatusCode, code: &str, message: &str) -> Answer {
    json(
        status,
        &serde_json::json!({ "code": code, "message": message }),
    )
}

fn empty(status: StatusCode) -> Answer {
    Response::builder()
        .status(status)
        .body(Full::new(Bytes::new()))
        .unwrap()
}

/// A state holding only `keys`, for checking [`verify`] on hand-made requests.
pub fn verifier(
    keys: Vec<(String, RsaPublicKey)>,
) -> impl Fn(&http::request::Parts, &[u8], SystemTime) -> Result<(), String> {
    let state = State {
        keys: keys.into_iter().collect(),
        ..State::default()
    };
    move |parts, body, now| verify(&state, parts, body, false, now)
}

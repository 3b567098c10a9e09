//! [`OciObjectStorage`]: an [`ObjectStore`] over OCI Object Storage's native API, every
//! request signed by `oracle-auth` (an API key from `~/.oci/config`, or an instance principal).
//!
//! `object_store` has no OCI provider, and the S3 Compatibility API only accepts Customer
//! Secret Keys, which instance principals cannot use; hence this module.
//!
//! | `ObjectStore` | Object Storage request |
//! |---|---|
//! | `put_opts` | `PUT /n/{ns}/b/{bucket}/o/{name}`; `PutMode::Create` sends `if-none-match: *` (412 → `AlreadyExists`), `Update` sends `if-match` |
//! | `put_multipart_opts` | `POST …/u` (CreateMultipartUpload); parts `PUT …/u/{name}?uploadId&uploadPartNum` in whatever parallelism the caller drives; `complete` = `POST …/u/{name}?uploadId` with `partsToCommit` and the parts' etags; `abort` = `DELETE` of the upload |
//! | `get_opts` | `GET`/`HEAD …/o/{name}`; ranges `bytes=a-b`, `bytes=a-`, `bytes=-n` (one range, as OCI allows) → 206; `if-match`/`if-none-match` sent, date preconditions checked on the answer |
//! | `delete_stream` | `DELETE …/o/{name}`, [`DELETE_CONCURRENCY`] at a time (404 → `NotFound`) |
//! | `list`, `list_with_delimiter` | `GET …/o?prefix&start&fields=name,size,etag,timeCreated[&delimiter=/]`, following `nextStartWith` |
//! | `copy_opts` | download + `put_opts` (buffers the object in memory). OCI's `actions/copyObject` is asynchronous (a work request to poll), so it is not used |
//!
//! Not implemented: object tags (`NotImplemented`), retries of failed requests other than
//! the one after a 401, `actions/copyObject`, batch deletes. Object names are percent-encoded
//! per segment (`/` kept); see `client` for the signing invariants.

mod client;
mod multipart;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use client::{Body, Client, Error, STORE, encode_name, header_str};
use futures::{StreamExt, TryStreamExt, stream::BoxStream};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use object_store::{
    Attribute, Attributes, CopyMode, CopyOptions, GetOptions, GetRange, GetResult,
    GetResultPayload, ListResult, MultipartUpload, ObjectMeta, ObjectStore, PutMode,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, path::Path,
};
use oracle_auth::Credentials;
use std::{collections::BTreeSet, fmt, ops::Range, sync::Arc, time::Duration};
use url::Url;

/// Concurrent DELETEs of one `delete_stream` (Object Storage has no synchronous bulk delete).
const DELETE_CONCURRENCY: usize = 10;
/// Objects per ListObjects page; 1000 is Object Storage's maximum.
const LIST_LIMIT: &str = "1000";

/// One bucket of OCI Object Storage, through the native API. Cloning shares the HTTP client
/// and credentials.
#[derive(Clone, Debug)]
pub struct OciObjectStorage {
    client: Arc<Client>,
}

impl OciObjectStorage {
    /// A store for `bucket` in `namespace` at `endpoint`
    /// (`https://objectstorage.<region>.oraclecloud.com`, or a loopback stand-in in tests).
    /// Nothing is contacted until the first request.
    pub fn new(
        endpoint: &Url,
        namespace: &str,
        bucket: &str,
        credentials: Arc<dyn Credentials>,
    ) -> Result<Self, object_store::Error> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| generic(format!("HTTP client: {e}")))?;
        let mut bucket_url = endpoint.clone();
        bucket_url.set_query(None);
        bucket_url.set_fragment(None);
        bucket_url.set_path(&format!(
            "{}/n/{}/b/{}/",
            endpoint.path().trim_end_matches('/'),
            encode_name(namespace),
            encode_name(bucket)
        ));
        Ok(Self {
            client: Arc::new(Client {
                http,
                credentials,
                bucket_url,
            }),
        })
    }

    async fn list_page(
        &self,
        prefix: &str,
        start: Option<&str>,
        delimiter: bool,
    ) -> object_store::Result<Page> {
        #[derive(serde::Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Listing {
            #[serde(default)]
            objects: Vec<Summary>,
            #[serde(default)]
            prefixes: Vec<String>,
            next_start_with: Option<String>,
        }
        #[derive(serde::Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Summary {
            name: String,
            size: u64,
            etag: Option<String>,
            time_created: String,
        }
        let mut url = self.client.url("o", "");
        {
            let mut query = url.query_pairs_mut();
            if !prefix.is_empty() {
                query.append_pair("prefix", prefix);
            }
            if let Some(start) = start {
                query.append_pair("start", start);
            }
            if delimiter {
                query.append_pair("delimiter", "/");
            }
            query.append_pair("limit", LIST_LIMIT);
            query.append_pair("fields", "name,size,etag,timeCreated");
        }
        let response = self
            .client
            .send(
                "ListObjects",
                Method::GET,
                &url,
                HeaderMap::new(),
                Body::Empty,
            )
            .await
            .map_err(|e| e.into_store(prefix))?;
        let body = response
            .bytes()
            .await
            .map_err(|e| generic(format!("ListObjects {prefix}: {e}")))?;
        let listing: Listing = serde_json::from_slice(&body)
            .map_err(|e| generic(format!("ListObjects {prefix}: invalid answer: {e}")))?;
        let objects = listing
            .objects
            .into_iter()
            .map(|o| {
                Ok(ObjectMeta {
                    location: Path::parse(&o.name).map_err(|e| generic(e.to_string()))?,
                    last_modified: DateTime::parse_from_rfc3339(&o.time_created)
                        .map_err(|e| {
                            generic(format!(
                                "timeCreated {:?} of {}: {e}",
                                o.time_created, o.name
                            ))
                        })?
                        .with_timezone(&Utc),
                    size: o.size,
                    e_tag: o.etag,
                    version: None,
                })
            })
            .collect::<object_store::Result<Vec<_>>>()?;
        Ok(Page {
            objects,
            prefixes: listing.prefixes,
            next: listing.next_start_with,
        })
    }

    async fn delete_one(&self, location: &Path) -> object_store::Result<()> {
        let name = location.as_ref();
        self.client
            .send(
                "DeleteObject",
                Method::DELETE,
                &self.client.url("o", name),
                HeaderMap::new(),
                Body::Empty,
            )
            .await
            .map_err(|e| e.into_store(name))?;
        Ok(())
    }
}

impl fmt::Display for OciObjectStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{STORE}({})", self.client.bucket_url)
    }
}

struct Page {
    objects: Vec<ObjectMeta>,
    prefixes: Vec<String>,
    next: Option<String>,
}

#[async_trait]
impl ObjectStore for OciObjectStorage {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        let name = location.as_ref();
        no_tags(&opts.tags, "put with tags")?;
        let mut headers = HeaderMap::new();
        for attribute in attributes(&opts.attributes)? {
            match attribute {
                Attr::Field { header, value, .. } => {
                    headers.insert(header, header_value(value)?);
                }
                Attr::Meta(key, value) => {
                    headers.insert(meta_header(key)?, header_value(value)?);
                }
            }
        }
        match &opts.mode {
            PutMode::Overwrite => {}
            PutMode::Create => {
                headers.insert(header::IF_NONE_MATCH, HeaderValue::from_static("*"));
            }
            PutMode::Update(version) => {
                let etag = version.e_tag.as_deref().ok_or_else(|| {
                    generic("a conditional update needs the object's etag".to_string())
                })?;
                headers.insert(header::IF_MATCH, header_value(etag)?);
            }
        }
        let response = self
            .client
            .send(
                "PutObject",
                Method::PUT,
                &self.client.url("o", name),
                headers,
                Body::Data(Bytes::from(payload)),
            )
            .await
            .map_err(|e| create_conflict(e, name, matches!(opts.mode, PutMode::Create)))?;
        Ok(PutResult {
            e_tag: header_str(&response, "etag").map(str::to_string),
            version: header_str(&response, "version-id").map(str::to_string),
            extensions: Default::default(),
        })
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        no_tags(&opts.tags, "multipart upload with tags")?;
        let upload = multipart::Upload::create(
            self.client.clone(),
            location.as_ref(),
            attributes(&opts.attributes)?,
        )
        .await?;
        Ok(Box::new(upload))
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        let name = location.as_ref();
        let mut url = self.client.url("o", name);
        if let Some(version) = &options.version {
            url.query_pairs_mut().append_pair("versionId", version);
        }
        let mut headers = HeaderMap::new();
        if let Some(range) = &options.range {
            range
                .is_valid()
                .map_err(|e| generic(format!("{name}: {e}")))?;
            headers.insert(
                header::RANGE,
                header_value(&format!("bytes={}", spec(range)))?,
            );
        }
        if let Some(etag) = &options.if_match {
            headers.insert(header::IF_MATCH, header_value(etag)?);
        }
        if let Some(etag) = &options.if_none_match {
            headers.insert(header::IF_NONE_MATCH, header_value(etag)?);
        }
        let (operation, method) = if options.head {
            ("HeadObject", Method::HEAD)
        } else {
            ("GetObject", Method::GET)
        };
        let response = self
            .client
            .send(operation, method, &url, headers, Body::Empty)
            .await
            .map_err(|e| e.into_store(name))?;
        let (meta, range) = meta(location, &response)?;
        // Object Storage does not document if-(un)modified-since; check them on the answer.
        options.check_preconditions(&meta)?;
        let payload = if options.head {
            futures::stream::empty().boxed()
        } else {
            let name = name.to_string();
            futures::stream::try_unfold(response, move |mut response| {
                let name = name.clone();
                async move {
                    match response.chunk().await {
                        Ok(Some(chunk)) => Ok(Some((chunk, response))),
                        Ok(None) => Ok(None),
                        Err(e) => Err(generic(format!("reading {name}: {e}"))),
                    }
                }
            })
            .boxed()
        };
        Ok(GetResult {
            payload: GetResultPayload::Stream(payload),
            meta,
            range,
            attributes: Attributes::new(),
            extensions: Default::default(),
        })
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        let this = self.clone();
        locations
            .map(move |location| {
                let this = this.clone();
                async move {
                    let location = location?;
                    this.delete_one(&location).await?;
                    Ok(location)
                }
            })
            .buffered(DELETE_CONCURRENCY)
            .boxed()
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        let this = self.clone();
        let prefix = list_prefix(prefix);
        // State: `Some(start)` while pages remain (`None` start = the first page).
        futures::stream::try_unfold(Some(None::<String>), move |state| {
            let (this, prefix) = (this.clone(), prefix.clone());
            async move {
                let Some(start) = state else {
                    return Ok(None);
                };
                let page = this.list_page(&prefix, start.as_deref(), false).await?;
                let objects = futures::stream::iter(
                    page.objects.into_iter().map(Ok::<_, object_store::Error>),
                );
                Ok::<_, object_store::Error>(Some((objects, page.next.map(Some))))
            }
        })
        .try_flatten()
        .boxed()
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        let prefix = list_prefix(prefix);
        let mut objects = Vec::new();
        let mut prefixes = BTreeSet::new();
        let mut start = None;
        loop {
            let page = self.list_page(&prefix, start.as_deref(), true).await?;
            objects.extend(page.objects);
            prefixes.extend(page.prefixes);
            match page.next {
                Some(next) => start = Some(next),
                None => break,
            }
        }
        let common_prefixes = prefixes
            .iter()
            .map(|p| Path::parse(p.trim_end_matches('/')).map_err(|e| generic(e.to_string())))
            .collect::<object_store::Result<Vec<_>>>()?;
        Ok(ListResult {
            common_prefixes,
            objects,
            extensions: Default::default(),
        })
    }

    /// Download and re-upload (see the module docs for why not `actions/copyObject`).
    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        let bytes = self.get_opts(from, GetOptions::default()).await?;
        let bytes = bytes.bytes().await?;
        let mode = match options.mode {
            CopyMode::Overwrite => PutMode::Overwrite,
            CopyMode::Create => PutMode::Create,
        };
        self.put_opts(
            to,
            bytes.into(),
            PutOptions {
                mode,
                ..PutOptions::default()
            },
        )
        .await?;
        Ok(())
    }
}

/// A 412 on a create-only write means the object exists.
fn create_conflict(error: Error, name: &str, create: bool) -> object_store::Error {
    if create && error.status() == Some(StatusCode::PRECONDITION_FAILED) {
        object_store::Error::AlreadyExists {
            path: name.to_string(),
            source: Box::new(error),
        }
    } else {
        error.into_store(name)
    }
}

/// The ListObjects `prefix` for an `object_store` prefix: everything below the path, so
/// `a/b` lists `a/b/…` and not `a/bc`.
fn list_prefix(prefix: Option<&Path>) -> String {
    match prefix.map(|p| p.as_ref()) {
        None | Some("") => String::new(),
        Some(p) => format!("{p}/"),
    }
}

/// The byte range spec (without `bytes=`) of a valid range.
fn spec(range: &GetRange) -> String {
    match range {
        GetRange::Bounded(r) => format!("{}-{}", r.start, r.end.saturating_sub(1)),
        GetRange::Offset(start) => format!("{start}-"),
        GetRange::Suffix(len) => format!("-{len}"),
    }
}

/// Object metadata and the byte range of the body from a GetObject/HeadObject answer.
fn meta(
    location: &Path,
    response: &reqwest::Response,
) -> object_store::Result<(ObjectMeta, Range<u64>)> {
    let name = location.as_ref();
    let invalid = |what: &str| generic(format!("{name}: {what}"));
    let number = |value: &str| value.trim().parse::<u64>().ok();
    let (size, range) = if response.status() == StatusCode::PARTIAL_CONTENT {
        // `bytes <first>-<last>/<size>`
        let value = header_str(response, "content-range")
            .ok_or_else(|| invalid("206 without content-range"))?;
        let parsed = value.strip_prefix("bytes ").and_then(|rest| {
            let (span, size) = rest.split_once('/')?;
            let (first, last) = span.split_once('-')?;
            Some((number(size)?, number(first)?..number(last)? + 1))
        });
        parsed.ok_or_else(|| invalid(&format!("invalid content-range {value:?}")))?
    } else {
        let size = header_str(response, "content-length")
            .and_then(number)
            .ok_or_else(|| invalid("no content-length"))?;
        (size, 0..size)
    };
    let modified = header_str(response, "last-modified")
        .and_then(|v| httpdate::parse_http_date(v).ok())
        .ok_or_else(|| invalid("no valid last-modified"))?;
    Ok((
        ObjectMeta {
            location: location.clone(),
            last_modified: DateTime::<Utc>::from(modified),
            size,
            e_tag: header_str(response, "etag").map(str::to_string),
            version: header_str(response, "version-id").map(str::to_string),
        },
        range,
    ))
}

/// An object attribute as Object Storage takes it: a header on PutObject and a field of the
/// CreateMultipartUpload document, or a user metadata pair (`opc-meta-<key>`).
enum Attr<'a> {
    Field {
        header: HeaderName,
        field: &'static str,
        value: &'a str,
    },
    Meta(&'a str, &'a str),
}

fn attributes(attributes: &Attributes) -> object_store::Result<Vec<Attr<'_>>> {
    attributes
        .iter()
        .map(|(attribute, value)| {
            let field = |header, field| {
                Ok(Attr::Field {
                    header,
                    field,
                    value: value.as_ref(),
                })
            };
            match attribute {
                Attribute::ContentType => field(header::CONTENT_TYPE, "contentType"),
                Attribute::ContentEncoding => field(header::CONTENT_ENCODING, "contentEncoding"),
                Attribute::ContentLanguage => field(header::CONTENT_LANGUAGE, "contentLanguage"),
                Attribute::ContentDisposition => {
                    field(header::CONTENT_DISPOSITION, "contentDisposition")
                }
                Attribute::CacheControl => field(header::CACHE_CONTROL, "cacheControl"),
                Attribute::StorageClass => {
                    field(HeaderName::from_static("storage-tier"), "storageTier")
                }
                Attribute::Metadata(key) => Ok(Attr::Meta(key.as_ref(), value.as_ref())),
                other => Err(object_store::Error::NotImplemented {
                    operation: format!("attribute {other:?}"),
                    implementer: STORE.to_string(),
                }),
            }
        })
        .collect()
}

fn no_tags(tags: &object_store::TagSet, operation: &str) -> object_store::Result<()> {
    if tags.encoded().is_empty() {
        Ok(())
    } else {
        Err(object_store::Error::NotImplemented {
            operation: operation.to_string(),
            implementer: STORE.to_string(),
        })
    }
}

fn meta_header(key: &str) -> object_store::Result<HeaderName> {
    HeaderName::try_from(format!("opc-meta-{}", key.to_ascii_lowercase()))
        .map_err(|_| generic(format!("metadata key {key:?} is not a valid header name")))
}

fn header_value(value: &str) -> object_store::Result<HeaderValue> {
    HeaderValue::from_str(value).map_err(|_| generic(format!("{value:?} is not a header value")))
}

fn generic(message: String) -> object_store::Error {
    object_store::Error::Generic {
        store: STORE,
        source: message.into(),
    }
}

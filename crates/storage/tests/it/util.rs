//! Fixtures: backends for the contract suite (a local directory and a real S3 server, s3s-fs,
//! on loopback with SigV4), a request recorder in front of the S3 server, and a wrapping
//! object store that counts GETs and injects failures.

use async_trait::async_trait;
use futures::stream::BoxStream;
use hyper_util::rt::TokioIo;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, UploadPart, path::Path as Key,
};
use std::{
    fmt,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
};
use storage::{Storage, StorageConfig, StorageOptions};

pub const MIB: u64 = 1 << 20;
pub const ACCESS_KEY: &str = "AKIAKILNTEST";
pub const SECRET_KEY: &str = "kiln-test-secret-value-0123456789";
pub const BUCKET: &str = "kiln-templates";

/// One request as the S3 server received it.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: http::Method,
    pub uri: http::Uri,
    pub headers: http::HeaderMap,
}

/// s3s-fs on 127.0.0.1:<free port>, with every request recorded.
pub struct S3Server {
    pub addr: std::net::SocketAddr,
    pub requests: Arc<Mutex<Vec<Recorded>>>,
    _root: tempfile::TempDir,
}

impl S3Server {
    pub async fn start() -> Self {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join(BUCKET)).unwrap();
        let fs = s3s_fs::FileSystem::new(root.path()).unwrap();
        let mut builder = s3s::service::S3ServiceBuilder::new(fs);
        builder.set_auth(s3s::auth::SimpleAuth::from_single(ACCESS_KEY, SECRET_KEY));
        let service = builder.build();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let recorded = requests.clone();
        tokio::spawn(async move {
            loop {
                let Ok((socket, _)) = listener.accept().await else {
                    continue;
                };
                let (service, recorded) = (service.clone(), recorded.clone());
                let handler = hyper::service::service_fn(
                    move |request: http::Request<hyper::body::Incoming>| {
                        recorded.lock().unwrap().push(Recorded {
                            method: request.method().clone(),
                            uri: request.uri().clone(),
                            headers: request.headers().clone(),
                        });
                        hyper::service::Service::call(&service, request)
                    },
                );
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(socket), handler),
                );
            }
        });
        Self {
            addr,
            requests,
            _root: root,
        }
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap().clone()
    }
}

/// Counts GETs (not HEADs) and multipart parts; fails parts or PUTs on demand.
#[derive(Debug)]
pub struct Probe {
    inner: Arc<dyn ObjectStore>,
    pub gets: AtomicUsize,
    pub parts: Arc<AtomicUsize>,
    pub aborts: Arc<AtomicUsize>,
    /// Fail the multipart part with this 1-based number (0 = never).
    pub fail_part: AtomicUsize,
    /// Fail single PUTs whose key contains this.
    pub fail_put: Mutex<Option<String>>,
}

impl fmt::Display for Probe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Probe({})", self.inner)
    }
}

fn injected() -> object_store::Error {
    object_store::Error::Generic {
        store: "Probe",
        source: "injected failure".into(),
    }
}

#[async_trait]
impl ObjectStore for Probe {
    async fn put_opts(
        &self,
        location: &Key,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        let fail = self.fail_put.lock().unwrap().clone();
        if fail.is_some_and(|f| location.as_ref().contains(&f)) {
            return Err(injected());
        }
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Key,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        let inner = self.inner.put_multipart_opts(location, opts).await?;
        Ok(Box::new(ProbeUpload {
            inner,
            parts: self.parts.clone(),
            aborts: self.aborts.clone(),
            number: 0,
            fail_part: self.fail_part.load(Ordering::SeqCst),
        }))
    }

    async fn get_opts(
        &self,
        location: &Key,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        if !options.head {
            self.gets.fetch_add(1, Ordering::SeqCst);
        }
        self.inner.get_opts(location, options).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Key>>,
    ) -> BoxStream<'static, object_store::Result<Key>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Key>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Key>) -> object_store::Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(
        &self,
        from: &Key,
        to: &Key,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        self.inner.copy_opts(from, to, options).await
    }
}

#[derive(Debug)]
struct ProbeUpload {
    inner: Box<dyn MultipartUpload>,
    parts: Arc<AtomicUsize>,
    aborts: Arc<AtomicUsize>,
    number: usize,
    fail_part: usize,
}

#[async_trait]
impl MultipartUpload for ProbeUpload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        self.number += 1;
        if self.number == self.fail_part {
            return Box::pin(async { Err(injected()) });
        }
        self.parts.fetch_add(1, Ordering::SeqCst);
        self.inner.put_part(data)
    }

    async fn complete(&mut self) -> object_store::Result<PutResult> {
        self.inner.complete().await
    }

    async fn abort(&mut self) -> object_store::Result<()> {
        self.aborts.fetch_add(1, Ordering::SeqCst);
        self.inner.abort().await
    }
}

/// A storage under test: `storage` goes through `probe`; `raw` is the provider's store itself
/// (to tamper with objects behind Kiln's back).
pub struct Backend {
    pub storage: Storage,
    pub probe: Arc<Probe>,
    pub raw: Arc<dyn ObjectStore>,
    pub cache_dir: PathBuf,
    pub config: StorageConfig,
    pub server: Option<S3Server>,
    _dir: tempfile::TempDir,
}

impl Backend {
    /// Another `Storage` over the same store and cache directory (a restarted process).
    pub fn reopen(&self, cache_bytes: u64) -> (Storage, Arc<Probe>) {
        let probe = probe(self.raw.clone());
        let storage = Storage::new(
            probe.clone(),
            self.storage.describe(),
            self.options(cache_bytes),
        )
        .unwrap();
        (storage, probe)
    }

    pub fn options(&self, cache_bytes: u64) -> StorageOptions {
        StorageOptions {
            cache_dir: self.cache_dir.clone(),
            cache_bytes,
            ..StorageOptions::default()
        }
    }

    /// Bytes of chunk files in the cache directory.
    pub fn cache_bytes_on_disk(&self) -> u64 {
        std::fs::read_dir(&self.cache_dir)
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap().len())
            .sum()
    }
}

fn probe(inner: Arc<dyn ObjectStore>) -> Arc<Probe> {
    Arc::new(Probe {
        inner,
        gets: AtomicUsize::new(0),
        parts: Arc::new(AtomicUsize::new(0)),
        aborts: Arc::new(AtomicUsize::new(0)),
        fail_part: AtomicUsize::new(0),
        fail_put: Mutex::new(None),
    })
}

/// Builds a backend from environment variables, as Kiln would.
pub fn backend(vars: &[(&str, String)], server: Option<S3Server>, cache_bytes: u64) -> Backend {
    let dir = tempfile::tempdir().unwrap();
    let mut vars: Vec<(String, String)> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    vars.push((
        "LOCAL_TEMPLATE_STORAGE_BASE_PATH".into(),
        dir.path().join("storage").display().to_string(),
    ));
    let config = StorageConfig::from_env(dir.path(), |key| {
        vars.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone())
    })
    .unwrap();
    let raw = config.provider.build().unwrap();
    let probe = probe(raw.clone());
    let cache_dir = dir.path().join("cache");
    let options = StorageOptions {
        cache_dir: cache_dir.clone(),
        cache_bytes,
        ..StorageOptions::default()
    };
    let storage = Storage::new(probe.clone(), config.provider.describe(), options).unwrap();
    Backend {
        storage,
        probe,
        raw,
        cache_dir,
        config,
        server,
        _dir: dir,
    }
}

pub async fn local(cache_bytes: u64) -> Backend {
    backend(&[("STORAGE_PROVIDER", "Local".into())], None, cache_bytes)
}

pub async fn s3(cache_bytes: u64) -> Backend {
    let server = S3Server::start().await;
    let vars = [
        ("STORAGE_PROVIDER", "AWSBucket".to_string()),
        ("TEMPLATE_BUCKET_NAME", BUCKET.into()),
        ("AWS_REGION", "us-east-1".into()),
        ("AWS_ENDPOINT_URL", format!("http://{}", server.addr)),
        ("AWS_ACCESS_KEY_ID", ACCESS_KEY.into()),
        ("AWS_SECRET_ACCESS_KEY", SECRET_KEY.into()),
    ];
    backend(&vars, Some(server), cache_bytes)
}

/// OCIBucket over the S3 Compatibility API, with the endpoint pointed at the loopback server.
pub async fn oci_s3() -> Backend {
    let server = S3Server::start().await;
    let vars = [
        ("STORAGE_PROVIDER", "OCIBucket".to_string()),
        ("TEMPLATE_BUCKET_NAME", BUCKET.into()),
        ("OCI_NAMESPACE", "kilntest".into()),
        ("OCI_REGION", "us-ashburn-1".into()),
        (
            "OCI_OBJECT_STORAGE_ENDPOINT",
            format!("http://{}", server.addr),
        ),
        ("OCI_S3_ACCESS_KEY_ID", ACCESS_KEY.into()),
        ("OCI_S3_SECRET_ACCESS_KEY", SECRET_KEY.into()),
    ];
    backend(&vars, Some(server), 64 * MIB)
}

/// Deterministic, non-repeating test data.
pub fn data(len: u64, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| ((i.wrapping_mul(2_654_435_761) >> 13) as u8) ^ seed)
        .collect()
}

pub fn write_file(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

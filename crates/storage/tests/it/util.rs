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
    /// The OCI native API stand-in and its config directory, for `oci_native` backends.
    pub oci: Option<OciFixture>,
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
        oci: None,
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

/// Oracle's published test key (reference `oci.md` §1.1; PKCS#1, 1024 bits): its signatures
/// over the published signing strings are the published vectors.
pub const ORACLE_TEST_KEY: &str = "-----BEGIN RSA PRIVATE KEY-----
MIICXgIBAAKBgQDCFENGw33yGihy92pDjZQhl0C36rPJj+CvfSC8+q28hxA161QF
NUd13wuCTUcq0Qd2qsBe/2hFyc2DCJJg0h1L78+6Z4UMR7EOcpfdUE9Hf3m/hs+F
UR45uBJeDK1HSFHD8bHKD6kv8FPGfJTotc+2xjJwoYi+1hqp1fIekaxsyQIDAQAB
AoGBAJR8ZkCUvx5kzv+utdl7T5MnordT1TvoXXJGXK7ZZ+UuvMNUCdN2QPc4sBiA
QWvLw1cSKt5DsKZ8UETpYPy8pPYnnDEz2dDYiaew9+xEpubyeW2oH4Zx71wqBtOK
kqwrXa/pzdpiucRRjk6vE6YY7EBBs/g7uanVpGibOVAEsqH1AkEA7DkjVH28WDUg
f1nqvfn2Kj6CT7nIcE3jGJsZZ7zlZmBmHFDONMLUrXR/Zm3pR5m0tCmBqa5RK95u
412jt1dPIwJBANJT3v8pnkth48bQo/fKel6uEYyboRtA5/uHuHkZ6FQF7OUkGogc
mSJluOdc5t6hI1VsLn0QZEjQZMEOWr+wKSMCQQCC4kXJEsHAve77oP6HtG/IiEn7
kpyUXRNvFsDE0czpJJBvL/aRFUJxuRK91jhjC68sA7NsKMGg5OXb5I5Jj36xAkEA
gIT7aFOYBFwGgQAQkWNKLvySgKbAZRTeLBacpHMuQdl1DfdntvAyqpAZ0lY0RKmW
G6aFKaqQfOXKCyWoUiVknQJAXrlgySFci/2ueKlIE1QqIiLSZ8V8OlpFLRnb1pzI
7U1yQXnTAEFYM560yJlzUpOb1V4cScGd365tiSMvxLOvTA==
-----END RSA PRIVATE KEY-----
";

/// Another key (generated for these tests), which the stand-in does not know.
pub const WRONG_KEY: &str = "-----BEGIN RSA PRIVATE KEY-----
MIICXQIBAAKBgQDWZV1qR9AT+DASHdyZ3/t1qI0ngwa2sFc7ytFn1nHJ/qQo7inh
c6gWQVkUwl8uHYAkhqY/+YmqUeZajcMWp9pWARiBdjoTmIwrwD3noNVr+TGwFaOS
BZlu71853elCIuKuy81OxKvAqAlwE8XjRwOvjpMFGXMnYOpIKnxNVj1PyQIDAQAB
AoGAIDdrKiVQZy/MSWyjUZwOtUd2rpFJ2Pn2oc2AWhInVyskj+H5+R7gCzgWor/y
fYOBVfvFz6c3wJg9/S2AO09Nx4g/z6hMtjyXbBtI//D5Zi9no8YyQwBzYKipNxcK
akLwHWlo1o3aWqb0zd97dLU1gTYYjJkmq7BZQ+j4lKZWWAECQQDySGONPIoKGqFs
9rIxwFUpVMvI8LaTZ6ufoenvDjY5uK5EXQgdtTt97d+aFCeAeSQUTnDXTjj7/7bB
fJXEKZCpAkEA4ojJ5Bf8hmTWKSMlyRg6+e1yL21d+Z5/aUUeBAdO8Wu1al6ZqaSS
BiUBSWmriY0U2KLsY7+8glFl418GanyaIQJBAKkkwmNixVgCeXnxzDuRc6LUMSTK
cBv+f0GFrySWfmLTvM27SSQ8Vxk2TSlrMpytdfO7Q2n8kSnUvwjbak81WWkCQQCI
H7RZmMRIqc06+QDanvHJfxJPR4Ph3IkpY7wOpamdTqC7406o7thEUvY7/AB07k7p
grVTl0KaeHkmMNK1KFyhAkA+HVUgGka4h1ssrvD/fsLaf/OOCyFSo2LbnQfpAhga
DQNgdBNrD2Mj0RVjPObIbzkoh8XrjAGq4YTeAZlFiTEW
-----END RSA PRIVATE KEY-----
";

pub const TENANCY: &str =
    "ocid1.tenancy.oc1..aaaaaaaaba3pv6wkcr4jqae5f15p2b2m2yt2j6rx32uzr4h25vqstifsfdsq";
pub const USER: &str =
    "ocid1.user.oc1..aaaaaaaat5nvwcna5j6aqzjcaty5eqbb6qt2jvpkanghtgdaqedqw3rynjq";
/// The MD5 fingerprint of [`ORACLE_TEST_KEY`].
pub const FINGERPRINT: &str = "73:61:a2:21:67:e0:df:be:7e:4b:93:1e:15:98:a5:b7";

/// The public half of a PEM private key.
pub fn public_key(pem: &str) -> rsa::RsaPublicKey {
    use rsa::pkcs1::DecodeRsaPrivateKey;
    rsa::RsaPrivateKey::from_pkcs1_pem(pem)
        .unwrap()
        .to_public_key()
}

/// The keyId of the test user's API key.
pub fn key_id() -> String {
    format!("{TENANCY}/{USER}/{FINGERPRINT}")
}

/// The stand-in, knowing the test user's key, and a `~/.oci/config`-style directory whose
/// `[DEFAULT]` profile signs with `key_pem` (mode 0600).
pub struct OciFixture {
    pub server: crate::oci_standin::OciServer,
    pub config: PathBuf,
    _dir: tempfile::TempDir,
}

impl OciFixture {
    pub async fn start(key_pem: &str) -> Self {
        use std::os::unix::fs::PermissionsExt;
        let server =
            crate::oci_standin::OciServer::start(vec![(key_id(), public_key(ORACLE_TEST_KEY))])
                .await;
        let dir = tempfile::tempdir().unwrap();
        let key = write_file(dir.path(), "oci_api_key.pem", key_pem.as_bytes());
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        let config = write_file(
            dir.path(),
            "config",
            format!(
                "[DEFAULT]\nuser={USER}\nfingerprint={FINGERPRINT}\nkey_file={}\ntenancy={TENANCY}\nregion=us-ashburn-1\n",
                key.display()
            )
            .as_bytes(),
        );
        Self {
            server,
            config,
            _dir: dir,
        }
    }

    /// The variables selecting this stand-in with `OCI_AUTH=api_key`.
    pub fn vars(&self) -> Vec<(&'static str, String)> {
        vec![
            ("STORAGE_PROVIDER", "OCIBucket".to_string()),
            ("TEMPLATE_BUCKET_NAME", crate::oci_standin::BUCKET.into()),
            ("OCI_NAMESPACE", crate::oci_standin::NAMESPACE.into()),
            ("OCI_REGION", "us-ashburn-1".into()),
            ("OCI_AUTH", "api_key".into()),
            ("OCI_CONFIG_FILE", self.config.display().to_string()),
            (
                "OCI_OBJECT_STORAGE_ENDPOINT",
                format!("http://{}", self.server.addr),
            ),
        ]
    }
}

/// OCIBucket over the native API, against the stand-in, signing with the registered key.
pub async fn oci_native(cache_bytes: u64) -> Backend {
    oci_native_with_key(ORACLE_TEST_KEY, cache_bytes).await
}

pub async fn oci_native_with_key(key_pem: &str, cache_bytes: u64) -> Backend {
    let fixture = OciFixture::start(key_pem).await;
    let mut backend = backend(&fixture.vars(), None, cache_bytes);
    backend.oci = Some(fixture);
    backend
}

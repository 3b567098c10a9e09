//! Test fixtures: a real distribution registry (Debian's `docker-registry`) on a free loopback
//! port, small images built here (tar layers, config, manifest), pushed with oci-client, and
//! OCI image layouts on disk.

#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use oci_client::{
    Client, Reference,
    client::{ClientConfig, ClientProtocol},
    secrets::RegistryAuth,
};
use sha2::{Digest as _, Sha256};
use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

pub const REGISTRY_BIN: &str = "/usr/bin/docker-registry";

/// A `docker-registry serve` process, killed on drop.
pub struct TestRegistry {
    pub host: String,
    pub dir: tempfile::TempDir,
    child: Child,
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Installs the registry if needed; `None` (after printing why) when it cannot be had.
fn registry_binary() -> Option<&'static str> {
    if Path::new(REGISTRY_BIN).exists() {
        return Some(REGISTRY_BIN);
    }
    let installed = Command::new("apt-get")
        .args(["install", "-y", "docker-registry"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if installed && Path::new(REGISTRY_BIN).exists() {
        Some(REGISTRY_BIN)
    } else {
        eprintln!(
            "SKIP: {REGISTRY_BIN} is missing and `apt-get install -y docker-registry` failed"
        );
        None
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl TestRegistry {
    /// Starts a registry; with `user`, it requires Basic auth (`htpasswd`, bcrypt) as that user.
    /// `None` (skip) only when the registry cannot be installed or started.
    pub async fn start(user: Option<(&str, &str)>) -> Option<TestRegistry> {
        TestRegistry::start_with(user, true).await
    }

    /// [`TestRegistry::start`], with manifest deletes enabled or not.
    pub async fn start_with(user: Option<(&str, &str)>, deletes: bool) -> Option<TestRegistry> {
        let bin = registry_binary()?;
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let host = format!("127.0.0.1:{port}");
        let mut config = format!(
            "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: {deletes}\nhttp:\n  addr: {host}\n  secret: kiln-test\n",
            dir.path().join("data").display()
        );
        if let Some((name, password)) = user {
            let hash = bcrypt::hash_with_result(password, 4)
                .unwrap()
                .format_for_version(bcrypt::Version::TwoA);
            let htpasswd = dir.path().join("htpasswd");
            std::fs::write(&htpasswd, format!("{name}:{hash}\n")).unwrap();
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: kiln-test\n    path: {}\n",
                htpasswd.display()
            ));
        }
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config).unwrap();
        let log = std::fs::File::create(dir.path().join("registry.log")).unwrap();
        let child = Command::new(bin)
            .arg("serve")
            .arg(&config_path)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn();
        let child = match child {
            Ok(child) => child,
            Err(e) => {
                eprintln!("SKIP: cannot start {bin}: {e}");
                return None;
            }
        };
        let registry = TestRegistry { host, dir, child };
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(r) = http
                .get(format!("http://{}/v2/", registry.host))
                .send()
                .await
                && (r.status() == 200 || r.status() == 401)
            {
                return Some(registry);
            }
            if Instant::now() > deadline {
                let log = std::fs::read_to_string(registry.dir.path().join("registry.log"))
                    .unwrap_or_default();
                eprintln!("SKIP: {bin} did not start: {log}");
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Bytes of every blob the registry stores (manifests, configs, layers), as on disk.
    pub fn blob_bytes_on_disk(&self) -> u64 {
        fn walk(dir: &Path) -> u64 {
            let Ok(entries) = std::fs::read_dir(dir) else {
                return 0;
            };
            entries
                .map(|e| e.unwrap().path())
                .map(|p| {
                    if p.is_dir() {
                        walk(&p)
                    } else if p.file_name().is_some_and(|n| n == "data") {
                        std::fs::metadata(&p).unwrap().len()
                    } else {
                        0
                    }
                })
                .sum()
        }
        walk(&self.dir.path().join("data/docker/registry/v2/blobs"))
    }

    /// Where the registry keeps blob `digest`'s bytes (to prove a pull does not fetch it).
    pub fn blob_data(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").unwrap();
        self.dir
            .path()
            .join("data/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }
}

pub fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(bytes))
}

/// A tar with `files` (path, contents).
pub fn layer(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (path, contents) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(contents.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        builder.append_data(&mut header, path, *contents).unwrap();
    }
    builder.into_inner().unwrap()
}

pub const LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

/// A small image: layers, config and manifest, as bytes.
#[derive(Clone)]
pub struct TestImage {
    pub layers: Vec<Vec<u8>>,
    pub config: Vec<u8>,
    pub manifest: Vec<u8>,
    pub arch: String,
}

impl TestImage {
    /// Two layers whose files say `marker`, so images differ; platform linux/`arch`.
    pub fn new(marker: &str, arch: &str) -> TestImage {
        let layers = vec![
            layer(&[("etc/marker", marker.as_bytes())]),
            layer(&[(
                "app/run.sh",
                format!("#!/bin/sh\necho {marker}\n").as_bytes(),
            )]),
        ];
        TestImage::with_layers(marker, arch, layers)
    }

    /// An image of `layers`, with the config of [`TestImage::new`].
    pub fn with_layers(marker: &str, arch: &str, layers: Vec<Vec<u8>>) -> TestImage {
        let config = serde_json::to_vec(&serde_json::json!({
            "architecture": arch,
            "os": "linux",
            "config": {
                "Env": ["PATH=/usr/bin:/bin", format!("MARKER={marker}")],
                "User": "1000:1000",
                "WorkingDir": "/app",
                "Entrypoint": ["/bin/sh"],
                "Cmd": ["/app/run.sh"],
            },
            "rootfs": {"type": "layers", "diff_ids": layers.iter().map(|l| sha256(l)).collect::<Vec<_>>()},
        }))
        .unwrap();
        TestImage::assemble(layers, config, arch)
    }

    /// An image created at `created` (RFC 3339, in its config) of a base layer every such
    /// image shares and one layer of its own, for retention tests.
    pub fn created(marker: &str, arch: &str, created: &str) -> TestImage {
        let base = layer(&[("etc/os-release", b"ID=kiln-test\n")]);
        let own = layer(&[("etc/marker", marker.as_bytes())]);
        let image = TestImage::with_layers(marker, arch, vec![base, own]);
        let mut config: serde_json::Value = serde_json::from_slice(&image.config).unwrap();
        config["created"] = created.into();
        TestImage::assemble(image.layers, serde_json::to_vec(&config).unwrap(), arch)
    }

    fn assemble(layers: Vec<Vec<u8>>, config: Vec<u8>, arch: &str) -> TestImage {
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha256(&config), "size": config.len()},
            "layers": layers.iter().map(|l| serde_json::json!({"mediaType": LAYER_TAR, "digest": sha256(l), "size": l.len()})).collect::<Vec<_>>(),
        }))
        .unwrap();
        TestImage {
            layers,
            config,
            manifest,
            arch: arch.to_string(),
        }
    }

    pub fn digest(&self) -> String {
        sha256(&self.manifest)
    }

    pub fn blobs(&self) -> Vec<&[u8]> {
        std::iter::once(self.config.as_slice())
            .chain(self.layers.iter().map(Vec::as_slice))
            .collect()
    }
}

/// An index of `images`, each with its platform.
pub fn index_of(images: &[&TestImage]) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": images.iter().map(|i| serde_json::json!({
            "mediaType": OCI_MANIFEST, "digest": i.digest(), "size": i.manifest.len(),
            "platform": {"architecture": i.arch, "os": "linux"},
        })).collect::<Vec<_>>(),
    }))
    .unwrap()
}

pub fn client() -> Client {
    Client::new(ClientConfig {
        protocol: ClientProtocol::Http,
        ..ClientConfig::default()
    })
}

pub fn auth(user: Option<(&str, &str)>) -> RegistryAuth {
    match user {
        Some((u, p)) => RegistryAuth::Basic(u.into(), p.into()),
        None => RegistryAuth::Anonymous,
    }
}

/// Pushes `image`'s blobs and its manifest under `host/repo:tag` (`tag` may be a digest).
pub async fn push(
    host: &str,
    repo: &str,
    tag: &str,
    image: &TestImage,
    user: Option<(&str, &str)>,
) {
    let client = client();
    let reference = Reference::with_tag(host.into(), repo.into(), tag.into());
    client.store_auth_if_needed(host, &auth(user)).await;
    for blob in image.blobs() {
        client
            .push_blob(&reference, blob.to_vec(), &sha256(blob))
            .await
            .unwrap();
    }
    push_manifest(host, repo, tag, &image.manifest, OCI_MANIFEST, user).await;
}

pub async fn push_manifest(
    host: &str,
    repo: &str,
    tag: &str,
    manifest: &[u8],
    media_type: &str,
    user: Option<(&str, &str)>,
) {
    let client = client();
    client.store_auth_if_needed(host, &auth(user)).await;
    let reference = if tag.starts_with("sha256:") {
        Reference::with_digest(host.into(), repo.into(), tag.into())
    } else {
        Reference::with_tag(host.into(), repo.into(), tag.into())
    };
    client
        .push_manifest_raw(&reference, manifest.to_vec(), media_type.parse().unwrap())
        .await
        .unwrap();
}

/// Writes an OCI image layout at `dir` holding `images` under their names.
pub fn write_layout(dir: &Path, images: &[(&str, &TestImage)]) {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let mut manifests = Vec::new();
    for (name, image) in images {
        for blob in image.blobs().into_iter().chain([image.manifest.as_slice()]) {
            let hex = sha256(blob).strip_prefix("sha256:").unwrap().to_string();
            std::fs::write(blobs.join(hex), blob).unwrap();
        }
        manifests.push(serde_json::json!({
            "mediaType": OCI_MANIFEST, "digest": image.digest(), "size": image.manifest.len(),
            "annotations": {"org.opencontainers.image.ref.name": name},
        }));
    }
    let index =
        serde_json::json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests});
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
}

/// A tar of the directory `dir` (its contents at the tar's root).
pub fn tar_dir(dir: &Path, out: &Path) {
    let mut builder = tar::Builder::new(std::fs::File::create(out).unwrap());
    builder.append_dir_all(".", dir).unwrap();
    builder.finish().unwrap();
}

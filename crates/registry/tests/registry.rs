//! Pulls against a real distribution registry (Debian's `docker-registry`, started per test on
//! a free loopback port), the local image store, and fake ECR / Google token endpoints.

#![allow(clippy::unwrap_used)]

mod common;
mod lifecycle;

use common::*;
use registry::{
    Credentials, EcrSettings, GcpSettings, GcpTokenSource, Image, Images, ImagesOptions,
    LocalStore, Registry, RegistryError, RemoteRegistry, ServiceAccountKey, import,
};
use std::{
    collections::HashMap,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
};

const USER: (&str, &str) = ("kiln", "s3cret-pass");

/// Images whose provider is an (empty) local store, for direct pulls.
fn direct_images(cache: &Path, docker_config: PathBuf) -> Images {
    let store = cache.join("store");
    Images::new(
        Box::new(LocalStore::new(&store, cache)),
        cache,
        ImagesOptions {
            docker_config,
            ..ImagesOptions::default()
        },
    )
}

fn lookup(vars: &[(&str, String)]) -> impl Fn(&str) -> Option<String> + use<> {
    let map: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    move |k| map.get(k).cloned()
}

/// The pulled image is `expected`: config fields, layer files with the pushed bytes.
fn assert_image(image: &Image, expected: &TestImage, marker: &str) {
    assert_eq!(image.manifest_digest, expected.digest());
    assert_eq!(image.config.user.as_deref(), Some("1000:1000"));
    assert_eq!(image.config.working_dir.as_deref(), Some("/app"));
    assert_eq!(image.config.entrypoint, ["/bin/sh"]);
    assert_eq!(image.config.cmd, ["/app/run.sh"]);
    assert!(image.config.env.contains(&format!("MARKER={marker}")));
    assert_eq!(image.layers.len(), expected.layers.len());
    for (layer, bytes) in image.layers.iter().zip(&expected.layers) {
        assert_eq!(layer.digest, sha256(bytes));
        assert_eq!(layer.size, bytes.len() as u64);
        assert_eq!(layer.media_type, LAYER_TAR);
        assert_eq!(&std::fs::read(&layer.path).unwrap(), bytes);
    }
}

#[tokio::test]
async fn anonymous_pulls_by_tag_and_digest_and_reuses_the_cache() {
    let Some(reg) = TestRegistry::start(None).await else {
        return;
    };
    let image = TestImage::new("anon", "amd64");
    push(&reg.host, "team/app", "1", &image, None).await;
    let cache = tempfile::tempdir().unwrap();
    let images = direct_images(cache.path(), cache.path().join("no-docker-config.json"));
    let host = &reg.host;

    let pulled = images
        .resolve_and_pull(&format!("{host}/team/app:1"), None)
        .await
        .unwrap();
    assert_image(&pulled, &image, "anon");
    assert_eq!(pulled.reference, format!("{host}/team/app:1"));
    for layer in &pulled.layers {
        assert!(layer.path.starts_with(cache.path().join("blobs/sha256")));
    }

    let by_digest = format!("{host}/team/app@{}", image.digest());
    let again = images.resolve_and_pull(&by_digest, None).await.unwrap();
    assert_eq!(again.manifest_digest, image.digest());
    assert_eq!(again.reference, by_digest);

    // The second pull downloads no blob: with the registry's copies gone, it still works, and
    // the cached files are the same files, untouched.
    let before: Vec<(u64, i64)> = pulled
        .layers
        .iter()
        .map(|l| {
            let m = std::fs::metadata(&l.path).unwrap();
            (m.ino(), m.mtime_nsec())
        })
        .collect();
    for blob in image.blobs() {
        std::fs::remove_file(reg.blob_data(&sha256(blob))).unwrap();
    }
    let cached = images
        .resolve_and_pull(&format!("{host}/team/app:1"), None)
        .await
        .unwrap();
    assert_image(&cached, &image, "anon");
    let after: Vec<(u64, i64)> = cached
        .layers
        .iter()
        .map(|l| {
            let m = std::fs::metadata(&l.path).unwrap();
            (m.ino(), m.mtime_nsec())
        })
        .collect();
    assert_eq!(before, after);

    // Missing images and tags name the registry and the image.
    let err = images
        .resolve_and_pull(&format!("{host}/team/missing:1"), None)
        .await
        .unwrap_err();
    assert!(err.is_not_found(), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!("image \"{host}/team/missing:1\" not found in registry {host}")
    );
    let err = images
        .resolve_and_pull(&format!("{host}/team/app:2"), None)
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("image \"{host}/team/app:2\" not found in registry {host}")
    );

    // A registry serving other bytes than the digest says: refused, and nothing is cached.
    let corrupt = TestImage::new("corrupt", "amd64");
    push(&reg.host, "team/corrupt", "1", &corrupt, None).await;
    let data = reg.blob_data(&sha256(&corrupt.layers[1]));
    let mut bytes = std::fs::read(&data).unwrap();
    bytes[600] ^= 0xff;
    std::fs::write(&data, bytes).unwrap();
    let err = images
        .resolve_and_pull(&format!("{host}/team/corrupt:1"), None)
        .await
        .unwrap_err();
    assert!(
        matches!(err, RegistryError::DigestMismatch { .. }),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(
        text.starts_with(&format!("digest mismatch for layer 1 ({}) of image \"{host}/team/corrupt:1\" from registry {host}", sha256(&corrupt.layers[1]))),
        "{text}"
    );
    let cached = cache
        .path()
        .join("blobs/sha256")
        .join(&sha256(&corrupt.layers[1])[7..]);
    assert!(!cached.exists());

    // HTTPS to a plain-HTTP registry: unreachable, with a hint.
    let https =
        RemoteRegistry::new(host, None, Credentials::Anonymous, cache.path()).plain_http(false);
    let err = https
        .pull("team/app:1", &Credentials::Anonymous)
        .await
        .unwrap_err();
    assert!(matches!(err, RegistryError::Unreachable { .. }), "{err:?}");
    assert!(
        err.to_string().contains("KILN_INSECURE_REGISTRIES"),
        "{err}"
    );

    // Nobody listens: the error says so and names the registry.
    let closed = format!(
        "127.0.0.1:{}",
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    );
    let err = images
        .resolve_and_pull(&format!("{closed}/x/y:1"), None)
        .await
        .unwrap_err();
    assert!(matches!(err, RegistryError::Unreachable { .. }), "{err:?}");
    assert!(
        err.to_string()
            .starts_with(&format!("cannot reach registry {closed}: ")),
        "{err}"
    );
}

#[tokio::test]
async fn basic_auth_and_docker_config_credentials() {
    let Some(reg) = TestRegistry::start(Some(USER)).await else {
        return;
    };
    let image = TestImage::new("private", "amd64");
    push(&reg.host, "team/app", "1", &image, Some(USER)).await;
    let cache = tempfile::tempdir().unwrap();
    let host = &reg.host;
    let reference = format!("{host}/team/app:1");
    let images = direct_images(cache.path(), cache.path().join("missing/config.json"));

    let good = Credentials::Basic {
        username: USER.0.into(),
        password: USER.1.into(),
    };
    let pulled = images
        .resolve_and_pull(&reference, Some(good))
        .await
        .unwrap();
    assert_image(&pulled, &image, "private");

    let wrong = Credentials::Basic {
        username: USER.0.into(),
        password: "wrong".into(),
    };
    let err = images
        .resolve_and_pull(&reference, Some(wrong))
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("registry {host} refused the credentials for \"team/app\" (401)")
    );
    assert!(!format!("{err:?}").contains("wrong"));

    let err = images.resolve_and_pull(&reference, None).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("registry {host} requires credentials for \"team/app\" (401)")
    );

    // Credentials from $DOCKER_CONFIG/config.json, through the environment-style settings.
    let docker = tempfile::tempdir().unwrap();
    let auth = base64_encode(&format!("{}:{}", USER.0, USER.1));
    std::fs::write(
        docker.path().join("config.json"),
        format!(r#"{{"auths":{{"{host}":{{"auth":"{auth}"}}}}}}"#),
    )
    .unwrap();
    let home = tempfile::tempdir().unwrap();
    let cache2 = tempfile::tempdir().unwrap();
    let images = Images::from_lookup(
        home.path(),
        cache2.path(),
        lookup(&[("DOCKER_CONFIG", docker.path().display().to_string())]),
    )
    .unwrap();
    let pulled = images.resolve_and_pull(&reference, None).await.unwrap();
    assert_image(&pulled, &image, "private");
}

fn base64_encode(text: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(text)
}

#[tokio::test]
async fn an_index_resolves_to_linux_amd64() {
    let Some(reg) = TestRegistry::start(None).await else {
        return;
    };
    let amd64 = TestImage::new("amd64 build", "amd64");
    let arm64 = TestImage::new("arm64 build", "arm64");
    push(&reg.host, "team/multi", &amd64.digest(), &amd64, None).await;
    push(&reg.host, "team/multi", &arm64.digest(), &arm64, None).await;
    push_manifest(
        &reg.host,
        "team/multi",
        "1",
        &index_of(&[&arm64, &amd64]),
        OCI_INDEX,
        None,
    )
    .await;
    push_manifest(
        &reg.host,
        "team/multi",
        "arm-only",
        &index_of(&[&arm64]),
        OCI_INDEX,
        None,
    )
    .await;
    push(&reg.host, "team/arm", "1", &arm64, None).await;

    let cache = tempfile::tempdir().unwrap();
    let images = direct_images(cache.path(), cache.path().join("none.json"));
    let host = &reg.host;
    let pulled = images
        .resolve_and_pull(&format!("{host}/team/multi:1"), None)
        .await
        .unwrap();
    assert_image(&pulled, &amd64, "amd64 build");

    let err = images
        .resolve_and_pull(&format!("{host}/team/multi:arm-only"), None)
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "image \"{host}/team/multi:arm-only\" in registry {host} has no linux/amd64 variant (it has: linux/arm64)"
        )
    );
    // A single-platform image for another architecture is refused too.
    let err = images
        .resolve_and_pull(&format!("{host}/team/arm:1"), None)
        .await
        .unwrap_err();
    assert!(
        matches!(err, RegistryError::UnsupportedPlatform { .. }),
        "{err:?}"
    );
}

#[tokio::test]
async fn registry_provider_copies_the_fallback_under_the_requested_name() {
    let Some(reg) = TestRegistry::start(Some(USER)).await else {
        return;
    };
    let base = TestImage::new("python base", "amd64");
    let own = TestImage::new("team image", "amd64");
    push(&reg.host, "kiln/python", "3.10-slim", &base, Some(USER)).await;
    push(&reg.host, "kiln/myteam/tool", "1", &own, Some(USER)).await;
    let home = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let host = &reg.host;
    let images = Images::from_lookup(
        home.path(),
        cache.path(),
        lookup(&[
            ("ARTIFACTS_REGISTRY_PROVIDER", "Registry".into()),
            ("ARTIFACTS_REGISTRY_URL", format!("{host}/kiln")),
            ("ARTIFACTS_REGISTRY_USERNAME", USER.0.into()),
            ("ARTIFACTS_REGISTRY_PASSWORD", USER.1.into()),
            ("DOCKER_CONFIG", home.path().display().to_string()),
        ]),
    )
    .unwrap();
    assert_eq!(images.provider().describe(), format!("registry {host}"));

    // An image the provider has.
    let pulled = images
        .resolve_and_pull("myteam/tool:1", None)
        .await
        .unwrap();
    assert_image(&pulled, &own, "team image");
    assert_eq!(pulled.reference, format!("{host}/kiln/myteam/tool:1"));

    // One it lacks: the fallback is copied under its name, then pulled.
    let pulled = images.resolve_and_pull("myteam/app:2", None).await.unwrap();
    assert_image(&pulled, &base, "python base");
    assert_eq!(pulled.reference, format!("{host}/kiln/myteam/app:2"));

    // The registry now has it under that name, for anyone.
    let client = client();
    let reference =
        oci_client::Reference::with_tag(host.clone(), "kiln/myteam/app".into(), "2".into());
    let (manifest, _) = client
        .pull_manifest_raw(&reference, &auth(Some(USER)), &[OCI_MANIFEST])
        .await
        .unwrap();
    assert_eq!(sha256(&manifest), base.digest());
    // A full reference to the provider's own host uses the provider's credentials.
    let direct = images
        .resolve_and_pull(&format!("{host}/kiln/myteam/app:2"), None)
        .await
        .unwrap();
    assert_eq!(direct.manifest_digest, base.digest());

    // A digest reference never falls back, and the fallback itself missing is reported as such.
    let missing = format!("myteam/app@{}", sha256(b"nothing"));
    let err = images.resolve_and_pull(&missing, None).await.unwrap_err();
    assert!(err.is_not_found(), "{err:?}");
    let images = Images::from_lookup(
        home.path(),
        cache.path(),
        lookup(&[
            ("ARTIFACTS_REGISTRY_PROVIDER", "Registry".into()),
            ("ARTIFACTS_REGISTRY_URL", format!("{host}/other")),
            ("ARTIFACTS_REGISTRY_USERNAME", USER.0.into()),
            ("ARTIFACTS_REGISTRY_PASSWORD", USER.1.into()),
        ]),
    )
    .unwrap();
    let err = images
        .resolve_and_pull("myteam/app:2", None)
        .await
        .unwrap_err();
    assert!(matches!(err, RegistryError::Fallback { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!(
            "image \"myteam/app:2\" not found in registry {host}, and the fallback base image \"python:3.10-slim\" could not be used: \
             image \"{host}/other/python:3.10-slim\" not found in registry {host}"
        )
    );
}

#[tokio::test]
async fn local_provider_imports_pulls_and_falls_back() {
    let base = TestImage::new("local python", "amd64");
    let tool = TestImage::new("local tool", "amd64");
    let layout = tempfile::tempdir().unwrap();
    write_layout(
        layout.path(),
        &[("python:3.10-slim", &base), ("team/tool:1", &tool)],
    );
    let home = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let store = home.path().join("images");

    let mut names = import(layout.path(), &store, None).unwrap();
    names.sort();
    assert_eq!(names, ["python:3.10-slim", "team/tool:1"]);

    let images = Images::from_lookup(home.path(), cache.path(), lookup(&[])).unwrap();
    assert_eq!(
        images.provider().describe(),
        format!("local image store {}", store.display())
    );
    let pulled = images
        .resolve_and_pull("python:3.10-slim", None)
        .await
        .unwrap();
    assert_image(&pulled, &base, "local python");
    assert!(pulled.layers[0].path.starts_with(cache.path()));
    let pulled = images.resolve_and_pull("team/tool:1", None).await.unwrap();
    assert_image(&pulled, &tool, "local tool");
    let pulled = images
        .resolve_and_pull(&format!("team/tool@{}", tool.digest()), None)
        .await
        .unwrap();
    assert_eq!(pulled.manifest_digest, tool.digest());

    // Missing: the fallback is named after the request, and stays so.
    let pulled = images.resolve_and_pull("myteam/app:2", None).await.unwrap();
    assert_image(&pulled, &base, "local python");
    assert_eq!(pulled.reference, "myteam/app:2");
    let index = std::fs::read_to_string(store.join("index.json")).unwrap();
    assert!(index.contains("\"myteam/app:2\""), "{index}");
    let direct = LocalStore::new(&store, cache.path());
    assert_eq!(
        direct
            .pull("myteam/app:2", &Credentials::Anonymous)
            .await
            .unwrap()
            .manifest_digest,
        base.digest()
    );

    // A multi-platform layout, named the way `docker save` (25+) names it.
    let multi = tempfile::tempdir().unwrap();
    let amd64 = TestImage::new("multi amd64", "amd64");
    let arm64 = TestImage::new("multi arm64", "arm64");
    write_layout(multi.path(), &[("unused:1", &amd64), ("unused:2", &arm64)]);
    let index = index_of(&[&arm64, &amd64]);
    std::fs::write(
        multi.path().join("blobs/sha256").join(&sha256(&index)[7..]),
        &index,
    )
    .unwrap();
    let top = serde_json::json!({"schemaVersion": 2, "manifests": [{
        "mediaType": OCI_INDEX, "digest": sha256(&index), "size": index.len(),
        "annotations": {"org.opencontainers.image.ref.name": "3", "io.containerd.image.name": "docker.io/library/multi:3"},
    }]});
    std::fs::write(multi.path().join("index.json"), top.to_string()).unwrap();
    assert_eq!(import(multi.path(), &store, None).unwrap(), ["multi:3"]);
    let pulled = images
        .resolve_and_pull("library/multi:3", None)
        .await
        .unwrap();
    assert_image(&pulled, &amd64, "multi amd64");

    // A tar of a layout, imported under a new name.
    let single = tempfile::tempdir().unwrap();
    let other = TestImage::new("tarred", "amd64");
    write_layout(single.path(), &[("whatever:1", &other)]);
    let tar = home.path().join("image.tar");
    tar_dir(single.path(), &tar);
    assert_eq!(
        import(&tar, &store, Some("docker.io/library/busybox")).unwrap(),
        ["busybox:latest"]
    );
    let pulled = images.resolve_and_pull("busybox", None).await.unwrap();
    assert_image(&pulled, &other, "tarred");
    // No staging directory is left in the store.
    let leftovers: Vec<_> = std::fs::read_dir(&store)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // A corrupt blob in the source is refused, and nothing is named after it.
    let corrupt = tempfile::tempdir().unwrap();
    let bad = TestImage::new("corrupt", "amd64");
    write_layout(corrupt.path(), &[("bad:1", &bad)]);
    let layer = corrupt
        .path()
        .join("blobs/sha256")
        .join(&sha256(&bad.layers[1])[7..]);
    std::fs::write(&layer, b"not the layer").unwrap();
    let err = import(corrupt.path(), &store, None).unwrap_err();
    assert!(err.to_string().contains("digest mismatch"), "{err}");
    let index = std::fs::read_to_string(store.join("index.json")).unwrap();
    assert!(!index.contains("bad:1"), "{index}");
}

#[tokio::test]
async fn local_provider_imports_docker_save_archives() {
    let image = TestImage::new("docker saved", "amd64");
    let dir = tempfile::tempdir().unwrap();
    // The classic `docker save` shape: <id>/layer.tar, <hex>.json, manifest.json.
    let config_name = format!("{}.json", &sha256(&image.config)[7..]);
    std::fs::write(dir.path().join(&config_name), &image.config).unwrap();
    let mut layers = Vec::new();
    for (i, bytes) in image.layers.iter().enumerate() {
        std::fs::create_dir(dir.path().join(format!("l{i}"))).unwrap();
        std::fs::write(dir.path().join(format!("l{i}/layer.tar")), bytes).unwrap();
        layers.push(format!("l{i}/layer.tar"));
    }
    let manifest = serde_json::json!([{"Config": config_name, "RepoTags": ["docker.io/library/saved:7"], "Layers": layers}]);
    std::fs::write(dir.path().join("manifest.json"), manifest.to_string()).unwrap();
    let home = tempfile::tempdir().unwrap();
    let tar = home.path().join("save.tar");
    tar_dir(dir.path(), &tar);

    let store = home.path().join("images");
    assert_eq!(import(&tar, &store, None).unwrap(), ["saved:7"]);
    let cache = tempfile::tempdir().unwrap();
    let local = LocalStore::new(&store, cache.path());
    let pulled = local
        .pull("saved:7", &Credentials::Anonymous)
        .await
        .unwrap();
    assert_eq!(pulled.layers.len(), 2);
    for (layer, bytes) in pulled.layers.iter().zip(&image.layers) {
        assert_eq!(&std::fs::read(&layer.path).unwrap(), bytes);
    }
    assert_eq!(pulled.config.cmd, ["/app/run.sh"]);
}

#[tokio::test]
async fn ocir_settings_are_all_reported_at_once() {
    let home = tempfile::tempdir().unwrap();
    let Err(errors) = Images::from_lookup(
        home.path(),
        home.path(),
        lookup(&[
            ("ARTIFACTS_REGISTRY_PROVIDER", "OCI_OCIR".into()),
            ("OCI_REGION", "iad".into()),
            ("OCIR_PASSWORD", "hidden-token".into()),
        ]),
    ) else {
        panic!("a half-configured OCIR provider was accepted")
    };
    let text = errors.to_string();
    assert_eq!(
        text.lines().collect::<Vec<_>>(),
        [
            "OCI_NAMESPACE is required for ARTIFACTS_REGISTRY_PROVIDER=OCI_OCIR (the tenancy's Object Storage namespace)",
            "OCI_CONTAINER_REPOSITORY_NAME is required for ARTIFACTS_REGISTRY_PROVIDER=OCI_OCIR (repository prefix images live under)",
            "OCIR_USERNAME is required for ARTIFACTS_REGISTRY_PROVIDER=OCI_OCIR (<namespace>/<user>)",
        ]
    );
    assert!(!text.contains("hidden-token"));
}

/// A fake ECR API: checks the request is a signed GetAuthorizationToken and hands out
/// `AWS:<password>`; counts calls.
async fn fake_ecr(password: &'static str, calls: Arc<AtomicUsize>) -> String {
    use axum::{http::HeaderMap, routing::post};
    let app = axum::Router::new().route(
        "/",
        post(move |headers: HeaderMap, body: String| {
            let calls = calls.clone();
            async move {
                calls.fetch_add(1, Ordering::SeqCst);
                let header = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
                assert_eq!(header("x-amz-target"), "AmazonEC2ContainerRegistry_V20150921.GetAuthorizationToken");
                assert_eq!(header("content-type"), "application/x-amz-json-1.1");
                assert!(header("authorization").starts_with("AWS4-HMAC-SHA256 Credential=AKIDTEST/"), "{}", header("authorization"));
                assert!(header("authorization").contains("/us-east-1/ecr/aws4_request"));
                assert!(!header("x-amz-date").is_empty());
                assert_eq!(body, "{}");
                let token = base64_encode(&format!("AWS:{password}"));
                let expires = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_secs()
                    + 12 * 3600;
                format!(r#"{{"authorizationData":[{{"authorizationToken":"{token}","expiresAt":{expires}.5,"proxyEndpoint":"https://x"}}]}}"#)
            }
        }),
    );
    format!("{}/", serve(app).await)
}

#[tokio::test]
async fn ecr_provider_signs_for_a_token_and_pulls_with_it() {
    let password = "ecr-token-password";
    let Some(reg) = TestRegistry::start(Some(("AWS", password))).await else {
        return;
    };
    let image = TestImage::new("from ecr", "amd64");
    push(&reg.host, "kiln/app", "1", &image, Some(("AWS", password))).await;
    let calls = Arc::new(AtomicUsize::new(0));
    let endpoint = fake_ecr(password, calls.clone()).await;
    let cache = tempfile::tempdir().unwrap();
    let ecr = RemoteRegistry::ecr(
        EcrSettings {
            region: "us-east-1".into(),
            account_id: "123456789012".into(),
            repository: "kiln".into(),
            access_key_id: "AKIDTEST".into(),
            secret_access_key: "secret".into(),
            session_token: None,
            api_endpoint: Some(endpoint),
            registry_host: Some(reg.host.clone()),
        },
        cache.path(),
    );
    let pulled = ecr.pull("app:1", &Credentials::Anonymous).await.unwrap();
    assert_image(&pulled, &image, "from ecr");
    ecr.pull("app:1", &Credentials::Anonymous).await.unwrap();
    // The token is cached until it nears expiry.
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

/// A fake Google token endpoint: verifies the RS256 assertion with the key's public half and
/// hands out `access_token`.
async fn fake_google_token(access_token: &'static str, public_pem: &'static str) -> String {
    use axum::routing::post;
    let app = axum::Router::new().route(
        "/token",
        post(move |body: String| async move {
            let field = |name: &str| {
                body.split('&')
                    .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
                    .unwrap_or("")
                    .to_string()
            };
            assert_eq!(
                field("grant_type"),
                "urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer"
            );
            let jwt = field("assertion");
            let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
            validation.validate_aud = false;
            let claims: serde_json::Value = jsonwebtoken::decode(
                &jwt,
                &jsonwebtoken::DecodingKey::from_rsa_pem(public_pem.as_bytes()).unwrap(),
                &validation,
            )
            .unwrap()
            .claims;
            assert_eq!(claims["iss"], "kiln@project.iam.gserviceaccount.com");
            assert_eq!(
                claims["scope"],
                "https://www.googleapis.com/auth/cloud-platform"
            );
            assert!(claims["aud"].as_str().unwrap().ends_with("/token"));
            format!(
                r#"{{"access_token":"{access_token}","expires_in":3599,"token_type":"Bearer"}}"#
            )
        }),
    );
    format!("{}/token", serve(app).await)
}

/// Serves a fake cloud endpoint on a loopback port; returns its `http://addr`.
async fn serve(app: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

#[tokio::test]
async fn gcp_provider_exchanges_a_signed_jwt_and_pulls() {
    let token = "ya29.test-access-token";
    let Some(reg) = TestRegistry::start(Some(("oauth2accesstoken", token))).await else {
        return;
    };
    let image = TestImage::new("from gcp", "amd64");
    push(
        &reg.host,
        "project/kiln/app",
        "1",
        &image,
        Some(("oauth2accesstoken", token)),
    )
    .await;
    let token_uri = fake_google_token(token, include_str!("../testdata/test-rsa-pub.pem")).await;
    let key = serde_json::json!({
        "type": "service_account",
        "private_key_id": "k1",
        "private_key": include_str!("../testdata/test-rsa-key.pem"),
        "client_email": "kiln@project.iam.gserviceaccount.com",
        "token_uri": token_uri,
    });
    let cache = tempfile::tempdir().unwrap();
    let gcp = RemoteRegistry::gcp(
        GcpSettings {
            region: "us-central1".into(),
            project_id: "project".into(),
            repository: "kiln".into(),
            token_source: GcpTokenSource::ServiceAccount(
                ServiceAccountKey::from_json(&key.to_string()).unwrap(),
            ),
            registry_host: Some(reg.host.clone()),
        },
        cache.path(),
    );
    let pulled = gcp.pull("app:1", &Credentials::Anonymous).await.unwrap();
    assert_image(&pulled, &image, "from gcp");
}

#[tokio::test]
async fn copy_streams_blobs_when_mounts_are_off() {
    let Some(reg) = TestRegistry::start(Some(USER)).await else {
        return;
    };
    // Over the 4 MiB push chunk, and not a multiple of it.
    let big: Vec<u8> = (0..9 * 1024 * 1024 + 123)
        .map(|i| (i * 7 % 251) as u8)
        .collect();
    let small = layer(&[("etc/marker", b"big")]);
    let image = TestImage::with_layers("big", "amd64", vec![layer(&[("big.bin", &big)]), small]);
    push(&reg.host, "src/app", "1", &image, Some(USER)).await;
    let cache = tempfile::tempdir().unwrap();
    let credentials = Credentials::Basic {
        username: USER.0.into(),
        password: USER.1.into(),
    };
    let remote = RemoteRegistry::new(&reg.host, None, credentials, cache.path()).blob_mounts(false);
    remote.copy("src/app:1", "dst/app:copied").await.unwrap();
    let pulled = remote
        .pull("dst/app:copied", &Credentials::Anonymous)
        .await
        .unwrap();
    assert_image(&pulled, &image, "big");
}

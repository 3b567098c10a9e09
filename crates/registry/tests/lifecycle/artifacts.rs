//! OCIR through the Artifacts API, against a loopback stand-in of the API that checks every
//! request's Oracle signature (recomputed with the same key over the request as received).
//! Configured the way a user does: provider settings, `OCI_COMPARTMENT_ID`, `~/.oci/config`.

use axum::{
    Json, Router,
    extract::{Path, Query, Request, State},
    http::{HeaderMap, StatusCode},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::get,
};
use registry::lifecycle::{self, Action, Pattern, Policy, Quota, RegistryTarget, Rule};
use serde_json::{Value, json};
use std::{
    collections::HashMap,
    os::unix::fs::PermissionsExt,
    sync::{Arc, Mutex},
};
use time::macros::datetime;

const KEY_ID: &str =
    "ocid1.tenancy.oc1..t/ocid1.user.oc1..u/20:3b:97:13:55:1c:5b:0d:d3:37:d8:50:4e:c5:3a:34";
const COMPARTMENT: &str = "ocid1.compartment.oc1..c";

#[derive(Clone)]
struct Fake {
    images: Arc<Mutex<Vec<Value>>>,
    signer: oracle_auth::Signer,
    requests: Arc<Mutex<usize>>,
}

/// Rejects any request whose `authorization` is not the signature of exactly this request.
async fn check_signature(State(fake): State<Fake>, request: Request, next: Next) -> Response {
    let headers = request.headers();
    let host = headers["host"].to_str().unwrap();
    let url = reqwest::Url::parse(&format!("http://{host}{}", request.uri())).unwrap();
    let mut expected = HeaderMap::new();
    expected.insert("date", headers["date"].clone());
    fake.signer
        .sign(
            request.method(),
            &url,
            &mut expected,
            oracle_auth::Payload::Unsigned,
        )
        .unwrap();
    if headers.get("authorization") != expected.get("authorization") {
        return (StatusCode::UNAUTHORIZED, "bad signature").into_response();
    }
    *fake.requests.lock().unwrap() += 1;
    next.run(request).await
}

/// One item per page, so paging is exercised.
fn page(items: Vec<Value>, query: &HashMap<String, String>) -> Response {
    let at: usize = query.get("page").map_or(0, |p| p.parse().unwrap());
    let mut headers = HeaderMap::new();
    if at + 1 < items.len() {
        headers.insert("opc-next-page", (at + 1).to_string().parse().unwrap());
    }
    let items: Vec<Value> = items.into_iter().skip(at).take(1).collect();
    (headers, Json(json!({ "items": items }))).into_response()
}

async fn repositories(
    State(fake): State<Fake>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    assert_eq!(query["compartmentId"], COMPARTMENT);
    let mut names: Vec<String> = fake
        .images
        .lock()
        .unwrap()
        .iter()
        .map(|i| i["repositoryName"].as_str().unwrap().to_string())
        .collect();
    names.sort();
    names.dedup();
    page(
        names
            .into_iter()
            .map(|n| json!({"displayName": n}))
            .collect(),
        &query,
    )
}

async fn images(
    State(fake): State<Fake>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let found = fake
        .images
        .lock()
        .unwrap()
        .iter()
        .filter(|i| i["repositoryName"] == query["repositoryName"].as_str())
        .filter(|i| {
            query
                .get("imageDigest")
                .is_none_or(|d| i["digest"] == d.as_str())
        })
        .map(|i| json!({"id": i["id"], "lifecycleState": "AVAILABLE"}))
        .collect();
    page(found, &query)
}

async fn image(State(fake): State<Fake>, Path(id): Path<String>) -> Response {
    match fake.images.lock().unwrap().iter().find(|i| i["id"] == id) {
        Some(image) => Json(image.clone()).into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn delete(State(fake): State<Fake>, Path(id): Path<String>) -> StatusCode {
    let mut images = fake.images.lock().unwrap();
    let before = images.len();
    images.retain(|i| i["id"] != id);
    if images.len() < before {
        StatusCode::NO_CONTENT
    } else {
        StatusCode::NOT_FOUND
    }
}

fn fake_image(id: &str, repo: &str, tags: &[&str], created: &str) -> Value {
    let hex = format!("{id:0>64}");
    json!({
        "id": format!("ocid1.containerimage.oc1..{id}"),
        "repositoryName": repo,
        "digest": format!("sha256:{hex}"),
        "timeCreated": created,
        "manifestSizeInBytes": 500,
        "layers": [
            {"digest": "sha256:base", "sizeInBytes": 1000, "timeCreated": created},
            {"digest": format!("sha256:own-{id}"), "sizeInBytes": 100, "timeCreated": created},
        ],
        "versions": tags.iter().map(|t| json!({"version": t})).collect::<Vec<_>>(),
    })
}

#[tokio::test]
async fn ocir_images_are_listed_and_deleted_through_the_signed_artifacts_api() {
    let dir = tempfile::tempdir().unwrap();
    let key_pem = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../oracle-auth/tests/data/oracle-vector-key.pem"
    ))
    .unwrap();
    let key_file = dir.path().join("key.pem");
    std::fs::write(&key_file, &key_pem).unwrap();
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let config = dir.path().join("config");
    let (tenancy, rest) = KEY_ID.split_once('/').unwrap();
    let (user, fingerprint) = rest.split_once('/').unwrap();
    std::fs::write(
        &config,
        format!("[DEFAULT]\nuser={user}\nfingerprint={fingerprint}\nkey_file=key.pem\ntenancy={tenancy}\nregion=us-ashburn-1\n"),
    )
    .unwrap();

    let fake = Fake {
        images: Arc::new(Mutex::new(vec![
            fake_image("a", "kiln/app", &["latest", "v2"], "2024-05-01T00:00:00Z"),
            fake_image("b", "kiln/app", &["1"], "2024-01-01T00:00:00Z"),
            fake_image("c", "kiln/app", &[], "2024-05-25T00:00:00Z"),
            fake_image("d", "kiln/app", &[], "2024-04-01T00:00:00Z"),
            fake_image("e", "kiln/app", &["2"], "2024-03-01T00:00:00.000Z"),
            fake_image("f", "other/x", &["1"], "2020-01-01T00:00:00Z"),
        ])),
        signer: oracle_auth::Signer::new(
            KEY_ID,
            oracle_auth::PrivateKey::from_pem(&key_pem, None).unwrap(),
        ),
        requests: Arc::new(Mutex::new(0)),
    };
    let app = Router::new()
        .route("/20160918/container/repositories", get(repositories))
        .route("/20160918/container/images", get(images))
        .route("/20160918/container/images/{id}", get(image).delete(delete))
        .layer(middleware::from_fn_with_state(
            fake.clone(),
            check_signature,
        ))
        .with_state(fake.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let vars: HashMap<&str, String> = [
        ("ARTIFACTS_REGISTRY_PROVIDER", "OCI_OCIR".to_string()),
        ("OCI_REGION", "us-ashburn-1".into()),
        ("OCI_NAMESPACE", "ns".into()),
        ("OCI_CONTAINER_REPOSITORY_NAME", "kiln".into()),
        ("OCIR_USERNAME", "ns/me".into()),
        ("OCIR_PASSWORD", "unused-auth-token".into()),
        ("OCI_COMPARTMENT_ID", COMPARTMENT.into()),
        ("OCI_CONFIG_FILE", config.display().to_string()),
        ("OCI_ARTIFACTS_ENDPOINT", endpoint.clone()),
    ]
    .into_iter()
    .collect();
    let lookup = |k: &str| vars.get(k).cloned();
    let target = RegistryTarget::from_lookup(&lookup).unwrap_or_else(|e| panic!("{e}"));
    let catalog = target.catalog.as_ref();
    assert_eq!(catalog.describe(), format!("OCI Artifacts API {endpoint}"));

    let repos = lifecycle::select_repositories(catalog, &[]).await.unwrap();
    assert_eq!(repos, ["ns/kiln/app"], "outside the prefix: not listed");
    let policy = Policy {
        default_rule: Rule {
            untagged_older_than_days: 14,
            keep_last: 1,
            exempt: vec![Pattern::new("v*").unwrap()],
        },
        rules: Vec::new(),
        quota: Quota::default(),
    };
    let now = datetime!(2024-06-01 00:00 UTC);
    let plan = lifecycle::plan(catalog, &repos, &policy, now)
        .await
        .unwrap();
    let decided: Vec<(char, Action)> = plan
        .images
        .iter()
        .map(|(i, d)| (i.digest.chars().last().unwrap(), d.action))
        .collect();
    assert_eq!(
        decided,
        [
            ('c', Action::Keep),
            ('a', Action::Keep),
            ('d', Action::Delete),
            ('e', Action::Delete),
            ('b', Action::Delete),
        ]
    );
    assert_eq!(plan.images[1].0.tags, ["latest", "v2"]);
    assert_eq!(plan.images[1].0.bytes, 1100);
    // The shared base layer counts once: 5 manifests, 5 own layers, 1 base.
    assert_eq!(plan.quota.used_bytes, 5 * 500 + 5 * 100 + 1000);
    assert_eq!(
        fake.images.lock().unwrap().len(),
        6,
        "planning deleted something"
    );

    assert_eq!(lifecycle::apply(catalog, &plan).await.unwrap(), 3);
    let left: Vec<String> = fake
        .images
        .lock()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        left,
        [
            "ocid1.containerimage.oc1..a",
            "ocid1.containerimage.oc1..c",
            "ocid1.containerimage.oc1..f"
        ]
    );
    let again = lifecycle::plan(catalog, &repos, &policy, now)
        .await
        .unwrap();
    assert_eq!(again.deletions().count(), 0);
    assert_eq!(
        lifecycle::apply(catalog, &plan).await.unwrap(),
        3,
        "gone images delete as no-ops"
    );
    assert_eq!(fake.images.lock().unwrap().len(), 3);
    assert!(*fake.requests.lock().unwrap() > 10);

    // A wrong key is refused by the signature check, and says so.
    let wrong = lifecycle::ArtifactsCatalog::new(
        &endpoint,
        COMPARTMENT,
        "ns",
        Some("kiln"),
        Arc::new(Unsigned),
    );
    let err = lifecycle::select_repositories(&wrong, &[])
        .await
        .unwrap_err();
    assert!(err.to_string().contains("refused the credentials"), "{err}");
}

struct Unsigned;

#[async_trait::async_trait]
impl lifecycle::OciRequestSigner for Unsigned {
    async fn sign(&self, request: &mut reqwest::Request) -> Result<(), String> {
        request
            .headers_mut()
            .insert("date", "Thu, 05 Jan 2014 21:31:40 GMT".parse().unwrap());
        Ok(())
    }
}

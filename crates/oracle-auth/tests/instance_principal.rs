//! Instance principals against a loopback metadata + identity service that checks what a real
//! one checks: `Authorization: Bearer Oracle` on IMDS v2, and a federation request signed with the
//! leaf certificate's key over the headers the SDKs sign.

#![allow(clippy::unwrap_used)]

use axum::{
    Json, Router,
    extract::State,
    http::{HeaderMap, StatusCode, Uri},
    routing::{get, post},
};
use base64::Engine as _;
use oracle_auth::{Credentials, InstancePrincipal, InstancePrincipalOptions, signing_string};
use rsa::{
    pkcs1v15::{Signature, VerifyingKey},
    pkcs8::DecodePublicKey,
    signature::Verifier,
};
use sha2::{Digest, Sha256};
use std::{
    collections::HashSet,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

const LEAF_CERT: &str = include_str!("data/leaf.cert.pem");
const LEAF_KEY: &str = include_str!("data/leaf.key.pem");
const INTERMEDIATE: &str = include_str!("data/intermediate.cert.pem");
const TENANCY: &str = "ocid1.tenancy.oc1..testtenancy";

#[derive(Default)]
struct Fake {
    federations: AtomicUsize,
    token_ttl_s: AtomicU64,
    /// Answer the federation call with this status instead (0 = succeed).
    fail_with: AtomicU64,
    session_keys: Mutex<HashSet<String>>,
}

fn imds(headers: &HeaderMap, body: &'static str) -> Result<&'static str, StatusCode> {
    if headers.get("authorization").map(|v| v.as_bytes()) != Some(b"Bearer Oracle") {
        return Err(StatusCode::UNAUTHORIZED);
    }
    Ok(body)
}

fn param<'a>(authorization: &'a str, name: &str) -> &'a str {
    let start = authorization.find(&format!("{name}=\"")).unwrap() + name.len() + 2;
    let len = authorization[start..].find('"').unwrap();
    &authorization[start..start + len]
}

async fn federate(
    State(fake): State<Arc<Fake>>,
    uri: Uri,
    headers: HeaderMap,
    body: String,
) -> Result<Json<serde_json::Value>, (StatusCode, String)> {
    fake.federations.fetch_add(1, Ordering::SeqCst);
    let fail = fake.fail_with.load(Ordering::SeqCst);
    if fail != 0 {
        return Err((StatusCode::from_u16(fail as u16).unwrap(), "nope".into()));
    }
    let authorization = headers["authorization"].to_str().unwrap();
    let leaf_der = pem::parse(LEAF_CERT).unwrap().into_contents();
    let fingerprint: Vec<String> = Sha256::digest(&leaf_der)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(
        param(authorization, "keyId"),
        format!("{TENANCY}/fed-x509-sha256/{}", fingerprint.join(":"))
    );
    let names = param(authorization, "headers");
    assert_eq!(
        names,
        "date (request-target) content-length content-type x-content-sha256"
    );
    let url = url::Url::parse(&format!(
        "http://{}{}",
        headers["host"].to_str().unwrap(),
        uri.path()
    ))
    .unwrap();
    let names: Vec<&str> = names.split(' ').collect();
    let signed = signing_string(&http::Method::POST, &url, &headers, &names).unwrap();
    let signature = base64::engine::general_purpose::STANDARD
        .decode(param(authorization, "signature"))
        .unwrap();
    VerifyingKey::<Sha256>::new(leaf_public_key())
        .verify(
            signed.as_bytes(),
            &Signature::try_from(signature.as_slice()).unwrap(),
        )
        .map_err(|e| (StatusCode::UNAUTHORIZED, e.to_string()))?;
    let request: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(request["fingerprintAlgorithm"], "SHA256");
    assert_eq!(
        request["certificate"],
        base64::engine::general_purpose::STANDARD.encode(&leaf_der)
    );
    let public_key = request["publicKey"].as_str().unwrap().to_string();
    let der = base64::engine::general_purpose::STANDARD
        .decode(&public_key)
        .unwrap();
    rsa::RsaPublicKey::from_public_key_der(&der).unwrap();
    fake.session_keys.lock().unwrap().insert(public_key);

    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + fake.token_ttl_s.load(Ordering::SeqCst);
    let n = fake.federations.load(Ordering::SeqCst);
    let claims = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(format!(r#"{{"exp":{exp},"n":{n}}}"#));
    Ok(Json(
        serde_json::json!({ "token": format!("eyJhbGciOiJSUzI1NiJ9.{claims}.sig") }),
    ))
}

/// The leaf's public key, from its PKCS#8 private key file.
fn leaf_public_key() -> rsa::RsaPublicKey {
    use rsa::pkcs8::DecodePrivateKey;
    let der = pem::parse(LEAF_KEY).unwrap().into_contents();
    rsa::RsaPrivateKey::from_pkcs8_der(&der)
        .unwrap()
        .to_public_key()
}

async fn serve(fake: Arc<Fake>) -> InstancePrincipal {
    let app = Router::new()
        .route(
            "/opc/v2/instance/regionInfo",
            get(|h: HeaderMap| async move {
                imds(
                    &h,
                    r#"{"realmKey":"oc1","realmDomainComponent":"oraclecloud.com","regionKey":"IAD","regionIdentifier":"us-ashburn-1"}"#,
                )
            }),
        )
        .route(
            "/opc/v2/identity/cert.pem",
            get(|h: HeaderMap| async move { imds(&h, LEAF_CERT) }),
        )
        .route(
            "/opc/v2/identity/key.pem",
            get(|h: HeaderMap| async move { imds(&h, LEAF_KEY) }),
        )
        .route(
            "/opc/v2/identity/intermediate.pem",
            get(|h: HeaderMap| async move { imds(&h, INTERMEDIATE) }),
        )
        .route("/v1/x509", post(federate))
        .with_state(fake);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    InstancePrincipal::new(InstancePrincipalOptions {
        metadata_url: url::Url::parse(&format!("http://{addr}/opc/v2")).unwrap(),
        auth_url: Some(url::Url::parse(&format!("http://{addr}")).unwrap()),
        retry_delay: Duration::from_millis(10),
        ..Default::default()
    })
    .unwrap()
}

fn fake(ttl: u64) -> Arc<Fake> {
    let fake = Arc::new(Fake::default());
    fake.token_ttl_s.store(ttl, Ordering::SeqCst);
    fake
}

#[tokio::test]
async fn a_session_token_is_fetched_once_and_reused() {
    let fake = fake(3600);
    let principal = serve(fake.clone()).await;
    assert_eq!(principal.region().await.unwrap(), "us-ashburn-1");
    let first = principal.signer().await.unwrap();
    let second = principal.signer().await.unwrap();
    assert!(first.key_id().starts_with("ST$eyJ"), "{}", first.key_id());
    assert_eq!(first.key_id(), second.key_id());
    assert_eq!(fake.federations.load(Ordering::SeqCst), 1);
    assert!(!format!("{first:?}").contains("eyJ"));
}

#[tokio::test]
async fn a_token_close_to_expiry_is_renewed_with_a_new_session_key() {
    // 60 s left is inside the 5-minute renewal window, so every call renews.
    let fake = fake(60);
    let principal = serve(fake.clone()).await;
    let first = principal.signer().await.unwrap();
    let second = principal.signer().await.unwrap();
    assert_ne!(first.key_id(), second.key_id());
    assert_eq!(fake.federations.load(Ordering::SeqCst), 2);
    assert_eq!(fake.session_keys.lock().unwrap().len(), 2);
}

#[tokio::test]
async fn invalidate_forces_a_new_token() {
    let fake = fake(3600);
    let principal = serve(fake.clone()).await;
    principal.signer().await.unwrap();
    principal.invalidate().await;
    principal.signer().await.unwrap();
    assert_eq!(fake.federations.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_refused_federation_is_not_retried_and_a_server_error_is() {
    let fake = fake(3600);
    fake.fail_with.store(401, Ordering::SeqCst);
    let principal = serve(fake.clone()).await;
    let err = principal.signer().await.unwrap_err().to_string();
    assert!(err.contains("identity federation: HTTP 401"), "{err}");
    assert_eq!(fake.federations.load(Ordering::SeqCst), 1);

    fake.fail_with.store(503, Ordering::SeqCst);
    let err = principal.signer().await.unwrap_err().to_string();
    assert!(err.contains("HTTP 503"), "{err}");
    assert_eq!(fake.federations.load(Ordering::SeqCst), 4);
}

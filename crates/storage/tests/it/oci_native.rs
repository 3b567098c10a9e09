//! OCIBucket over the native API, against the stand-in (`oci_standin`): what the contract
//! suite does not cover — signatures (and the stand-in's own verifier against Oracle's
//! published vectors), 401 handling, name encoding, conditional writes, ranges, delimiters.

use crate::{
    oci_standin::{self, OciServer},
    util::{
        ORACLE_TEST_KEY, OciFixture, TENANCY, USER, WRONG_KEY, key_id, oci_native,
        oci_native_with_key, public_key,
    },
};
use bytes::Bytes;
use futures::TryStreamExt;
use object_store::{
    GetOptions, GetRange, ObjectStore, ObjectStoreExt, PutMode, PutOptions, path::Path as Key,
};
use oracle_auth::{AuthError, Credentials, PrivateKey, Signer};
use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::SystemTime,
};
use storage::OciObjectStorage;

const DATE: &str = "Thu, 05 Jan 2014 21:31:40 GMT";
/// The key id of the published vectors (with Oracle's placeholder fingerprint).
fn vector_key_id() -> String {
    format!("{TENANCY}/{USER}/20:3b:97:13:55:1c:5b:0d:d3:37:d8:50:4e:c5:3a:34")
}

fn request(
    method: &str,
    uri: &str,
    headers: &[(&str, &str)],
    names: &str,
    signature: &str,
) -> http::request::Parts {
    let mut builder = http::Request::builder().method(method).uri(uri);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let authorization = format!(
        r#"Signature version="1",headers="{names}",keyId="{}",algorithm="rsa-sha256",signature="{signature}""#,
        vector_key_id()
    );
    builder
        .header("authorization", authorization)
        .body(())
        .unwrap()
        .into_parts()
        .0
}

#[test]
fn the_stand_in_verifies_oracles_published_signing_vectors() {
    let verify = oci_standin::verifier(vec![(vector_key_id(), public_key(ORACLE_TEST_KEY))]);
    // Oracle's vectors say "Thu, 05 Jan 2014", which was a Sunday.
    let at = httpdate::parse_http_date("Sun, 05 Jan 2014 21:31:40 GMT").unwrap();
    let host = ("host", "iaas.us-phoenix-1.oraclecloud.com");
    let get_uri = "/20160918/instances?availabilityDomain=Pjwf%3A%20PHX-AD-1&compartmentId=ocid1.compartment.oc1..aaaaaaaam3we6vgnherjq5q2idnccdflvjsnog7mlr6rtdb25gilchfeyjxa&displayName=TeamXInstances&volumeId=ocid1.volume.oc1.phx.abyhqljrgvttnlx73nmrwfaux7kcvzfs3s66izvxf2h4lgvyndsdsnoiwr5q";
    let v1 = "GBas7grhyrhSKHP6AVIj/h5/Vp8bd/peM79H9Wv8kjoaCivujVXlpbKLjMPeDUhxkFIWtTtLBj3sUzaFj34XE6YZAHc9r2DmE4pMwOAy/kiITcZxa1oHPOeRheC0jP2dqbTll8fmTZVwKZOKHYPtrLJIJQHJjNvxFWeHQjMaR7M=";
    let names = "date (request-target) host";
    let get = request("GET", get_uri, &[("date", DATE), host], names, v1);
    verify(&get, b"", at).unwrap();

    let body = r#"{
    "compartmentId": "ocid1.compartment.oc1..aaaaaaaam3we6vgnherjq5q2idnccdflvjsnog7mlr6rtdb25gilchfeyjxa",
    "instanceId": "ocid1.instance.oc1.phx.abuw4ljrlsfiqw6vzzxb43vyypt4pkodawglp3wqxjqofakrwvou52gb6s5a",
    "volumeId": "ocid1.volume.oc1.phx.abyhqljrgvttnlx73nmrwfaux7kcvzfs3s66izvxf2h4lgvyndsdsnoiwr5q"
}"#;
    assert_eq!(body.len(), 316);
    let v2 = "Mje8vIDPlwIHmD/cTDwRxE7HaAvBg16JnVcsuqaNRim23fFPgQfLoOOxae6WqKb1uPjYEl0qIdazWaBy/Ml8DRhqlocMwoSXv0fbukP8J5N80LCmzT/FFBvIvTB91XuXI3hYfP9Zt1l7S6ieVadHUfqBedWH0itrtPJBgKmrWso=";
    let post_headers = [
        ("date", DATE),
        host,
        ("content-length", "316"),
        ("content-type", "application/json"),
        (
            "x-content-sha256",
            "V9Z20UJTvkvpJ50flBzKE32+6m2zJjweHpDMX/U4Uy0=",
        ),
    ];
    let names = "date (request-target) host content-length content-type x-content-sha256";
    let post = request(
        "POST",
        "/20160918/volumeAttachments",
        &post_headers,
        names,
        v2,
    );
    verify(&post, body.as_bytes(), at).unwrap();

    // Anything changed after signing is refused: the path, the body, the clock.
    let moved = request(
        "GET",
        &get_uri.replace("TeamX", "TeamY"),
        &[("date", DATE), host],
        "date (request-target) host",
        v1,
    );
    assert!(verify(&moved, b"", at).is_err());
    let err = verify(&post, &body.as_bytes()[1..], at).unwrap_err();
    assert!(err.contains("x-content-sha256"), "{err}");
    let late = at + std::time::Duration::from_secs(600);
    assert!(verify(&get, b"", late).unwrap_err().contains("off"));
    // A POST whose body headers are not signed is refused even with a valid signature.
    let unsigned_body = request(
        "POST",
        get_uri,
        &[("date", DATE), host],
        "date (request-target) host",
        v1,
    );
    assert!(
        verify(&unsigned_body, b"", at)
            .unwrap_err()
            .contains("not signed")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_key_is_reported_clearly_after_one_retry() {
    let backend = oci_native_with_key(WRONG_KEY, 64 << 20).await;
    let fixture = backend.oci.as_ref().unwrap();
    let err = backend
        .storage
        .manifest("templates/t/b")
        .await
        .unwrap_err()
        .to_string();
    for expected in [
        "401",
        "NotAuthenticated",
        "the signature does not verify",
        "opc-request-id",
        "API key of profile [DEFAULT]",
        &fixture.config.display().to_string(),
    ] {
        assert!(err.contains(expected), "{expected:?} missing in: {err}");
    }
    assert!(
        !err.contains("PRIVATE KEY") && !err.contains("MIIC"),
        "{err}"
    );
    // Refused, credentials invalidated, signed again, refused again: two requests.
    let log = fixture.server.log();
    assert_eq!(log.len(), 2, "{log:?}");
    assert!(log.iter().all(|l| l.ends_with("-> 401")), "{log:?}");
}

/// Signs with a wrong key until invalidated once, like an expired session token.
#[derive(Debug)]
struct Expiring {
    invalidations: AtomicUsize,
}

#[async_trait::async_trait]
impl Credentials for Expiring {
    async fn signer(&self) -> Result<Signer, AuthError> {
        let pem = if self.invalidations.load(Ordering::SeqCst) == 0 {
            WRONG_KEY
        } else {
            ORACLE_TEST_KEY
        };
        Ok(Signer::new(key_id(), PrivateKey::from_pem(pem, None)?))
    }

    async fn invalidate(&self) {
        self.invalidations.fetch_add(1, Ordering::SeqCst);
    }

    fn describe(&self) -> String {
        "expiring test session".into()
    }
}

async fn store(server: &OciServer, credentials: Arc<dyn Credentials>) -> OciObjectStorage {
    let endpoint = url::Url::parse(&format!("http://{}", server.addr)).unwrap();
    OciObjectStorage::new(
        &endpoint,
        oci_standin::NAMESPACE,
        oci_standin::BUCKET,
        credentials,
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_session_is_renewed_once_and_the_request_retried() {
    let fixture = OciFixture::start(ORACLE_TEST_KEY).await;
    let credentials = Arc::new(Expiring {
        invalidations: AtomicUsize::new(0),
    });
    let store = store(&fixture.server, credentials.clone()).await;
    store
        .put(&Key::from("a/b"), Bytes::from_static(b"hello").into())
        .await
        .unwrap();
    let got = store
        .get(&Key::from("a/b"))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(got.as_ref(), b"hello");
    assert_eq!(credentials.invalidations.load(Ordering::SeqCst), 1);
    let log = fixture.server.log();
    assert!(
        log[0].ends_with("-> 401") && log[1].ends_with("-> 200"),
        "{log:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reserved_characters_in_names_are_encoded_once_and_round_trip() {
    let backend = oci_native(64 << 20).await;
    let server = &backend.oci.as_ref().unwrap().server;
    let name = "dir/a b+c:d@e=f&g?h#i%j(é).txt";
    let key = Key::from(name);
    backend
        .raw
        .put(&key, Bytes::from_static(b"x").into())
        .await
        .unwrap();
    // The stand-in decodes the path once: the stored name is the original one.
    assert_eq!(server.names(), vec![key.as_ref().to_string()]);
    let listed: Vec<_> = backend
        .raw
        .list(Some(&Key::from("dir")))
        .try_collect()
        .await
        .unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].location, key);
    assert_eq!(listed[0].size, 1);
    let got = backend.raw.get(&key).await.unwrap().bytes().await.unwrap();
    assert_eq!(got.as_ref(), b"x");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_only_writes_ranges_and_delimited_listings_follow_oci() {
    let backend = oci_native(64 << 20).await;
    let store = &backend.raw;
    let key = Key::from("t/obj");
    let create = || PutOptions {
        mode: PutMode::Create,
        ..PutOptions::default()
    };
    store
        .put_opts(&key, Bytes::from_static(b"0123456789").into(), create())
        .await
        .unwrap();
    let err = store
        .put_opts(&key, Bytes::from_static(b"other").into(), create())
        .await
        .unwrap_err();
    assert!(
        matches!(err, object_store::Error::AlreadyExists { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("IfNoneMatchFailed"), "{err}");

    for (range, expected, span) in [
        (GetRange::Bounded(2..5), &b"234"[..], 2..5),
        (GetRange::Offset(7), b"789", 7..10),
        (GetRange::Suffix(4), b"6789", 6..10),
        (GetRange::Bounded(8..100), b"89", 8..10),
    ] {
        let options = GetOptions {
            range: Some(range.clone()),
            ..GetOptions::default()
        };
        let result = store.get_opts(&key, options).await.unwrap();
        assert_eq!(result.range, span, "{range}");
        assert_eq!(result.meta.size, 10);
        assert_eq!(result.bytes().await.unwrap().as_ref(), expected, "{range}");
    }
    let head = store.head(&key).await.unwrap();
    assert_eq!(head.size, 10);
    let not_modified = store
        .get_opts(
            &key,
            GetOptions {
                if_none_match: head.e_tag.clone(),
                ..GetOptions::default()
            },
        )
        .await
        .unwrap_err();
    assert!(
        matches!(not_modified, object_store::Error::NotModified { .. }),
        "{not_modified}"
    );

    // Five objects and two sub-prefixes: several pages of the stand-in's two entries.
    for name in ["t/a", "t/b", "t/c", "t/d/1", "t/d/2", "t/e/1"] {
        store
            .put(&Key::from(name), Bytes::from_static(b"y").into())
            .await
            .unwrap();
    }
    let listing = store
        .list_with_delimiter(Some(&Key::from("t")))
        .await
        .unwrap();
    let mut objects: Vec<_> = listing
        .objects
        .iter()
        .map(|o| o.location.to_string())
        .collect();
    objects.sort();
    assert_eq!(objects, ["t/a", "t/b", "t/c", "t/obj"]);
    assert_eq!(
        listing.common_prefixes,
        [Key::from("t/d"), Key::from("t/e")]
    );
    let all: Vec<_> = store
        .list(Some(&Key::from("t")))
        .try_collect()
        .await
        .unwrap();
    assert_eq!(all.len(), 7);
    let server = &backend.oci.as_ref().unwrap().server;
    assert!(
        server.log().iter().any(|l| l.contains("start=")),
        "no second page was asked for"
    );

    store.delete(&Key::from("t/a")).await.unwrap();
    let missing = store.delete(&Key::from("t/a")).await.unwrap_err();
    assert!(
        matches!(missing, object_store::Error::NotFound { .. }),
        "{missing}"
    );
    store
        .copy_if_not_exists(&key, &Key::from("t/copy"))
        .await
        .unwrap();
    let exists = store
        .copy_if_not_exists(&key, &Key::from("t/copy"))
        .await
        .unwrap_err();
    assert!(
        matches!(exists, object_store::Error::AlreadyExists { .. }),
        "{exists}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multipart_uploads_commit_parts_in_order_and_abort_cleanly() {
    let backend = oci_native(64 << 20).await;
    let server = &backend.oci.as_ref().unwrap().server;
    let store = &backend.raw;
    let key = Key::from("big/object");
    let mut upload = store.put_multipart(&key).await.unwrap();
    // Started in order, finished in reverse: the commit still lists them by number.
    let first = upload.put_part(Bytes::from_static(b"aaa").into());
    let second = upload.put_part(Bytes::from_static(b"bbb").into());
    let third = upload.put_part(Bytes::from_static(b"c").into());
    third.await.unwrap();
    second.await.unwrap();
    first.await.unwrap();
    upload.complete().await.unwrap();
    let got = store.get(&key).await.unwrap().bytes().await.unwrap();
    assert_eq!(got.as_ref(), b"aaabbbc");

    let mut aborted = store.put_multipart(&Key::from("big/other")).await.unwrap();
    aborted
        .put_part(Bytes::from_static(b"zzz").into())
        .await
        .unwrap();
    assert_eq!(server.open_uploads(), 1);
    aborted.abort().await.unwrap();
    assert_eq!(server.open_uploads(), 0);
    assert_eq!(server.names(), ["big/object"]);
}

#[tokio::test]
async fn the_stand_in_refuses_chunked_bodies() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = OciServer::start(Vec::new()).await;
    let mut socket = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let path = format!(
        "/n/{}/b/{}/o/x",
        oci_standin::NAMESPACE,
        oci_standin::BUCKET
    );
    socket
        .write_all(
            format!(
                "PUT {path} HTTP/1.1\r\nhost: {}\r\ndate: {}\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n1\r\nx\r\n0\r\n\r\n",
                server.addr,
                httpdate::fmt_http_date(SystemTime::now())
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let mut answer = String::new();
    socket.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 411"), "{answer}");
    assert!(answer.contains("LengthRequired"), "{answer}");
}

//! OCI's S3 Compatibility API rejects `aws-chunked` bodies (`STREAMING-*` payload hashes),
//! virtual-hosted addressing and CRC32 checksums on DeleteObjects. These tests configure
//! `OCIBucket` with a loopback endpoint and inspect every request the S3 server received.

use crate::util::{BUCKET, MIB, data, oci_s3, write_file};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn requests_to_oci_are_path_style_unchunked_and_without_crc32() {
    let backend = oci_s3().await;
    let dir = tempfile::tempdir().unwrap();
    let file = write_file(dir.path(), "rootfs", &data(21 * MIB, 9));
    let session = backend.storage.session("templates/t/b").await.unwrap();
    session.upload_file("rootfs", &file).await.unwrap();
    session.put_bytes("small", b"x".to_vec()).await.unwrap();
    session.commit().await.unwrap();
    backend
        .storage
        .download_file("templates/t/b", "rootfs", &dir.path().join("copy"))
        .await
        .unwrap();
    backend
        .storage
        .read_range("templates/t/b/rootfs", 0..10)
        .await
        .unwrap();
    assert_eq!(
        backend
            .storage
            .delete_prefix("templates/t/b")
            .await
            .unwrap(),
        3
    );

    let server = backend.server.as_ref().unwrap();
    let requests = server.requests();
    let host = server.addr.to_string();
    let mut kinds = std::collections::BTreeSet::new();
    for r in &requests {
        let what = format!("{} {}", r.method, r.uri);
        assert!(
            r.uri.path().starts_with(&format!("/{BUCKET}")),
            "not path-style: {what}"
        );
        assert_eq!(r.headers["host"], host.as_str(), "{what}");
        if let Some(encoding) = r.headers.get("content-encoding") {
            assert!(
                !encoding.to_str().unwrap().contains("aws-chunked"),
                "{what}"
            );
        }
        let payload = r
            .headers
            .get("x-amz-content-sha256")
            .map(|v| v.to_str().unwrap());
        assert!(
            !payload.is_some_and(|p| p.starts_with("STREAMING-")),
            "{what}: {payload:?}"
        );
        assert!(
            !r.headers.contains_key("x-amz-decoded-content-length"),
            "{what}"
        );
        assert!(!r.headers.contains_key("x-amz-trailer"), "{what}");
        for name in r.headers.keys() {
            assert!(
                !name.as_str().starts_with("x-amz-checksum-crc32")
                    && name.as_str() != "x-amz-sdk-checksum-algorithm",
                "{what}: {name}"
            );
        }
        let authorization = r.headers["authorization"].to_str().unwrap();
        assert!(
            authorization.contains("/us-ashburn-1/s3/aws4_request"),
            "{what}: SigV4 region"
        );
        let query = r.uri.query().unwrap_or("");
        let kind = match (r.method.as_str(), query) {
            ("POST", q) if q.contains("uploads") => "create multipart",
            ("PUT", q) if q.contains("partNumber") => "upload part",
            ("POST", q) if q.contains("uploadId") => "complete multipart",
            ("POST", q) if q.contains("delete") => {
                assert!(
                    r.headers.contains_key("content-md5"),
                    "{what}: DeleteObjects needs Content-MD5"
                );
                "delete objects"
            }
            ("PUT", _) => {
                assert!(
                    r.headers.contains_key("content-length"),
                    "{what}: PUT without Content-Length"
                );
                "put"
            }
            ("GET", q) if q.contains("list-type") => "list",
            ("GET", _) => "get",
            ("HEAD", _) => "head",
            ("DELETE", _) => "delete",
            _ => "other",
        };
        kinds.insert(kind);
    }
    // The checks above saw every kind of request Kiln sends.
    for kind in [
        "create multipart",
        "upload part",
        "complete multipart",
        "put",
        "get",
        "head",
        "list",
    ] {
        assert!(kinds.contains(kind), "no {kind} request among {kinds:?}");
    }
    assert!(
        kinds.contains("delete objects") || kinds.contains("delete"),
        "{kinds:?}"
    );
}

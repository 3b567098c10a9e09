//! The provider contract: what `Storage` promises, on any object store.

use crate::util::{Backend, MIB, data, write_file};
use futures::future::join_all;
use object_store::{ObjectStoreExt, path::Path as Key};
use sha2::{Digest, Sha256};
use std::{future::Future, sync::atomic::Ordering, time::Duration};
use storage::{CHUNK_SIZE, StorageError};

/// A backend factory taking the chunk cache bound.
pub trait Make: Fn(u64) -> Self::Fut {
    type Fut: Future<Output = Backend>;
}
impl<F, Fut> Make for F
where
    F: Fn(u64) -> Fut,
    Fut: Future<Output = Backend>,
{
    type Fut = Fut;
}

const CACHE: u64 = 256 * MIB;

/// Every key under `prefix`, through the provider itself.
async fn keys_under(backend: &Backend, prefix: &str) -> Vec<String> {
    use futures::TryStreamExt;
    let mut keys: Vec<String> = backend
        .raw
        .list(Some(&Key::from(prefix)))
        .map_ok(|meta| meta.location.to_string())
        .try_collect()
        .await
        .unwrap();
    keys.sort();
    keys
}

/// Waits (up to 10 s) until nothing is left under `prefix`.
async fn until_empty(backend: &Backend, prefix: &str) {
    for _ in 0..100 {
        if keys_under(backend, prefix).await.is_empty() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "left under {prefix}: {:?}",
        keys_under(backend, prefix).await
    );
}

pub async fn multipart_upload_round_trips_with_its_sha256(make: impl Make) {
    let backend = make(CACHE).await;
    let dir = tempfile::tempdir().unwrap();
    let bytes = data(25 * MIB + 123, 1);
    let file = write_file(dir.path(), "rootfs.ext4", &bytes);

    let session = backend
        .storage
        .session("templates/t1/builds/b1")
        .await
        .unwrap();
    let entry = session.upload_file("rootfs.ext4", &file).await.unwrap();
    assert_eq!(entry.size, bytes.len() as u64);
    assert_eq!(entry.sha256, hex::encode(Sha256::digest(&bytes)));
    // 10 + 10 + 5 MiB: three parts, sent as a multipart upload.
    assert_eq!(backend.probe.parts.load(Ordering::SeqCst), 3);
    // Not visible before commit.
    assert!(
        backend
            .storage
            .manifest("templates/t1/builds/b1")
            .await
            .unwrap()
            .is_none()
    );
    let manifest = session.commit().await.unwrap();
    assert_eq!(manifest.objects["rootfs.ext4"], entry);
    assert_eq!(
        backend
            .storage
            .manifest("templates/t1/builds/b1")
            .await
            .unwrap(),
        Some(manifest)
    );

    let dest = dir.path().join("copy.ext4");
    let downloaded = backend
        .storage
        .download_file("templates/t1/builds/b1", "rootfs.ext4", &dest)
        .await
        .unwrap();
    assert_eq!(downloaded, entry);
    assert!(
        std::fs::read(&dest).unwrap() == bytes,
        "downloaded bytes differ"
    );
    // No temporary file is left next to the destination.
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
}

pub async fn small_objects_round_trip(make: impl Make) {
    let backend = make(CACHE).await;
    let session = backend.storage.session("snapshots/s1/p1").await.unwrap();
    session
        .put_bytes("snapfile", b"state".to_vec())
        .await
        .unwrap();
    session
        .put_bytes("meta/header.json", b"{}".to_vec())
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let small = write_file(dir.path(), "small", &data(1000, 2));
    session.upload_file("small", &small).await.unwrap();
    // Nothing was large enough for a multipart upload.
    assert_eq!(backend.probe.parts.load(Ordering::SeqCst), 0);
    let err = session
        .put_bytes("manifest.json", b"x".to_vec())
        .await
        .unwrap_err();
    assert!(matches!(err, StorageError::InvalidName { .. }), "{err}");
    session.commit().await.unwrap();

    assert_eq!(
        backend
            .storage
            .get_bytes("snapshots/s1/p1", "snapfile")
            .await
            .unwrap(),
        &b"state"[..]
    );
    assert_eq!(
        backend
            .storage
            .get_bytes("snapshots/s1/p1", "meta/header.json")
            .await
            .unwrap(),
        &b"{}"[..]
    );
    let mut out = Vec::new();
    backend
        .storage
        .download_to_writer("snapshots/s1/p1", "small", &mut out)
        .await
        .unwrap();
    assert_eq!(out, data(1000, 2));
    assert!(
        backend
            .storage
            .exists("snapshots/s1/p1/snapfile")
            .await
            .unwrap()
    );
    assert_eq!(
        backend.storage.size("snapshots/s1/p1/small").await.unwrap(),
        1000
    );
}

pub async fn ranged_reads_cross_chunks_and_stop_at_the_end(make: impl Make) {
    let backend = make(CACHE).await;
    let bytes = data(2 * CHUNK_SIZE + 1000, 3);
    let session = backend.storage.session("t/ranges").await.unwrap();
    session.put_bytes("memfile", bytes.clone()).await.unwrap();
    session.commit().await.unwrap();
    let read = |start: u64, end: u64| {
        let storage = backend.storage.clone();
        async move { storage.read_range("t/ranges/memfile", start..end).await }
    };
    let cs = CHUNK_SIZE;
    for (start, end) in [
        (0, 4096),
        (cs - 10, cs + 10),      // across the first boundary
        (cs - 1, 2 * cs + 1),    // a whole chunk plus one byte each side
        (2 * cs, 2 * cs + 1000), // the last, partial chunk
        (2 * cs + 999, 2 * cs + 1000),
        (0, 2 * cs + 1000), // everything
        (5, 5),             // empty
    ] {
        let got = read(start, end).await.unwrap();
        assert!(
            got == bytes[start as usize..end as usize],
            "range {start}..{end} differs"
        );
    }
    let err = read(2 * cs, 2 * cs + 1001).await.unwrap_err();
    assert!(
        matches!(err, StorageError::InvalidRange { size, .. } if size == 2 * cs + 1000),
        "{err}"
    );
    assert!(err.to_string().contains("t/ranges/memfile"), "{err}");
}

pub async fn delete_prefix_removes_the_session_and_only_it(make: impl Make) {
    let backend = make(CACHE).await;
    for prefix in ["a/b", "a/bc"] {
        let session = backend.storage.session(prefix).await.unwrap();
        session.put_bytes("x", b"1".to_vec()).await.unwrap();
        session.put_bytes("y/z", b"2".to_vec()).await.unwrap();
        session.commit().await.unwrap();
    }
    // Two objects and the manifest.
    assert_eq!(backend.storage.delete_prefix("a/b").await.unwrap(), 3);
    assert!(backend.storage.manifest("a/b").await.unwrap().is_none());
    assert!(keys_under(&backend, "a/b").await.is_empty());
    let err = backend.storage.get_bytes("a/b", "x").await.unwrap_err();
    assert!(matches!(err, StorageError::NotFound { .. }), "{err}");
    // The sibling prefix with a common string prefix is untouched.
    assert_eq!(
        backend.storage.get_bytes("a/bc", "x").await.unwrap(),
        &b"1"[..]
    );
    assert_eq!(backend.storage.delete_prefix("a/b").await.unwrap(), 0);
}

pub async fn missing_objects_are_not_found(make: impl Make) {
    let backend = make(CACHE).await;
    let storage = &backend.storage;
    assert!(storage.manifest("nope").await.unwrap().is_none());
    let err = storage.get_bytes("nope", "x").await.unwrap_err();
    assert!(
        matches!(&err, StorageError::NotFound { key, .. } if key == "nope/x"),
        "{err}"
    );
    assert!(err.to_string().contains(storage.describe()), "{err}");
    let err = storage.read_range("nope/x", 0..1).await.unwrap_err();
    assert!(matches!(err, StorageError::NotFound { .. }), "{err}");
    let err = storage.size("nope/x").await.unwrap_err();
    assert!(matches!(err, StorageError::NotFound { .. }), "{err}");
    assert!(!storage.exists("nope/x").await.unwrap());
    // A committed session without the name.
    let session = storage.session("p").await.unwrap();
    session.put_bytes("a", b"a".to_vec()).await.unwrap();
    session.commit().await.unwrap();
    let err = storage
        .download_file("p", "b", &std::env::temp_dir().join("never"))
        .await
        .unwrap_err();
    assert!(matches!(err, StorageError::NotFound { .. }), "{err}");
}

pub async fn a_corrupted_object_is_detected_on_download(make: impl Make) {
    let backend = make(CACHE).await;
    let bytes = data(3 * MIB, 4);
    let session = backend.storage.session("t/c").await.unwrap();
    let entry = session.put_bytes("rootfs", bytes.clone()).await.unwrap();
    session.put_bytes("short", bytes.clone()).await.unwrap();
    session.commit().await.unwrap();
    // Flip one byte behind Kiln's back; shorten the other object.
    let mut tampered = bytes.clone();
    tampered[MIB as usize] ^= 0xff;
    backend
        .raw
        .put(&Key::from("t/c/rootfs"), tampered.clone().into())
        .await
        .unwrap();
    backend
        .raw
        .put(&Key::from("t/c/short"), bytes[..1000].to_vec().into())
        .await
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("rootfs");
    let err = backend
        .storage
        .download_file("t/c", "rootfs", &dest)
        .await
        .unwrap_err();
    let message = err.to_string();
    match &err {
        StorageError::Corrupt {
            key,
            expected,
            actual,
            ..
        } => {
            assert_eq!(key, "t/c/rootfs");
            assert!(expected.contains(&entry.sha256), "{message}");
            assert!(
                actual.contains(&hex::encode(Sha256::digest(&tampered))),
                "{message}"
            );
        }
        other => panic!("expected Corrupt, got {other}"),
    }
    assert!(
        !dest.exists(),
        "a corrupt download must not reach its destination"
    );
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "temporary file left"
    );
    let err = backend
        .storage
        .get_bytes("t/c", "rootfs")
        .await
        .unwrap_err();
    assert!(matches!(err, StorageError::Corrupt { .. }), "{err}");
    let err = backend.storage.get_bytes("t/c", "short").await.unwrap_err();
    assert!(
        matches!(
            err,
            StorageError::Corrupt { .. } | StorageError::Backend { .. }
        ),
        "a shortened object must fail: {err}"
    );
}

pub async fn a_failed_multipart_upload_leaves_nothing_visible(make: impl Make) {
    let backend = make(CACHE).await;
    let dir = tempfile::tempdir().unwrap();
    let file = write_file(dir.path(), "big", &data(25 * MIB, 5));
    let session = backend.storage.session("t/fail").await.unwrap();
    session
        .put_bytes("first", b"written".to_vec())
        .await
        .unwrap();
    backend.probe.fail_part.store(2, Ordering::SeqCst);
    let err = session.upload_file("big", &file).await.unwrap_err();
    assert!(err.to_string().contains("injected failure"), "{err}");
    assert!(err.to_string().contains("t/fail/big"), "{err}");
    assert_eq!(
        backend.probe.aborts.load(Ordering::SeqCst),
        1,
        "the multipart upload is aborted"
    );
    session.abort().await.unwrap();
    assert!(backend.storage.manifest("t/fail").await.unwrap().is_none());
    assert!(keys_under(&backend, "t/fail").await.is_empty());

    // A failing single PUT in the middle of a session, then the session is dropped.
    *backend.probe.fail_put.lock().unwrap() = Some("second".into());
    let session = backend.storage.session("t/fail2").await.unwrap();
    session
        .put_bytes("first", b"written".to_vec())
        .await
        .unwrap();
    assert!(session.put_bytes("second", b"x".to_vec()).await.is_err());
    drop(session);
    until_empty(&backend, "t/fail2").await;
}

pub async fn a_session_dropped_without_commit_leaves_nothing(make: impl Make) {
    let backend = make(CACHE).await;
    let dir = tempfile::tempdir().unwrap();
    let file = write_file(dir.path(), "big", &data(12 * MIB, 6));
    {
        let session = backend.storage.session("t/dropped").await.unwrap();
        session.upload_file("big", &file).await.unwrap();
        session.put_bytes("small", b"x".to_vec()).await.unwrap();
        assert_eq!(keys_under(&backend, "t/dropped").await.len(), 2);
    }
    until_empty(&backend, "t/dropped").await;
    assert!(
        backend
            .storage
            .manifest("t/dropped")
            .await
            .unwrap()
            .is_none()
    );
}

pub async fn a_committed_prefix_is_not_written_again(make: impl Make) {
    let backend = make(CACHE).await;
    let session = backend.storage.session("t/once").await.unwrap();
    session.put_bytes("x", b"1".to_vec()).await.unwrap();
    session.commit().await.unwrap();
    let err = backend.storage.session("t/once").await.unwrap_err();
    assert!(matches!(err, StorageError::AlreadyExists { .. }), "{err}");
    assert_eq!(
        backend.storage.get_bytes("t/once", "x").await.unwrap(),
        &b"1"[..]
    );
    for bad in ["", "/abs", "a//b", "a/../b", "trailing/"] {
        assert!(
            backend.storage.session(bad).await.is_err(),
            "{bad:?} accepted"
        );
    }
}

pub async fn the_chunk_cache_is_bounded_and_fetches_a_chunk_once(make: impl Make) {
    // Room for two chunks.
    let backend = make(2 * CHUNK_SIZE).await;
    let bytes = data(5 * CHUNK_SIZE, 7);
    let session = backend.storage.session("t/cache").await.unwrap();
    session.put_bytes("memfile", bytes.clone()).await.unwrap();
    session.commit().await.unwrap();
    let gets = || backend.probe.gets.load(Ordering::SeqCst);
    let before = gets();

    // 16 concurrent readers of one chunk: one GET.
    let reads = (0..16u64).map(|i| {
        let storage = backend.storage.clone();
        async move {
            storage
                .read_range("t/cache/memfile", i * 1000..i * 1000 + 100)
                .await
        }
    });
    for (i, got) in join_all(reads).await.into_iter().enumerate() {
        let start = i * 1000;
        assert!(got.unwrap() == bytes[start..start + 100]);
    }
    assert_eq!(gets() - before, 1, "single-flight: one fetch for one chunk");

    // Every chunk once: 4 more fetches; the cache never holds more than two chunks.
    for index in 0..5 {
        let start = index * CHUNK_SIZE + 10;
        let got = backend
            .storage
            .read_range("t/cache/memfile", start..start + 10)
            .await
            .unwrap();
        assert!(got == bytes[start as usize..start as usize + 10]);
        assert!(
            backend.cache_bytes_on_disk() <= 2 * CHUNK_SIZE,
            "cache over its bound"
        );
    }
    assert_eq!(gets() - before, 5);
    // The most recent chunk is still cached; the first was evicted.
    backend
        .storage
        .read_range("t/cache/memfile", 4 * CHUNK_SIZE..4 * CHUNK_SIZE + 1)
        .await
        .unwrap();
    assert_eq!(gets() - before, 5);
    backend
        .storage
        .read_range("t/cache/memfile", 0..1)
        .await
        .unwrap();
    assert_eq!(gets() - before, 6);
}

pub async fn a_cold_reader_finds_the_next_chunks_fetched_ahead(make: impl Make) {
    let backend = make(CACHE).await;
    let bytes = data(4 * CHUNK_SIZE, 9);
    let session = backend.storage.session("t/ahead").await.unwrap();
    session.put_bytes("memfile", bytes.clone()).await.unwrap();
    session.commit().await.unwrap();
    let gets = || backend.probe.gets.load(Ordering::SeqCst);
    let before = gets();
    let first = backend
        .storage
        .read_range("t/ahead/memfile", 0..10)
        .await
        .unwrap();
    assert!(first == bytes[..10]);
    // The next three chunks are fetched in the background: one GET each, then no more.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while gets() - before < 4 {
        assert!(std::time::Instant::now() < deadline, "no read-ahead");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let rest = backend
        .storage
        .read_range("t/ahead/memfile", 10..4 * CHUNK_SIZE)
        .await
        .unwrap();
    assert!(rest == bytes[10..]);
    assert_eq!(gets() - before, 4, "every chunk fetched once");
}

pub async fn the_chunk_cache_survives_a_restart(make: impl Make) {
    let backend = make(CACHE).await;
    let bytes = data(CHUNK_SIZE + 10, 8);
    let session = backend.storage.session("t/restart").await.unwrap();
    session.put_bytes("memfile", bytes.clone()).await.unwrap();
    session.commit().await.unwrap();
    backend
        .storage
        .read_range("t/restart/memfile", 0..CHUNK_SIZE + 10)
        .await
        .unwrap();
    // A leftover of an interrupted chunk write.
    std::fs::write(backend.cache_dir.join(".partial-x"), b"junk").unwrap();

    let (restarted, probe) = backend.reopen(CACHE);
    let got = restarted
        .read_range("t/restart/memfile", 5..CHUNK_SIZE + 5)
        .await
        .unwrap();
    assert!(got == bytes[5..CHUNK_SIZE as usize + 5]);
    assert_eq!(
        probe.gets.load(Ordering::SeqCst),
        0,
        "served from the cache on disk"
    );
    assert!(!backend.cache_dir.join(".partial-x").exists());
    // A smaller bound at restart evicts down to it.
    let (_small, _) = backend.reopen(CHUNK_SIZE);
    assert!(backend.cache_bytes_on_disk() <= CHUNK_SIZE);
}

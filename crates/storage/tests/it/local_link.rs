//! The `Local` provider links instead of copying when the file and the bucket share a
//! filesystem; the manifest's sha256 still guards every download.

use std::os::unix::fs::MetadataExt;
use storage::{Storage, StorageConfig, StorageError};

fn local(dir: &std::path::Path) -> Storage {
    let config = StorageConfig::from_env(dir, |key| match key {
        "STORAGE_PROVIDER" => Some("Local".into()),
        _ => None,
    })
    .unwrap();
    Storage::from_config(&config).unwrap()
}

#[tokio::test]
async fn local_uploads_and_downloads_are_links_checked_by_digest() {
    let dir = tempfile::tempdir().unwrap();
    let storage = local(dir.path());
    let file = dir.path().join("image");
    let bytes: Vec<u8> = (0..(3u32 << 20)).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(&file, &bytes).unwrap();

    let session = storage.session("snap/one").await.unwrap();
    let entry = session.upload_file("checkpoint.img", &file).await.unwrap();
    session.commit().await.unwrap();
    let stored = dir.path().join("storage/templates/snap/one/checkpoint.img");
    assert_eq!(
        std::fs::metadata(&stored).unwrap().ino(),
        std::fs::metadata(&file).unwrap().ino(),
        "stored as a link, not a copy"
    );
    assert_eq!(entry.size, bytes.len() as u64);

    // The local copy goes away; storage keeps the bytes.
    std::fs::remove_file(&file).unwrap();
    let fetched = dir.path().join("fetched");
    storage
        .download_file("snap/one", "checkpoint.img", &fetched)
        .await
        .unwrap();
    assert_eq!(std::fs::read(&fetched).unwrap(), bytes);

    // Replaced behind the manifest's back: the download refuses it and leaves nothing.
    std::fs::remove_file(&stored).unwrap();
    let mut tampered = bytes.clone();
    tampered[12345] ^= 1;
    std::fs::write(&stored, &tampered).unwrap();
    let again = dir.path().join("again");
    let error = storage
        .download_file("snap/one", "checkpoint.img", &again)
        .await
        .unwrap_err();
    assert!(matches!(error, StorageError::Corrupt { .. }), "{error}");
    assert!(!again.exists());
}

//! Chunk-cache throughput against a plain full read of the same object, on the same backend:
//! a local directory and a real S3 server (s3s-fs) on loopback.
//!
//! `cargo run --release -p storage --example chunk_cache_bench [size MiB, default 256]`
//!
//! For each backend it prints MiB/s of: one plain GET of the whole object; sequential 1 MiB
//! `read_range`s with a cold cache (every chunk fetched once) and a warm one (all from local
//! chunk files); 4 KiB reads at random offsets, warm. The ratio is to the plain read.

#![allow(clippy::unwrap_used, unreachable_pub, dead_code)]

#[path = "../tests/it/util.rs"]
mod util;
// `util` builds OCI native backends on the stand-in.
#[path = "../tests/it/oci_standin.rs"]
mod oci_standin;

use object_store::{ObjectStoreExt, path::Path as Key};
use std::time::Instant;
use util::{Backend, MIB, data};

const KEY: &str = "bench/object/memfile";

fn rate(bytes: u64, seconds: f64) -> f64 {
    bytes as f64 / MIB as f64 / seconds
}

async fn bench(name: &str, backend: Backend, size: u64) {
    let session = backend.storage.session("bench/object").await.unwrap();
    session.put_bytes("memfile", data(size, 1)).await.unwrap();
    session.commit().await.unwrap();
    let storage = &backend.storage;

    let start = Instant::now();
    let whole = backend
        .raw
        .get(&Key::from(KEY))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(whole.len() as u64, size);
    let plain = rate(size, start.elapsed().as_secs_f64());

    let sequential = |label: &'static str| async move {
        let start = Instant::now();
        for offset in (0..size).step_by(MIB as usize) {
            let got = storage
                .read_range(KEY, offset..(offset + MIB).min(size))
                .await
                .unwrap();
            assert_eq!(got.len() as u64, (offset + MIB).min(size) - offset);
        }
        (label, rate(size, start.elapsed().as_secs_f64()))
    };
    let cold = sequential("read_range 1 MiB sequential, cold cache").await;
    let warm = sequential("read_range 1 MiB sequential, warm cache").await;

    let reads = 20_000u64;
    let start = Instant::now();
    let mut offset = 12_345u64;
    for _ in 0..reads {
        offset = (offset
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1))
            % (size - 4096);
        storage
            .read_range(KEY, offset..offset + 4096)
            .await
            .unwrap();
    }
    let random = (
        "read_range 4 KiB random, warm cache",
        rate(reads * 4096, start.elapsed().as_secs_f64()),
    );

    println!("{name} ({} MiB object)", size / MIB);
    println!("  {:<44} {plain:>9.1} MiB/s", "plain full GET");
    for (label, value) in [cold, warm, random] {
        println!(
            "  {label:<44} {value:>9.1} MiB/s  ({:.2}x plain)",
            value / plain
        );
    }
}

#[tokio::main]
async fn main() {
    let size = std::env::args()
        .nth(1)
        .map(|s| s.parse::<u64>().unwrap())
        .unwrap_or(256)
        * MIB;
    let cache = 2 * size;
    bench("Local", util::local(cache).await, size).await;
    bench("S3 (s3s-fs on loopback)", util::s3(cache).await, size).await;
}

//! Storage integration tests: one provider contract suite run against every backend that runs
//! offline (a local directory, a real S3 server on loopback, a stand-in for OCI Object
//! Storage's native API on loopback), the OCI S3-compatibility constraints checked on the
//! wire, and OCI native-API specifics (signatures, encoding, conditions, ranges, paging).

#![allow(clippy::unwrap_used, unreachable_pub, dead_code)]

mod contract;
mod local_link;
mod oci_compat;
mod oci_native;
mod oci_standin;
mod util;

/// Runs each contract function against each backend, as its own test.
macro_rules! contract_suite {
    ($($test:ident),* $(,)?) => {
        mod local {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $test() {
                    crate::contract::$test(crate::util::local).await;
                }
            )*
        }
        mod s3 {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $test() {
                    crate::contract::$test(crate::util::s3).await;
                }
            )*
        }
        mod oci_native_contract {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $test() {
                    crate::contract::$test(crate::util::oci_native).await;
                }
            )*
        }
    };
}

contract_suite!(
    multipart_upload_round_trips_with_its_sha256,
    small_objects_round_trip,
    ranged_reads_cross_chunks_and_stop_at_the_end,
    delete_prefix_removes_the_session_and_only_it,
    missing_objects_are_not_found,
    a_corrupted_object_is_detected_on_download,
    a_failed_multipart_upload_leaves_nothing_visible,
    a_session_dropped_without_commit_leaves_nothing,
    a_committed_prefix_is_not_written_again,
    the_chunk_cache_is_bounded_and_fetches_a_chunk_once,
    the_chunk_cache_survives_a_restart,
    a_cold_reader_finds_the_next_chunks_fetched_ahead,
);

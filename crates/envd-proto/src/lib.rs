//! envd's wire messages: the `process` and `filesystem` protobuf packages the E2B SDKs call.
//!
//! Types are generated at build time from `proto/` by prost (binary codec) and pbjson (ProtoJSON:
//! lowerCamelCase out, both spellings in, `int64` as strings, enums by name, unknown fields
//! ignored). Both `envd` (the server) and the host side of Kiln (which calls envd over the
//! sandbox socket) use these types, so this crate knows nothing about transport.

#![allow(missing_docs, unreachable_pub, clippy::all)]

/// `package process`: starting, attaching to, feeding and signalling processes.
pub mod process {
    include!(concat!(env!("OUT_DIR"), "/process.rs"));
    include!(concat!(env!("OUT_DIR"), "/process.serde.rs"));

    /// The RPC paths of `process.Process`, as routed by an HTTP server.
    pub mod paths {
        pub const LIST: &str = "/process.Process/List";
        pub const CONNECT: &str = "/process.Process/Connect";
        pub const START: &str = "/process.Process/Start";
        pub const UPDATE: &str = "/process.Process/Update";
        pub const STREAM_INPUT: &str = "/process.Process/StreamInput";
        pub const SEND_INPUT: &str = "/process.Process/SendInput";
        pub const SEND_SIGNAL: &str = "/process.Process/SendSignal";
        pub const CLOSE_STDIN: &str = "/process.Process/CloseStdin";
    }
}

/// `package filesystem`: stat, list, move, remove and watch.
pub mod filesystem {
    include!(concat!(env!("OUT_DIR"), "/filesystem.rs"));
    include!(concat!(env!("OUT_DIR"), "/filesystem.serde.rs"));

    /// The RPC paths of `filesystem.Filesystem`.
    pub mod paths {
        pub const STAT: &str = "/filesystem.Filesystem/Stat";
        pub const MAKE_DIR: &str = "/filesystem.Filesystem/MakeDir";
        pub const MOVE: &str = "/filesystem.Filesystem/Move";
        pub const LIST_DIR: &str = "/filesystem.Filesystem/ListDir";
        pub const REMOVE: &str = "/filesystem.Filesystem/Remove";
        pub const WATCH_DIR: &str = "/filesystem.Filesystem/WatchDir";
        pub const CREATE_WATCHER: &str = "/filesystem.Filesystem/CreateWatcher";
        pub const GET_WATCHER_EVENTS: &str = "/filesystem.Filesystem/GetWatcherEvents";
        pub const REMOVE_WATCHER: &str = "/filesystem.Filesystem/RemoveWatcher";
    }
}

/// The contract between envd and the host side of Kiln, beyond E2B's protocol.
pub mod host {
    /// The envd protocol version envd reports. The SDKs gate features on it; 0.6.4 turns every
    /// gate of e2b 2.63 (Python) and 2.51 (JS) on.
    pub const ENVD_VERSION: &str = "0.6.4";
    /// Response header carrying [`ENVD_VERSION`] on `/health` and `/init`.
    pub const ENVD_VERSION_HEADER: &str = "x-envd-version";
    /// envd's TCP port inside a sandbox, and the `E2b-Sandbox-Port` that addresses envd.
    pub const ENVD_PORT: u16 = 49983;
    /// Host socket only: close the socket listener and every connection over it, then
    /// acknowledge (`200`, then the connection closes). Sent before `runsc checkpoint`.
    pub const QUIESCE_PATH: &str = "/_kiln/quiesce";
    /// After a restore the host creates this file beside envd's socket (in the host channel
    /// directory); a quiesced envd polls for it, removes it and listens again. A file rather
    /// than a signal: delivering a signal into a sandbox takes a `runsc kill` process (~25 ms on
    /// the create path), creating a file takes microseconds.
    pub const RESUME_FILE: &str = "resume";
    /// Paths only the host may call; a proxy must refuse them from outside.
    pub const INTERNAL_PATHS: &[&str] = &["/init", QUIESCE_PATH];
    /// Whether a request path is host-only.
    pub fn is_internal_path(path: &str) -> bool {
        path.starts_with("/_kiln/") || INTERNAL_PATHS.contains(&path)
    }
}

#[cfg(test)]
mod tests {
    use super::filesystem::{EntryInfo, FileType};
    use super::process::{ProcessEvent, StartRequest, process_event};

    #[test]
    fn end_event_with_exit_code_zero_omits_it() {
        let event = ProcessEvent {
            event: Some(process_event::Event::End(process_event::EndEvent {
                exit_code: 0,
                exited: true,
                status: "exit status 0".into(),
                error: None,
            })),
        };
        assert_eq!(
            serde_json::to_string(&event).unwrap(),
            r#"{"end":{"exited":true,"status":"exit status 0"}}"#
        );
    }

    #[test]
    fn entry_info_uses_camel_case_strings_for_int64_and_enum_names() {
        let entry = EntryInfo {
            name: "a".into(),
            r#type: FileType::File as i32,
            size: 2,
            symlink_target: Some("b".into()),
            modified_time: Some(pbjson_types::Timestamp {
                seconds: 1,
                nanos: 5,
            }),
            ..Default::default()
        };
        let json = serde_json::to_value(&entry).unwrap();
        assert_eq!(json["type"], "FILE_TYPE_FILE");
        assert_eq!(json["size"], "2");
        assert_eq!(json["symlinkTarget"], "b");
        assert_eq!(json["modifiedTime"], "1970-01-01T00:00:01.000000005+00:00");
    }

    #[test]
    fn requests_accept_both_spellings_and_ignore_unknown_fields() {
        let req: StartRequest = serde_json::from_str(
            r#"{"process":{"cmd":"/bin/bash","args":["-l"],"envs":{"A":"1"}},"stdin":false,"bogus":1}"#,
        )
        .unwrap();
        assert_eq!(req.stdin, Some(false));
        let entry: EntryInfo =
            serde_json::from_str(r#"{"symlink_target":"x","size":7,"is_symlink":true}"#).unwrap();
        assert_eq!(entry.symlink_target.as_deref(), Some("x"));
        assert_eq!(entry.size, 7);
        assert!(entry.is_symlink);
    }
}

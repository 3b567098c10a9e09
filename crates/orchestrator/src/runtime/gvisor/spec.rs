//! The OCI runtime spec (`config.json`) of a Kiln sandbox under runsc.

use super::super::{BootMode, Limits, SANDBOX_SOCKET};
use serde_json::{Value, json};
use std::path::Path;

/// Docker's default capability set: envd (root inside the sandbox) needs SETUID/SETGID to run
/// processes as other users, and users with sudo expect the rest. gVisor's own kernel enforces
/// them; none reaches the host kernel.
const CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_RAW",
    "CAP_SYS_CHROOT",
    "CAP_MKNOD",
    "CAP_AUDIT_WRITE",
    "CAP_SETFCAP",
];

/// The CFS period that `cpu_count` is a multiple of.
const CPU_PERIOD_US: u64 = 100_000;

/// The host cgroup (under each controller) of sandbox `id`; runsc creates and removes it, and
/// applies no limits at all without one.
pub(super) fn cgroup_path(id: &str) -> String {
    format!("/kiln/{id}")
}

/// envd as init, the template's root filesystem (kept unmodified when sealed: runsc's root
/// overlay holds the sandbox's writes in its memory), the host channel directory at `/run/kiln`,
/// and cgroup limits. A build sandbox keeps `/tmp` on the root filesystem (a step's files there
/// belong to the template, as in a Docker build) and may join a network namespace.
pub(super) fn sandbox_spec(
    id: &str,
    rootfs: &Path,
    channel: &Path,
    limits: Limits,
    mode: &BootMode,
) -> Value {
    let mut spec = json!({
        "ociVersion": "1.0.2",
        "process": {
            "user": {"uid": 0, "gid": 0},
            "args": ["/usr/bin/envd", "--socket", SANDBOX_SOCKET, "--no-tcp", "--sudo"],
            "env": [
                "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "ENVD_LOG=warn",
            ],
            "cwd": "/",
            "capabilities": {
                "bounding": CAPABILITIES,
                "effective": CAPABILITIES,
                "permitted": CAPABILITIES,
            },
        },
        "root": {"path": rootfs, "readonly": false},
        "hostname": "kiln",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "mode=755"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
             "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "nodev", "mode=1777"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]},
            {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev", "mode=1777"]},
            {"destination": "/run/kiln", "type": "bind", "source": channel, "options": ["rbind", "rw"]},
        ],
        "linux": {
            "cgroupsPath": cgroup_path(id),
            "namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}, {"type": "network"}],
            "resources": {
                "cpu": {"quota": u64::from(limits.cpu_count.max(1)) * CPU_PERIOD_US, "period": CPU_PERIOD_US},
                "memory": {"limit": limits.memory_mb.max(64) * 1024 * 1024},
            },
        },
    });
    if let BootMode::Build { network } = mode {
        if let Some(mounts) = spec["mounts"].as_array_mut() {
            mounts.retain(|m| m["destination"] != "/tmp");
            // envd's own sockets must not end up in the template's files.
            mounts.push(
                json!({"destination": "/run/envd", "type": "tmpfs", "source": "tmpfs",
                "options": ["nosuid", "nodev", "mode=755"]}),
            );
            if let Some(network) = network {
                mounts.push(json!({"destination": "/etc/resolv.conf", "type": "bind",
                    "source": network.resolv_conf, "options": ["bind", "ro"]}));
            }
        }
        if let (Some(network), Some(namespaces)) =
            (network, spec["linux"]["namespaces"].as_array_mut())
        {
            for namespace in namespaces.iter_mut() {
                if namespace["type"] == "network" {
                    namespace["path"] = json!(network.path);
                }
            }
        }
    }
    spec
}

#[cfg(test)]
mod tests {
    use super::sandbox_spec;
    use crate::runtime::{BootMode, Limits};
    use std::path::Path;

    #[test]
    fn spec_mounts_the_channel_and_sets_limits() {
        let spec = sandbox_spec(
            "abc",
            Path::new("/t/rootfs"),
            Path::new("/s/channel"),
            Limits {
                cpu_count: 2,
                memory_mb: 512,
            },
            &BootMode::Sealed,
        );
        assert_eq!(spec["root"]["path"], "/t/rootfs");
        assert_eq!(spec["linux"]["cgroupsPath"], "/kiln/abc");
        let channel = spec["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["destination"] == "/run/kiln")
            .unwrap();
        assert_eq!(channel["source"], "/s/channel");
        assert_eq!(spec["linux"]["resources"]["cpu"]["quota"], 200_000);
        assert_eq!(
            spec["linux"]["resources"]["memory"]["limit"],
            512 * 1024 * 1024
        );
        assert_eq!(spec["process"]["args"][0], "/usr/bin/envd");
        let caps = spec["process"]["capabilities"]["effective"]
            .as_array()
            .unwrap();
        assert!(caps.iter().any(|c| c == "CAP_SETUID") && caps.iter().any(|c| c == "CAP_SETGID"));
        let tmp = |spec: &serde_json::Value| {
            spec["mounts"]
                .as_array()
                .unwrap()
                .iter()
                .any(|m| m["destination"] == "/tmp")
        };
        assert!(tmp(&spec), "a sealed sandbox's /tmp is a tmpfs");

        let build = sandbox_spec(
            "abc",
            Path::new("/t/rootfs"),
            Path::new("/s/channel"),
            Limits {
                cpu_count: 1,
                memory_mb: 256,
            },
            &BootMode::Build {
                network: Some(crate::runtime::NetworkNamespace {
                    path: "/run/netns/b1".into(),
                    resolv_conf: "/b/resolv.conf".into(),
                }),
            },
        );
        assert!(!tmp(&build), "a build step's /tmp belongs to the template");
        let network = build["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["type"] == "network")
            .unwrap();
        assert_eq!(network["path"], "/run/netns/b1");
    }
}

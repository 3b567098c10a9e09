//! Network for template build steps: a network namespace per build, a veth pair to the host and
//! NAT to the host's network. The gVisor runtime joins it with `--network=host` (runsc's own
//! network stack does not start on this kernel; see `shared/reference/peers-and-crates.md` §0).
//!
//! Only build sandboxes get one: runsc cannot checkpoint a sandbox on the host network stack,
//! and template snapshots are taken from a fresh, network-less start of the built filesystem.
//!
//! Invariants: each build has its own /30 in [`SUBNET`]; nftables drops traffic from one build
//! network to another and from a build to the host itself (only forwarded, masqueraded traffic
//! leaves); [`BuildNetwork::remove`] deletes the namespace and the host end of the
//! veth (the kernel removes the other end with the namespace); the NAT rule is shared and stays.

use super::{NetworkNamespace, RuntimeError};
use std::{
    path::{Path, PathBuf},
    process::Stdio,
};

/// Addresses of build networks: 10.231.<n>.<4k…4k+3>.
const SUBNET: &str = "10.231.0.0/16";
const NFT_TABLE: &str = "kiln";

/// A build's network namespace, its veth pair and resolv.conf.
#[derive(Debug)]
pub struct BuildNetwork {
    name: String,
    host_link: String,
    resolv_conf: PathBuf,
}

impl BuildNetwork {
    /// Creates the namespace `kiln-<id>` with its own /30 and a default route through the host.
    /// `dir` receives the sandbox's `resolv.conf` (the host's upstream name servers).
    pub async fn create(id: &str, dir: &Path) -> Result<BuildNetwork, RuntimeError> {
        let slot = free_slot().await?;
        let (third, fourth) = (slot / 64, (slot % 64) * 4);
        let host_ip = format!("10.231.{third}.{}", fourth + 1);
        let sandbox_ip = format!("10.231.{third}.{}", fourth + 2);
        let name = format!("kiln-{id}");
        let host_link = format!("kb{slot}h");
        let sandbox_link = format!("kb{slot}s");
        let network = BuildNetwork {
            name: name.clone(),
            host_link: host_link.clone(),
            resolv_conf: dir.join("resolv.conf"),
        };
        let steps: Vec<Vec<String>> = [
            vec!["netns", "add", &name],
            vec![
                "link",
                "add",
                &host_link,
                "type",
                "veth",
                "peer",
                "name",
                &sandbox_link,
            ],
            vec!["link", "set", &sandbox_link, "netns", &name],
            vec!["addr", "add", &format!("{host_ip}/30"), "dev", &host_link],
            vec!["link", "set", &host_link, "up"],
            vec![
                "-n",
                &name,
                "addr",
                "add",
                &format!("{sandbox_ip}/30"),
                "dev",
                &sandbox_link,
            ],
            vec!["-n", &name, "link", "set", &sandbox_link, "up"],
            vec!["-n", &name, "link", "set", "lo", "up"],
            vec!["-n", &name, "route", "add", "default", "via", &host_ip],
        ]
        .into_iter()
        .map(|step| step.into_iter().map(str::to_owned).collect())
        .collect();
        let result = async {
            for step in &steps {
                run("ip", step).await?;
            }
            std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").map_err(|source| {
                RuntimeError::Io {
                    context: "enabling IPv4 forwarding".into(),
                    source,
                }
            })?;
            ensure_nat().await?;
            std::fs::create_dir_all(dir).map_err(|source| RuntimeError::Io {
                context: format!("creating {}", dir.display()),
                source,
            })?;
            std::fs::write(&network.resolv_conf, resolv_conf()).map_err(|source| RuntimeError::Io {
                context: "writing the build's resolv.conf".into(),
                source,
            })
        }
        .await;
        match result {
            Ok(()) => Ok(network),
            Err(error) => {
                network.remove().await;
                Err(error)
            }
        }
    }

    /// What a build sandbox joins.
    pub fn namespace(&self) -> NetworkNamespace {
        NetworkNamespace {
            path: Path::new("/run/netns").join(&self.name),
            resolv_conf: self.resolv_conf.clone(),
        }
    }

    /// Deletes the namespace and the veth pair. Never fails: leftovers are logged.
    pub async fn remove(&self) {
        for step in [
            vec!["link", "del", self.host_link.as_str()],
            vec!["netns", "del", self.name.as_str()],
        ] {
            let step: Vec<String> = step.into_iter().map(str::to_owned).collect();
            if let Err(error) = run("ip", &step).await {
                tracing::debug!(%error, "removing a build network");
            }
        }
    }
}

/// Removes every build network a previous run left (`kiln-*` namespaces, `kb*h` links).
pub async fn remove_leftovers() {
    let Ok(entries) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("kiln-") {
            let _ = run("ip", &["netns".into(), "del".into(), name]).await;
        }
    }
    if let Ok(links) = std::fs::read_dir("/sys/class/net") {
        for link in links.flatten() {
            let name = link.file_name().to_string_lossy().into_owned();
            if name.starts_with("kb") && name.ends_with('h') {
                let _ = run("ip", &["link".into(), "del".into(), name]).await;
            }
        }
    }
}

/// The first slot whose host link does not exist yet.
async fn free_slot() -> Result<u32, RuntimeError> {
    (0..16_384)
        .find(|slot| !Path::new(&format!("/sys/class/net/kb{slot}h")).exists())
        .ok_or_else(|| RuntimeError::Command {
            operation: "network",
            id: String::new(),
            detail: "no free build network".into(),
        })
}

/// (Re)writes Kiln's table: build traffic leaving the host is masqueraded and forwarded; it may
/// not reach the host itself (its services) nor another build's network.
async fn ensure_nat() -> Result<(), RuntimeError> {
    // `add` then `delete` makes the replacement work whether or not the table exists.
    let rules = format!(
        "add table ip {NFT_TABLE}\ndelete table ip {NFT_TABLE}\n\
         table ip {NFT_TABLE} {{\n\
         \tchain postrouting {{ type nat hook postrouting priority srcnat; ip saddr {SUBNET} ip daddr != {SUBNET} masquerade; }}\n\
         \tchain forward {{ type filter hook forward priority filter; ip saddr {SUBNET} ip daddr {SUBNET} drop; ip saddr {SUBNET} accept; ip daddr {SUBNET} ct state established,related accept; }}\n\
         \tchain input {{ type filter hook input priority filter; ip saddr {SUBNET} ct state established,related accept; ip saddr {SUBNET} drop; }}\n\
         }}\n"
    );
    let mut child = tokio::process::Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| RuntimeError::Io {
            context: "running nft (apt-get install nftables)".into(),
            source,
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        use tokio::io::AsyncWriteExt;
        let _ = stdin.write_all(rules.as_bytes()).await;
    }
    let output = child
        .wait_with_output()
        .await
        .map_err(|source| RuntimeError::Io {
            context: "running nft".into(),
            source,
        })?;
    if output.status.success() {
        Ok(())
    } else {
        Err(RuntimeError::Command {
            operation: "nat",
            id: String::new(),
            detail: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        })
    }
}

/// The host's upstream name servers: its resolv.conf, or systemd-resolved's upstream list when
/// the host points at the local stub (unreachable from another namespace).
fn resolv_conf() -> String {
    let host = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let local_only = host
        .lines()
        .filter_map(|l| l.strip_prefix("nameserver"))
        .all(|ip| ip.trim().starts_with("127."));
    if local_only && let Ok(upstream) = std::fs::read_to_string("/run/systemd/resolve/resolv.conf")
    {
        return upstream;
    }
    if host.trim().is_empty() {
        return "nameserver 1.1.1.1\n".into();
    }
    host
}

async fn run(program: &str, args: &[String]) -> Result<(), RuntimeError> {
    let output = tokio::process::Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|source| RuntimeError::Io {
            context: format!("running {program} (apt-get install iproute2)"),
            source,
        })?;
    if output.status.success() {
        return Ok(());
    }
    Err(RuntimeError::Command {
        operation: "network",
        id: args.join(" "),
        detail: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
    })
}

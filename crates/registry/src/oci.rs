//! The few OCI / Docker image-spec documents this crate reads and writes, parsed with serde.
//!
//! Own types rather than oci-client's typed manifests: the same code reads manifests from a
//! registry and from the local image layout, keeps unknown fields of `index.json` entries when
//! rewriting it, and reports the media type or platform that made an image unusable.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub(crate) const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub(crate) const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub(crate) const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub(crate) const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const DOCKER_SCHEMA1: &str = "application/vnd.docker.distribution.manifest.v1+json";

pub(crate) const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";

pub(crate) const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
pub(crate) const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub(crate) const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
const DOCKER_LAYER_TAR: &str = "application/vnd.docker.image.rootfs.diff.tar";

/// Manifest media types sent as `Accept` and accepted in an index.
pub(crate) const MANIFEST_TYPES: &[&str] = &[OCI_MANIFEST, DOCKER_MANIFEST, OCI_INDEX, DOCKER_LIST];

/// The annotation holding an image's name in the local store (`name:tag`).
pub(crate) const REF_NAME: &str = "org.opencontainers.image.ref.name";
/// containerd's (and `docker save`'s) full image name, e.g. `docker.io/library/busybox:latest`.
pub(crate) const CONTAINERD_NAME: &str = "io.containerd.image.name";

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Platform {
    pub(crate) architecture: String,
    pub(crate) os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) variant: Option<String>,
    #[serde(flatten)]
    pub(crate) extra: serde_json::Map<String, serde_json::Value>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Descriptor {
    /// Optional in Docker's `manifest.json`-era tools; OCI requires it.
    #[serde(default)]
    pub(crate) media_type: String,
    pub(crate) digest: String,
    pub(crate) size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) platform: Option<Platform>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) annotations: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) urls: Option<Vec<String>>,
    /// Fields this crate does not know (`artifactType`, `data`), kept when `index.json` is rewritten.
    #[serde(flatten)]
    pub(crate) extra: serde_json::Map<String, serde_json::Value>,
}

impl Descriptor {
    pub(crate) fn new(media_type: &str, digest: String, size: u64) -> Descriptor {
        Descriptor {
            media_type: media_type.to_string(),
            digest,
            size,
            platform: None,
            annotations: None,
            urls: None,
            extra: serde_json::Map::new(),
        }
    }

    pub(crate) fn annotation(&self, key: &str) -> Option<&str> {
        self.annotations.as_ref()?.get(key).map(String::as_str)
    }

    pub(crate) fn platform_name(&self) -> String {
        match &self.platform {
            Some(p) => match &p.variant {
                Some(v) => format!("{}/{}/{v}", p.os, p.architecture),
                None => format!("{}/{}", p.os, p.architecture),
            },
            None => "unknown".to_string(),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ImageIndex {
    pub(crate) schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) media_type: Option<String>,
    #[serde(default)]
    pub(crate) manifests: Vec<Descriptor>,
    #[serde(flatten)]
    pub(crate) extra: serde_json::Map<String, serde_json::Value>,
}

impl ImageIndex {
    pub(crate) fn empty() -> ImageIndex {
        ImageIndex {
            schema_version: 2,
            media_type: Some(OCI_INDEX.to_string()),
            manifests: Vec::new(),
            extra: serde_json::Map::new(),
        }
    }

    /// The linux/amd64 image manifest of this index; else the platforms it has.
    pub(crate) fn linux_amd64(&self) -> Result<&Descriptor, String> {
        self.manifests
            .iter()
            .filter(|d| matches!(d.media_type.as_str(), OCI_MANIFEST | DOCKER_MANIFEST | ""))
            .find(|d| {
                d.platform
                    .as_ref()
                    .is_some_and(|p| p.os == "linux" && p.architecture == "amd64")
            })
            .ok_or_else(|| {
                let names: Vec<String> = self.manifests.iter().map(|d| d.platform_name()).collect();
                if names.is_empty() {
                    "no manifests".to_string()
                } else {
                    names.join(", ")
                }
            })
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ImageManifest {
    pub(crate) schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) media_type: Option<String>,
    pub(crate) config: Descriptor,
    #[serde(default)]
    pub(crate) layers: Vec<Descriptor>,
}

impl ImageManifest {
    /// The media type to send as `Content-Type` when pushing this manifest.
    pub(crate) fn content_type(&self) -> &str {
        self.media_type.as_deref().unwrap_or(OCI_MANIFEST)
    }

    /// The first config or layer this crate cannot hand to the builder, as (what, media type).
    pub(crate) fn unsupported_part(&self) -> Option<(String, String)> {
        if !matches!(self.config.media_type.as_str(), OCI_CONFIG | DOCKER_CONFIG) {
            return Some(("config".into(), self.config.media_type.clone()));
        }
        self.layers
            .iter()
            .enumerate()
            .find(|(_, l)| !is_layer_type(&l.media_type))
            .map(|(i, l)| (format!("layer {i}"), l.media_type.clone()))
    }
}

/// Layer media types the template builder can unpack. Non-distributable ("foreign") layers are
/// not among them: their bytes live elsewhere.
pub(crate) fn is_layer_type(media_type: &str) -> bool {
    matches!(
        media_type,
        OCI_LAYER_TAR | OCI_LAYER_GZIP | OCI_LAYER_ZSTD | DOCKER_LAYER_GZIP | DOCKER_LAYER_TAR
    )
}

/// A manifest as fetched: an image, or an index to resolve to linux/amd64.
pub(crate) enum Manifest {
    Image(Box<ImageManifest>),
    Index(ImageIndex),
}

/// Why a manifest could not be parsed: a media type this crate does not pull, or bad JSON.
pub(crate) enum ManifestError {
    Unsupported(String),
    Malformed(String),
}

pub(crate) fn parse_manifest(bytes: &[u8]) -> Result<Manifest, ManifestError> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Probe {
        schema_version: Option<u32>,
        media_type: Option<String>,
        manifests: Option<serde_json::Value>,
        config: Option<serde_json::Value>,
    }
    let malformed = |e: serde_json::Error| ManifestError::Malformed(e.to_string());
    let probe: Probe = serde_json::from_slice(bytes).map_err(malformed)?;
    if probe.schema_version == Some(1) {
        return Err(ManifestError::Unsupported(DOCKER_SCHEMA1.into()));
    }
    let is_index = match probe.media_type.as_deref() {
        Some(OCI_INDEX | DOCKER_LIST) => true,
        Some(OCI_MANIFEST | DOCKER_MANIFEST) => false,
        Some(other) => return Err(ManifestError::Unsupported(other.into())),
        // OCI allows leaving mediaType out; the shape tells.
        None if probe.manifests.is_some() => true,
        None if probe.config.is_some() => false,
        None => {
            return Err(ManifestError::Malformed(
                "neither an image manifest nor an index".into(),
            ));
        }
    };
    if is_index {
        serde_json::from_slice(bytes)
            .map(Manifest::Index)
            .map_err(malformed)
    } else {
        serde_json::from_slice(bytes)
            .map(Manifest::Image)
            .map_err(malformed)
    }
}

/// The image config file; only what a sandbox needs and the platform.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct ConfigFile {
    #[serde(default)]
    pub(crate) architecture: Option<String>,
    #[serde(default)]
    pub(crate) os: Option<String>,
    #[serde(default)]
    pub(crate) config: Option<RuntimeConfig>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct RuntimeConfig {
    #[serde(default)]
    pub(crate) env: Option<Vec<String>>,
    #[serde(default)]
    pub(crate) user: Option<String>,
    #[serde(default)]
    pub(crate) working_dir: Option<String>,
    #[serde(default)]
    pub(crate) entrypoint: Option<Vec<String>>,
    #[serde(default)]
    pub(crate) cmd: Option<Vec<String>>,
}

impl ConfigFile {
    /// `None` when the config names no platform or names linux/amd64; else the platform.
    pub(crate) fn foreign_platform(&self) -> Option<String> {
        match (self.os.as_deref(), self.architecture.as_deref()) {
            (None | Some("linux"), None | Some("amd64")) => None,
            (os, arch) => Some(format!(
                "{}/{}",
                os.unwrap_or("unknown"),
                arch.unwrap_or("unknown")
            )),
        }
    }

    pub(crate) fn into_image_config(self) -> crate::ImageConfig {
        let c = self.config.unwrap_or_default();
        // Empty strings mean "not set" in Docker's configs.
        let non_empty = |s: Option<String>| s.filter(|s| !s.is_empty());
        crate::ImageConfig {
            env: c.env.unwrap_or_default(),
            user: non_empty(c.user),
            working_dir: non_empty(c.working_dir),
            entrypoint: c.entrypoint.unwrap_or_default(),
            cmd: c.cmd.unwrap_or_default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_linux_amd64_from_an_index() {
        let index = r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[
            {"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:a","size":1,"platform":{"architecture":"arm64","os":"linux","variant":"v8"}},
            {"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:b","size":1,"platform":{"architecture":"amd64","os":"linux"}},
            {"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:c","size":1,"platform":{"architecture":"unknown","os":"unknown"}}]}"#;
        let Ok(Manifest::Index(index)) = parse_manifest(index.as_bytes()) else {
            panic!("not an index")
        };
        assert_eq!(index.linux_amd64().unwrap().digest, "sha256:b");
        let mut arm = index.clone();
        arm.manifests.remove(1);
        assert_eq!(
            arm.linux_amd64().unwrap_err(),
            "linux/arm64/v8, unknown/unknown"
        );
    }

    #[test]
    fn rejects_schema1_and_artifacts() {
        assert!(matches!(
            parse_manifest(br#"{"schemaVersion":1,"name":"x"}"#),
            Err(ManifestError::Unsupported(_))
        ));
        let helm = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",
            "config":{"mediaType":"application/vnd.cncf.helm.config.v1+json","digest":"sha256:a","size":1},"layers":[]}"#;
        let Ok(Manifest::Image(m)) = parse_manifest(helm) else {
            panic!("not an image")
        };
        assert_eq!(m.unsupported_part().unwrap().0, "config");
    }

    #[test]
    fn reads_the_runtime_config() {
        let c: ConfigFile = serde_json::from_str(
            r#"{"architecture":"amd64","os":"linux","config":{"Env":["A=1"],"User":"","WorkingDir":"/app","Cmd":["python3"]}}"#,
        )
        .unwrap();
        assert_eq!(c.foreign_platform(), None);
        let c = c.into_image_config();
        assert_eq!(c.env, ["A=1"]);
        assert_eq!(c.user, None);
        assert_eq!(c.working_dir.as_deref(), Some("/app"));
        assert!(c.entrypoint.is_empty());
    }
}

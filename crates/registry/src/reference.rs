//! Image references: `[host[:port]/]repository[:tag][@digest]`.
//!
//! Docker's rule decides whether the first path component is a registry host: it is one when it
//! contains a `.` or a `:`, or is `localhost`. Everything else is a name relative to a provider.
//! Only sha256 digests are accepted (the blob cache is keyed by them).

use crate::RegistryError;
use std::{fmt, net::IpAddr};

/// `repository[:tag][@digest]` without a host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ImageName {
    pub(crate) repository: String,
    pub(crate) tag: Option<String>,
    pub(crate) digest: Option<String>,
}

impl ImageName {
    /// Parses a name relative to a registry or provider; a missing tag and digest mean `latest`.
    pub(crate) fn parse(name: &str) -> Result<ImageName, RegistryError> {
        let invalid = |reason: &str| RegistryError::InvalidReference {
            reference: name.to_string(),
            reason: reason.to_string(),
        };
        let (rest, digest) = match name.split_once('@') {
            Some((rest, digest)) => (rest, Some(digest)),
            None => (name, None),
        };
        let (repository, tag) = match rest.rfind(':') {
            Some(colon) if !rest[colon..].contains('/') => {
                (&rest[..colon], Some(&rest[colon + 1..]))
            }
            _ => (rest, None),
        };
        validate_repository(repository).map_err(|r| invalid(&r))?;
        if let Some(tag) = tag {
            validate_tag(tag).map_err(|r| invalid(&r))?;
        }
        if let Some(digest) = digest {
            validate_digest(digest).map_err(|r| invalid(&r))?;
        }
        let tag = match (tag, digest) {
            (None, None) => Some("latest".to_string()),
            (tag, _) => tag.map(str::to_string),
        };
        Ok(ImageName {
            repository: repository.to_string(),
            tag,
            digest: digest.map(str::to_string),
        })
    }

    /// The same image under `prefix/` (a provider's namespace).
    pub(crate) fn under(&self, prefix: Option<&str>) -> ImageName {
        match prefix {
            Some(prefix) if !prefix.is_empty() => ImageName {
                repository: format!("{prefix}/{}", self.repository),
                ..self.clone()
            },
            _ => self.clone(),
        }
    }

    /// Docker Hub's implicit `library/` namespace removed, so `library/python` and `python`
    /// name the same image in the local store.
    pub(crate) fn without_library(&self) -> ImageName {
        match self.repository.strip_prefix("library/") {
            Some(rest) if !rest.contains('/') => ImageName {
                repository: rest.to_string(),
                ..self.clone()
            },
            _ => self.clone(),
        }
    }
}

impl fmt::Display for ImageName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

/// Splits `host/rest` when the first component is a registry host (Docker's rule).
pub(crate) fn split_host(reference: &str) -> Option<(&str, &str)> {
    let (first, rest) = reference.split_once('/')?;
    let is_host = first.contains('.') || first.contains(':') || first == "localhost";
    is_host.then_some((first, rest))
}

/// Whether `host[:port]` is this machine: such registries are spoken to over plain HTTP.
pub(crate) fn is_loopback(host: &str) -> bool {
    let name = host_without_port(host);
    if name.eq_ignore_ascii_case("localhost") {
        return true;
    }
    name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// `host` of `host[:port]`, with IPv6 brackets removed.
pub(crate) fn host_without_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.chars().all(|c| c.is_ascii_digit()) => name,
        _ => host,
    }
}

/// A name for the local store: `docker.io/library/python:3` and `python` become
/// `python:3` and `python:latest`; other hosts are kept.
pub(crate) fn local_name(name: &str) -> Result<ImageName, RegistryError> {
    match split_host(name) {
        Some(("docker.io" | "index.docker.io" | "registry-1.docker.io", rest)) => {
            Ok(ImageName::parse(rest)?.without_library())
        }
        Some((host, rest)) => {
            let parsed = ImageName::parse(rest)?;
            Ok(ImageName {
                repository: format!("{host}/{}", parsed.repository),
                ..parsed
            })
        }
        None => Ok(ImageName::parse(name)?.without_library()),
    }
}

fn validate_repository(repository: &str) -> Result<(), String> {
    if repository.is_empty() {
        return Err("the repository name is empty".into());
    }
    if repository.len() > 255 {
        return Err("the repository name is longer than 255 characters".into());
    }
    for component in repository.split('/') {
        let ok = !component.is_empty()
            && component
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c))
            && component.starts_with(|c: char| c.is_ascii_alphanumeric())
            && component.ends_with(|c: char| c.is_ascii_alphanumeric());
        if !ok {
            return Err(format!(
                "repository component {component:?} must be lower-case letters, digits and inner . _ -"
            ));
        }
    }
    Ok(())
}

fn validate_tag(tag: &str) -> Result<(), String> {
    let ok = !tag.is_empty()
        && tag.len() <= 128
        && tag.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_')
        && tag
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
    if ok {
        Ok(())
    } else {
        Err(format!("tag {tag:?} must be 1-128 letters, digits, _ . -"))
    }
}

pub(crate) fn validate_digest(digest: &str) -> Result<(), String> {
    match digest.split_once(':') {
        Some(("sha256", hex))
            if hex.len() == 64
                && hex
                    .chars()
                    .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c)) =>
        {
            Ok(())
        }
        _ => Err(format!(
            "digest {digest:?} is not sha256:<64 lower-case hex digits>"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn parses_names() {
        let n = ImageName::parse("python:3.10-slim").unwrap();
        assert_eq!(
            (n.repository.as_str(), n.tag.as_deref()),
            ("python", Some("3.10-slim"))
        );
        let n = ImageName::parse("team/app").unwrap();
        assert_eq!(n.to_string(), "team/app:latest");
        let n = ImageName::parse(&format!("team/app@{D}")).unwrap();
        assert_eq!((n.tag, n.digest.as_deref()), (None, Some(D)));
        let n = ImageName::parse(&format!("app:1@{D}")).unwrap();
        assert_eq!(n.to_string(), format!("app:1@{D}"));
        assert!(ImageName::parse("Team/app").is_err());
        assert!(ImageName::parse("app:").is_err());
        assert!(ImageName::parse("app@sha512:abc").is_err());
        assert!(ImageName::parse("a//b").is_err());
        assert_eq!(
            ImageName::parse("a/b")
                .unwrap()
                .under(Some("p/q"))
                .repository,
            "p/q/a/b"
        );
    }

    #[test]
    fn splits_hosts_like_docker() {
        assert_eq!(
            split_host("127.0.0.1:5000/x/y:1"),
            Some(("127.0.0.1:5000", "x/y:1"))
        );
        assert_eq!(split_host("localhost/x"), Some(("localhost", "x")));
        assert_eq!(split_host("ghcr.io/a/b"), Some(("ghcr.io", "a/b")));
        assert_eq!(split_host("myteam/app:2"), None);
        assert_eq!(split_host("python:3.10-slim"), None);
        assert_eq!(split_host("busybox"), None);
    }

    #[test]
    fn loopback_hosts() {
        assert!(is_loopback("127.0.0.1:5000"));
        assert!(is_loopback("localhost"));
        assert!(is_loopback("[::1]:5000"));
        assert!(!is_loopback("10.1.2.3:5000"));
        assert!(!is_loopback("iad.ocir.io"));
        assert_eq!(host_without_port("registry:5000"), "registry");
    }

    #[test]
    fn local_names_drop_docker_hub() {
        assert_eq!(
            local_name("docker.io/library/python:3")
                .unwrap()
                .to_string(),
            "python:3"
        );
        assert_eq!(
            local_name("library/busybox").unwrap().to_string(),
            "busybox:latest"
        );
        assert_eq!(
            local_name("ghcr.io/a/b:1").unwrap().to_string(),
            "ghcr.io/a/b:1"
        );
        assert_eq!(
            local_name("localhost:5000/a").unwrap().to_string(),
            "localhost:5000/a:latest"
        );
    }
}

//! Where a request goes: a pure function of its `Host` and headers.

use http::HeaderMap;

/// A sandbox port to forward to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub sandbox_id: String,
    pub port: u16,
}

/// Why a request could not be routed (answered 400).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RouteError {
    MissingHeaders,
    InvalidHost(String),
    InvalidSandboxId(String),
    InvalidPort(String),
}

impl std::fmt::Display for RouteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RouteError::MissingHeaders => {
                f.write_str("missing E2b-Sandbox-Id or E2b-Sandbox-Port header")
            }
            RouteError::InvalidHost(host) => write!(
                f,
                "invalid host '{host}': expected <port>-<sandboxID>.<domain>"
            ),
            RouteError::InvalidSandboxId(id) => write!(f, "invalid sandbox id '{id}'"),
            RouteError::InvalidPort(port) => write!(f, "invalid sandbox port '{port}'"),
        }
    }
}

/// E2B's rule: the `E2b-Sandbox-Id`/`E2b-Sandbox-Port` headers are honoured when the host is
/// `localhost`, an IP literal or starts with `sandbox.`; otherwise the host's first label is
/// `<port>-<sandboxID>`.
pub fn route(host: &str, headers: &HeaderMap) -> Result<Target, RouteError> {
    let hostname = strip_port(host);
    let header_host = hostname == "localhost"
        || hostname.parse::<std::net::IpAddr>().is_ok()
        || hostname.starts_with("sandbox.");
    let (id, port) = if header_host {
        let header = |name| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::trim)
        };
        match (header("e2b-sandbox-id"), header("e2b-sandbox-port")) {
            (Some(id), Some(port)) => (id.to_owned(), port.to_owned()),
            _ => return Err(RouteError::MissingHeaders),
        }
    } else {
        let label = hostname.split('.').next().unwrap_or("");
        let (port, id) = label
            .split_once('-')
            .ok_or_else(|| RouteError::InvalidHost(host.to_owned()))?;
        (id.to_owned(), port.to_owned())
    };
    if id.is_empty()
        || !id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    {
        return Err(RouteError::InvalidSandboxId(id));
    }
    let port = port
        .parse::<u16>()
        .ok()
        .filter(|p| *p != 0)
        .ok_or(RouteError::InvalidPort(port))?;
    Ok(Target {
        sandbox_id: id,
        port,
    })
}

fn strip_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) && !name.contains(':') => {
            name
        }
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::{RouteError, Target, route};
    use http::{HeaderMap, HeaderValue};

    fn headers(id: &str, port: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert("e2b-sandbox-id", HeaderValue::from_str(id).unwrap());
        headers.insert("e2b-sandbox-port", HeaderValue::from_str(port).unwrap());
        headers
    }

    #[test]
    fn routing_table() {
        let target = |id: &str, port| {
            Ok(Target {
                sandbox_id: id.into(),
                port,
            })
        };
        let with = headers("abc123", "49983");
        let none = HeaderMap::new();
        let table: &[(&str, &HeaderMap, Result<Target, RouteError>)] = &[
            ("127.0.0.1:3002", &with, target("abc123", 49983)),
            ("localhost:3002", &with, target("abc123", 49983)),
            ("[::1]:3002", &with, target("abc123", 49983)),
            ("sandbox.kiln.test", &with, target("abc123", 49983)),
            ("8080-abc123.kiln.test", &none, target("abc123", 8080)),
            ("8080-abc123.kiln.test:3002", &with, target("abc123", 8080)),
            ("127.0.0.1:3002", &none, Err(RouteError::MissingHeaders)),
            (
                "kiln.test",
                &none,
                Err(RouteError::InvalidHost("kiln.test".into())),
            ),
            (
                "x-ABC.kiln.test",
                &none,
                Err(RouteError::InvalidSandboxId("ABC".into())),
            ),
            (
                "99999-abc.kiln.test",
                &none,
                Err(RouteError::InvalidPort("99999".into())),
            ),
            (
                "0-abc.kiln.test",
                &none,
                Err(RouteError::InvalidPort("0".into())),
            ),
        ];
        for (host, headers, expected) in table {
            assert_eq!(&route(host, headers), expected, "{host}");
        }
        assert_eq!(
            route("localhost", &headers("a/b", "1")),
            Err(RouteError::InvalidSandboxId("a/b".into()))
        );
    }
}

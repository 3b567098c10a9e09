//! Oracle Cloud (OCI) API request signing and the credentials behind it.
//!
//! Every OCI API call (Object Storage's native API, Artifacts, OCIR tokens) is signed with an
//! RSA key under OCI "Signature Version 1", a profile of draft-cavage-http-signatures-08.
//!
//! - [`Signer`]: a key id plus a [`PrivateKey`]; [`Signer::sign`] adds `date`, `host`, the body
//!   headers when the body is signed ([`Payload`]) and the `Authorization` header.
//! - [`Credentials`]: where a signer comes from, held as `Arc<dyn Credentials>`:
//!   - [`ApiKeyCredentials`]: a user's API key from `~/.oci/config` ([`OciConfig`]), key id
//!     `<tenancy>/<user>/<fingerprint>`, or a CLI session token (`security_token_file`);
//!   - [`InstancePrincipal`]: the instance's certificate from the metadata service (IMDS v2),
//!     exchanged at the identity service for a session token, key id `ST$<token>`, signed with a
//!     key pair generated locally and replaced on every refresh.
//!
//! ```no_run
//! # async fn demo() -> Result<(), oracle_auth::AuthError> {
//! use oracle_auth::{ApiKeyCredentials, Credentials, Payload};
//! let credentials = ApiKeyCredentials::from_env(&|key| std::env::var(key).ok())?;
//! let signer = credentials.signer().await?;
//! let url = url::Url::parse("https://objectstorage.us-ashburn-1.oraclecloud.com/n/").unwrap();
//! let mut headers = http::HeaderMap::new();
//! signer.sign(&http::Method::GET, &url, &mut headers, Payload::Unsigned)?;
//! # Ok(()) }
//! ```
//!
//! Invariants:
//! - Signatures are computed over the request exactly as sent; the tests reproduce Oracle's
//!   published vectors byte for byte.
//! - Secret material (private keys, pass phrases, session tokens) never appears in `Debug`,
//!   `Display`, errors or logs.
//! - A private key file readable by group or others is refused, as `ssh` refuses such keys.
//! - A session token is replaced before it expires (5 minutes ahead by default), and at once
//!   after [`Credentials::invalidate`] (call it when OCI answers 401).

mod config;
mod error;
mod instance;
mod key;
mod secret;
mod signer;

pub use config::{ApiKeyCredentials, OciConfig, Profile};
pub use error::AuthError;
pub use instance::{InstancePrincipal, InstancePrincipalOptions};
pub use key::PrivateKey;
pub use secret::read_secret_file;
pub use signer::{Payload, Signer, signing_string};

/// A source of [`Signer`]s.
///
/// # Contract
/// - [`signer`](Credentials::signer) returns a signer valid now; sources with expiring tokens
///   refresh first, and concurrent callers share one refresh.
/// - Implementations hold no secret in their `Debug` output.
#[async_trait::async_trait]
pub trait Credentials: Send + Sync + std::fmt::Debug + 'static {
    /// A signer for the next request.
    async fn signer(&self) -> Result<Signer, AuthError>;

    /// OCI refused a signature (HTTP 401): drop any cached session so the next
    /// [`signer`](Credentials::signer) call fetches a new one. A no-op for static keys.
    async fn invalidate(&self) {}

    /// Where the credentials come from (a config file and profile, "instance principal"), for
    /// messages. Holds no secret.
    fn describe(&self) -> String;
}

//! [`PrivateKey`]: an RSA key that signs OCI requests, read from PEM or generated.
//!
//! Invariant: the key material never leaves this module except as a signature or the public key;
//! `Debug` shows only the size and the (public) fingerprint.

use crate::AuthError;
use rsa::{
    RsaPrivateKey, RsaPublicKey,
    pkcs1::DecodeRsaPrivateKey,
    pkcs1v15::SigningKey,
    pkcs8::{DecodePrivateKey, EncodePublicKey},
    rand_core::OsRng,
    signature::{RandomizedSigner, SignatureEncoding},
    traits::PublicKeyParts,
};
use sha2::{Digest, Sha256};
use std::fmt;

/// An RSA private key for RSASSA-PKCS1-v1_5 with SHA-256, the only algorithm OCI accepts.
#[derive(Clone)]
pub struct PrivateKey {
    signing: SigningKey<Sha256>,
    public: RsaPublicKey,
}

impl PrivateKey {
    /// Reads the first PEM block of `pem`: `RSA PRIVATE KEY` (PKCS#1), `PRIVATE KEY` (PKCS#8) or
    /// `ENCRYPTED PRIVATE KEY` (PKCS#8, needs `passphrase`). Text around the block is ignored:
    /// keys downloaded from the OCI console end with an extra `OCI_API_KEY` line.
    pub fn from_pem(pem: &str, passphrase: Option<&str>) -> Result<Self, AuthError> {
        let block = pem::parse(pem).map_err(|e| AuthError::Key(format!("not a PEM key: {e}")))?;
        if block
            .headers()
            .get("Proc-Type")
            .is_some_and(|v| v.contains("ENCRYPTED"))
        {
            return Err(AuthError::Key(
                "legacy OpenSSL-encrypted PEM keys are not supported; convert with `openssl pkcs8 -topk8`".into(),
            ));
        }
        let der = block.contents();
        let key = match block.tag() {
            "RSA PRIVATE KEY" => RsaPrivateKey::from_pkcs1_der(der)
                .map_err(|e| AuthError::Key(format!("invalid PKCS#1 RSA key: {e}")))?,
            "PRIVATE KEY" => RsaPrivateKey::from_pkcs8_der(der)
                .map_err(|e| AuthError::Key(format!("invalid PKCS#8 RSA key: {e}")))?,
            "ENCRYPTED PRIVATE KEY" => {
                let passphrase = passphrase.ok_or_else(|| {
                    AuthError::Key("the key is encrypted but no pass_phrase is configured".into())
                })?;
                RsaPrivateKey::from_pkcs8_encrypted_der(der, passphrase)
                    .map_err(|e| AuthError::Key(format!("cannot decrypt PKCS#8 key: {e}")))?
            }
            other => {
                return Err(AuthError::Key(format!(
                    "expected an RSA private key PEM block, found {other:?}"
                )));
            }
        };
        Ok(Self::from_rsa(key))
    }

    /// A fresh 2048-bit key (e = 65537), as the OCI SDKs generate for session tokens.
    pub fn generate() -> Result<Self, AuthError> {
        let key = RsaPrivateKey::new(&mut OsRng, 2048)
            .map_err(|e| AuthError::Key(format!("cannot generate an RSA key: {e}")))?;
        Ok(Self::from_rsa(key))
    }

    fn from_rsa(key: RsaPrivateKey) -> Self {
        let public = key.to_public_key();
        Self {
            signing: SigningKey::new(key),
            public,
        }
    }

    /// RSASSA-PKCS1-v1_5 over SHA-256 of `data`. Deterministic; the random source only blinds
    /// the private-key operation against timing attacks.
    pub fn sign(&self, data: &[u8]) -> Vec<u8> {
        self.signing.sign_with_rng(&mut OsRng, data).to_vec()
    }

    /// The DER SubjectPublicKeyInfo of the public half.
    pub fn public_key_der(&self) -> Result<Vec<u8>, AuthError> {
        self.public
            .to_public_key_der()
            .map(|doc| doc.as_bytes().to_vec())
            .map_err(|e| AuthError::Key(format!("cannot encode the public key: {e}")))
    }

    /// The OCI key fingerprint: MD5 of the DER public key as 16 lowercase hex pairs joined by
    /// `:` (what `openssl rsa -pubout -outform DER | openssl md5 -c` prints).
    pub fn fingerprint(&self) -> Result<String, AuthError> {
        use md5::Digest as _;
        Ok(colon_hex(&md5::Md5::digest(self.public_key_der()?)))
    }

    /// Key size in bits.
    pub fn bits(&self) -> usize {
        self.public.size() * 8
    }
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PrivateKey")
            .field("bits", &self.bits())
            .finish_non_exhaustive()
    }
}

/// `aa:bb:…` lowercase.
pub(crate) fn colon_hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Base64 of SHA-256, the form of `x-content-sha256`.
pub(crate) fn sha256_base64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(Sha256::digest(bytes))
}

//! Verified artifacts: an Ed25519 signature over the exact bytes of `manifest.json`.
//!
//! The manifest carries the sha256 of the model file (and of the validation dataset), so a
//! signature over the manifest covers them too: [`Model::load`](super::Model::load) checks the
//! signature over the bytes it then parses, and the checksum over the bytes it then hands to
//! ONNX Runtime, so what was verified is what runs.
//!
//! Policy (`model.trusted_public_keys`, `model.require_signature`):
//! - no trusted keys: signatures are not checked;
//! - trusted keys: a `manifest.json.sig` that is present must verify against one of them
//!   (`verify_strict`); an absent one is accepted with a warning unless signatures are required;
//! - `require_signature`: an absent signature is refused too.
//!
//! Key and signature files (docs/model-validation.md):
//! - public key: 64 hex characters (the raw 32-byte key), its base64, or a PEM
//!   `PUBLIC KEY` (SubjectPublicKeyInfo, what `openssl pkey -pubout` writes);
//! - secret key (for [`sign_manifest`]): 64 hex characters (the 32-byte seed) or a PEM
//!   `PRIVATE KEY` (PKCS#8 v1, what `openssl genpkey -algorithm ed25519` writes);
//! - signature: the raw 64 bytes (what `openssl pkeyutl -sign -rawin` writes), 128 hex
//!   characters, or their base64.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};

use super::manifest::MANIFEST_FILE;

/// Counter of models refused at load, labelled by `reason` (see [`super::ModelError::reason`]):
/// `checksum`, `signature`, `mismatch`, `manifest`, `model_file`, `load`, `runtime`, `warmup`.
pub const MODEL_LOAD_FAILURES: &str = "streamscore_model_load_failures_total";

/// The detached signature next to the manifest.
pub const SIGNATURE_FILE: &str = "manifest.json.sig";

/// DER prefix of an Ed25519 SubjectPublicKeyInfo (RFC 8410); the 32 key bytes follow.
const SPKI_ED25519_PREFIX: [u8; 12] = [0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00];
/// DER prefix of an Ed25519 PKCS#8 v1 private key (RFC 8410); the 32 seed bytes follow.
const PKCS8_ED25519_PREFIX: [u8; 16] =
    [0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20];

/// Why a manifest's signature (or a key) was not accepted, with what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("cannot read trusted public key {path} (model.trusted_public_keys): {source}")]
    KeyFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not an Ed25519 key: {detail}; see docs/model-validation.md for the accepted formats")]
    KeyFormat { path: PathBuf, detail: String },
    #[error(
        "model manifest {manifest} is not signed ({signature} is missing) and model.require_signature is true; \
         sign it with a trusted key (`streamscore sign --model DIR --key KEY`, see docs/model-validation.md)"
    )]
    Unsigned { manifest: PathBuf, signature: PathBuf },
    #[error(
        "model.require_signature is true but model.trusted_public_keys is empty: no signature on {manifest} can be \
         verified; list the public key(s) of your signing key(s)"
    )]
    NoTrustedKeys { manifest: PathBuf },
    #[error("cannot read signature {path}: {source}")]
    SignatureFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("signature {path} is malformed: {detail}; expected a detached Ed25519 signature (64 raw bytes, 128 hex characters or base64)")]
    SignatureFormat { path: PathBuf, detail: String },
    #[error(
        "signature {signature} does not verify {manifest} against any trusted public key ({}); the manifest was \
         changed after signing or signed with an untrusted key: refusing the model",
        keys.iter().map(|k| k.display().to_string()).collect::<Vec<_>>().join(", ")
    )]
    BadSignature { manifest: PathBuf, signature: PathBuf, keys: Vec<PathBuf> },
}

/// One trusted public key and the file it came from (named in errors and logs).
#[derive(Debug, Clone)]
pub struct TrustedKey {
    pub path: PathBuf,
    pub key: VerifyingKey,
}

/// What [`verify_manifest_signature`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignatureStatus {
    /// No trusted keys are configured: signatures are not checked.
    NotChecked,
    /// Keys are configured, signatures are optional, and the manifest has none.
    Unsigned,
    /// The signature verifies against the key read from this file.
    Verified { key: PathBuf },
}

impl std::fmt::Display for SignatureStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NotChecked => f.write_str("not checked (no trusted keys configured)"),
            Self::Unsigned => f.write_str("unsigned (accepted: model.require_signature is false)"),
            Self::Verified { key } => write!(f, "verified with {}", key.display()),
        }
    }
}

/// Reads every key file; the first unreadable or malformed one is the error.
pub fn load_trusted_keys(paths: &[PathBuf]) -> Result<Vec<TrustedKey>, VerifyError> {
    paths
        .iter()
        .map(|path| {
            let bytes = std::fs::read(path).map_err(|source| VerifyError::KeyFile { path: path.clone(), source })?;
            let key =
                parse_public_key(&bytes).map_err(|detail| VerifyError::KeyFormat { path: path.clone(), detail })?;
            Ok(TrustedKey { path: path.clone(), key })
        })
        .collect()
}

/// Checks `dir/manifest.json.sig` against `manifest_bytes` (the exact bytes that will be parsed).
pub fn verify_manifest_signature(
    dir: &Path,
    manifest_bytes: &[u8],
    keys: &[TrustedKey],
    require_signature: bool,
) -> Result<SignatureStatus, VerifyError> {
    let manifest = dir.join(MANIFEST_FILE);
    if keys.is_empty() {
        return if require_signature {
            Err(VerifyError::NoTrustedKeys { manifest })
        } else {
            Ok(SignatureStatus::NotChecked)
        };
    }
    let sig_path = dir.join(SIGNATURE_FILE);
    let raw = match std::fs::read(&sig_path) {
        Ok(raw) => raw,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return if require_signature {
                Err(VerifyError::Unsigned { manifest, signature: sig_path })
            } else {
                tracing::warn!(
                    manifest = %manifest.display(),
                    "model manifest is not signed; loading it because model.require_signature is false"
                );
                Ok(SignatureStatus::Unsigned)
            };
        }
        Err(source) => return Err(VerifyError::SignatureFile { path: sig_path, source }),
    };
    let signature =
        parse_signature(&raw).map_err(|detail| VerifyError::SignatureFormat { path: sig_path.clone(), detail })?;
    match keys.iter().find(|k| k.key.verify_strict(manifest_bytes, &signature).is_ok()) {
        Some(k) => Ok(SignatureStatus::Verified { key: k.path.clone() }),
        None => Err(VerifyError::BadSignature {
            manifest,
            signature: sig_path,
            keys: keys.iter().map(|k| k.path.clone()).collect(),
        }),
    }
}

/// Signs `dir/manifest.json` with `key` and writes `dir/manifest.json.sig` (128 hex characters
/// and a newline). Returns the signature file's path.
pub fn sign_manifest(dir: &Path, key: &SigningKey) -> std::io::Result<PathBuf> {
    let bytes = std::fs::read(dir.join(MANIFEST_FILE))?;
    let signature = key.sign(&bytes);
    let path = dir.join(SIGNATURE_FILE);
    std::fs::write(&path, format!("{}\n", hex(&signature.to_bytes())))?;
    Ok(path)
}

/// A new random signing key (the operating system's generator, through `rand`).
pub fn generate_signing_key() -> SigningKey {
    use rand::TryRngCore as _;
    let mut seed = [0u8; 32];
    // The OS generator failing is not something a key generator can work around.
    rand::rngs::OsRng.try_fill_bytes(&mut seed).expect("the operating system's random generator is unavailable");
    SigningKey::from_bytes(&seed)
}

/// Lowercase hex of a public key: the format `streamscore keygen` writes.
pub fn public_key_hex(key: &VerifyingKey) -> String {
    hex(key.as_bytes())
}

/// Lowercase hex of a signing key's 32-byte seed: the format `streamscore keygen` writes.
pub fn secret_key_hex(key: &SigningKey) -> String {
    hex(&key.to_bytes())
}

/// Parses a public key: 64 hex characters, base64 of 32 bytes, or PEM `PUBLIC KEY` (SPKI).
pub fn parse_public_key(bytes: &[u8]) -> Result<VerifyingKey, String> {
    let text = std::str::from_utf8(bytes).map_err(|_| "the file is not text".to_string())?.trim();
    let raw: [u8; 32] = if text.starts_with("-----BEGIN") {
        let der = pem_body(text, "PUBLIC KEY")?;
        der_suffix(&der, &SPKI_ED25519_PREFIX).ok_or_else(|| {
            "the PEM public key is not an Ed25519 SubjectPublicKeyInfo (generate one with `openssl genpkey -algorithm ed25519`)"
                .to_string()
        })?
    } else {
        key_bytes(text)?
    };
    VerifyingKey::from_bytes(&raw).map_err(|e| format!("not a valid Ed25519 public key: {e}"))
}

/// Parses a secret key: 64 hex characters (the seed), base64 of it, or PEM `PRIVATE KEY` (PKCS#8 v1).
pub fn parse_secret_key(bytes: &[u8]) -> Result<SigningKey, String> {
    let text = std::str::from_utf8(bytes).map_err(|_| "the file is not text".to_string())?.trim();
    let seed: [u8; 32] = if text.starts_with("-----BEGIN") {
        let der = pem_body(text, "PRIVATE KEY")?;
        der_suffix(&der, &PKCS8_ED25519_PREFIX).ok_or_else(|| {
            "the PEM private key is not an Ed25519 PKCS#8 v1 key (what `openssl genpkey -algorithm ed25519` writes)"
                .to_string()
        })?
    } else {
        key_bytes(text)?
    };
    Ok(SigningKey::from_bytes(&seed))
}

/// Parses a detached signature: 64 raw bytes, 128 hex characters, or base64 of 64 bytes.
pub fn parse_signature(bytes: &[u8]) -> Result<Signature, String> {
    if bytes.len() == 64 && !std::str::from_utf8(bytes).is_ok_and(|t| t.bytes().all(|b| b.is_ascii_hexdigit())) {
        return Ok(Signature::from_bytes(bytes.try_into().map_err(|_| "not 64 bytes".to_string())?));
    }
    let text = std::str::from_utf8(bytes).map_err(|_| format!("{} bytes of binary data, not 64", bytes.len()))?.trim();
    let raw = if text.len() == 128 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
        unhex(text)?
    } else {
        base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(|_| format!("{} characters that are neither 128 hex digits nor base64", text.len()))?
    };
    let raw: [u8; 64] = raw.try_into().map_err(|v: Vec<u8>| format!("{} bytes, expected 64", v.len()))?;
    Ok(Signature::from_bytes(&raw))
}

/// 32 key bytes from hex or base64 text.
fn key_bytes(text: &str) -> Result<[u8; 32], String> {
    let raw = if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
        unhex(text)?
    } else {
        base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(|_| "expected 64 hex characters, base64 of 32 bytes, or a PEM block".to_string())?
    };
    raw.try_into().map_err(|v: Vec<u8>| format!("the key is {} bytes, expected 32", v.len()))
}

/// The DER inside one PEM block with the given label.
fn pem_body(text: &str, label: &str) -> Result<Vec<u8>, String> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let start = text.find(&begin).ok_or_else(|| format!("expected a PEM block `{begin}`"))? + begin.len();
    let stop = text[start..].find(&end).ok_or_else(|| format!("the PEM block has no `{end}` line"))? + start;
    let body: String = text[start..stop].chars().filter(|c| !c.is_whitespace()).collect();
    base64::engine::general_purpose::STANDARD.decode(body).map_err(|e| format!("the PEM body is not base64: {e}"))
}

/// The 32 bytes after `prefix` when `der` is exactly `prefix` + 32 bytes.
fn der_suffix(der: &[u8], prefix: &[u8]) -> Option<[u8; 32]> {
    der.strip_prefix(prefix)?.try_into().ok()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Result<Vec<u8>, String> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).map_err(|_| format!("`{}` is not hex", &text[i..i + 2])))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Made with OpenSSL 3.0 (`openssl genpkey -algorithm ed25519`, `openssl pkey -pubout`,
    /// `openssl pkeyutl -sign -rawin`): the formats a CI job without streamscore produces.
    const OPENSSL_PRIVATE_PEM: &str = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIF/E3JY6UPkxWr4NFJed5wPDkpfIXA2K0XnWOusfNqfF\n-----END PRIVATE KEY-----\n";
    const OPENSSL_PUBLIC_PEM: &str = "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAa4L/PgRamq8VnncgD5Q+dg0RXHaOVVFpfu8ujdd5SRY=\n-----END PUBLIC KEY-----\n";
    const OPENSSL_MESSAGE: &[u8] = b"streamscore openssl interop\n";
    const OPENSSL_SIGNATURE_HEX: &str = "16edfd98c4c5a25e29bc4ea00b60fbf78919f4b3f972d000f7af05c07a34611b73efdd6f7c5bde4f0dbf7e7a1ddec2b49a08e59d78d8909e3cb18b7407664204";

    #[test]
    fn openssl_keys_and_signatures_are_accepted_in_every_format() {
        let public = parse_public_key(OPENSSL_PUBLIC_PEM.as_bytes()).expect("SPKI PEM");
        let secret = parse_secret_key(OPENSSL_PRIVATE_PEM.as_bytes()).expect("PKCS#8 PEM");
        assert_eq!(secret.verifying_key(), public, "the PEM pair belongs together");
        let sig = parse_signature(OPENSSL_SIGNATURE_HEX.as_bytes()).expect("hex signature");
        public.verify_strict(OPENSSL_MESSAGE, &sig).expect("OpenSSL's signature verifies");
        // The same signature as raw bytes (what openssl writes) and as base64.
        let raw = sig.to_bytes();
        assert_eq!(parse_signature(&raw).unwrap(), sig);
        let b64 = base64::engine::general_purpose::STANDARD.encode(raw);
        assert_eq!(parse_signature(format!("{b64}\n").as_bytes()).unwrap(), sig);
        // The public key as hex and base64 text.
        assert_eq!(parse_public_key(format!("{}\n", public_key_hex(&public)).as_bytes()).unwrap(), public);
        let b64 = base64::engine::general_purpose::STANDARD.encode(public.as_bytes());
        assert_eq!(parse_public_key(b64.as_bytes()).unwrap(), public);
        // Our signature over the same message equals OpenSSL's (Ed25519 is deterministic).
        assert_eq!(secret.sign(OPENSSL_MESSAGE), sig);
        assert_eq!(parse_secret_key(secret_key_hex(&secret).as_bytes()).unwrap().verifying_key(), public);
    }

    #[test]
    fn malformed_keys_and_signatures_say_what_is_wrong() {
        assert!(parse_public_key(b"not a key!").unwrap_err().contains("expected 64 hex"));
        assert!(parse_public_key(b"abcd").unwrap_err().contains("3 bytes, expected 32"));
        assert!(parse_public_key(OPENSSL_PRIVATE_PEM.as_bytes()).unwrap_err().contains("PUBLIC KEY"));
        assert!(parse_secret_key(OPENSSL_PUBLIC_PEM.as_bytes()).unwrap_err().contains("PRIVATE KEY"));
        assert!(
            parse_signature(b"0011").unwrap_err().contains("expected 64"),
            "{}",
            parse_signature(b"0011").unwrap_err()
        );
        assert!(parse_signature(&[0xff; 10]).unwrap_err().contains("binary"));
    }

    fn signed_dir(key: &SigningKey) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(MANIFEST_FILE), b"{\"a\": 1}\n").unwrap();
        sign_manifest(dir.path(), key).unwrap();
        dir
    }

    fn trusted(dir: &Path, name: &str, key: &VerifyingKey) -> TrustedKey {
        let path = dir.join(name);
        std::fs::write(&path, public_key_hex(key)).unwrap();
        load_trusted_keys(std::slice::from_ref(&path)).unwrap().remove(0)
    }

    #[test]
    fn policy_follows_keys_and_require_signature() {
        let key = generate_signing_key();
        let other = generate_signing_key();
        let dir = signed_dir(&key);
        let bytes = std::fs::read(dir.path().join(MANIFEST_FILE)).unwrap();
        let good = trusted(dir.path(), "good.pub", &key.verifying_key());
        let wrong = trusted(dir.path(), "wrong.pub", &other.verifying_key());

        // No keys: not checked, unless required.
        assert_eq!(verify_manifest_signature(dir.path(), &bytes, &[], false).unwrap(), SignatureStatus::NotChecked);
        assert!(matches!(
            verify_manifest_signature(dir.path(), &bytes, &[], true),
            Err(VerifyError::NoTrustedKeys { .. })
        ));
        // One of several keys verifies.
        let status = verify_manifest_signature(dir.path(), &bytes, &[wrong.clone(), good.clone()], true).unwrap();
        assert_eq!(status, SignatureStatus::Verified { key: good.path.clone() });
        // Only an untrusted key: refused, naming the key file.
        let err = verify_manifest_signature(dir.path(), &bytes, std::slice::from_ref(&wrong), false).unwrap_err();
        assert!(matches!(err, VerifyError::BadSignature { .. }));
        assert!(err.to_string().contains("wrong.pub"), "{err}");
        // Other bytes than the signed ones: refused.
        let err = verify_manifest_signature(dir.path(), b"{\"a\": 2}\n", std::slice::from_ref(&good), false);
        assert!(matches!(err, Err(VerifyError::BadSignature { .. })));
        // Unsigned: accepted unless required.
        std::fs::remove_file(dir.path().join(SIGNATURE_FILE)).unwrap();
        let status = verify_manifest_signature(dir.path(), &bytes, std::slice::from_ref(&good), false).unwrap();
        assert_eq!(status, SignatureStatus::Unsigned);
        let err = verify_manifest_signature(dir.path(), &bytes, std::slice::from_ref(&good), true).unwrap_err();
        assert!(matches!(err, VerifyError::Unsigned { .. }));
        assert!(err.to_string().contains(SIGNATURE_FILE) && err.to_string().contains("streamscore sign"), "{err}");
        // A garbage signature file is a format error, not a crash.
        std::fs::write(dir.path().join(SIGNATURE_FILE), "not a signature").unwrap();
        let err = verify_manifest_signature(dir.path(), &bytes, std::slice::from_ref(&good), false).unwrap_err();
        assert!(matches!(err, VerifyError::SignatureFormat { .. }), "{err}");
    }

    #[test]
    fn unreadable_or_malformed_key_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pub");
        let err = load_trusted_keys(std::slice::from_ref(&missing)).unwrap_err();
        assert!(matches!(err, VerifyError::KeyFile { .. }) && err.to_string().contains("missing.pub"), "{err}");
        let bad = dir.path().join("bad.pub");
        std::fs::write(&bad, "hello").unwrap();
        let err = load_trusted_keys(std::slice::from_ref(&bad)).unwrap_err();
        assert!(matches!(err, VerifyError::KeyFormat { .. }) && err.to_string().contains("bad.pub"), "{err}");
    }
}

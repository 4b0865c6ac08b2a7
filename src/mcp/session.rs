//! Handshake-era sessions without server state: an `Mcp-Session-Id` is the negotiated
//! version, the credential it was opened with and its age, HMAC-signed with a key every
//! replica shares, so any replica can verify it. The key comes from
//! `mcp.session_key_env`, else from the token pepper; without either it is made per
//! process (sessions then hold on this replica only, and a warning says so).

use crate::config::Snapshot;
use crate::store::now_ms;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::sync::OnceLock;

/// How long a session id is honoured (the credential is checked on every request
/// anyway; this only bounds how long one handshake's outcome is reused).
const MAX_AGE_MS: u64 = 7 * 24 * 3600 * 1000;
const PREFIX: &str = "s1.";

/// What a valid session id says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub version: String,
    pub credential: String,
    pub issued_ms: u64,
}

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
}

/// The signing key in force for `snap`.
pub fn key(snap: &Snapshot) -> Vec<u8> {
    if let Some(k) = &snap.mcp.session_key {
        return derive(k);
    }
    if let Some(p) = &snap.store.pepper {
        return derive(p);
    }
    static LOCAL: OnceLock<Vec<u8>> = OnceLock::new();
    LOCAL
        .get_or_init(|| {
            if matches!(snap.store.kind, crate::config::StoreKind::Redis { .. }) {
                tracing::warn!(
                    "mcp: no mcp.session_key_env and no token pepper: MCP session ids are signed with a per-process key and hold only on this replica"
                );
            }
            hex::decode(crate::identity::random_hex(32)).expect("hex")
        })
        .clone()
}

/// A key of its own for sessions, derived from the configured secret.
fn derive(secret: &[u8]) -> Vec<u8> {
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(secret).expect("any key length");
    m.update(b"portcullis mcp session ids v1");
    m.finalize().into_bytes().to_vec()
}

fn mac(key: &[u8], payload: &str) -> Vec<u8> {
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("any key length");
    m.update(payload.as_bytes());
    m.finalize().into_bytes().to_vec()
}

/// A new session id for `credential` at `version`.
pub fn issue(key: &[u8], credential: &str, version: &str) -> String {
    let payload = format!("{version}|{credential}|{}", now_ms());
    let sig = mac(key, &payload);
    format!(
        "{PREFIX}{}.{}",
        b64().encode(payload.as_bytes()),
        b64().encode(sig)
    )
}

/// The session an id names, if its signature holds, it is not too old, and it was
/// opened with `credential` (a session id is worthless without its own token).
pub fn verify(key: &[u8], id: &str, credential: &str) -> Option<Session> {
    let rest = id.strip_prefix(PREFIX)?;
    let (p, s) = rest.split_once('.')?;
    let payload = String::from_utf8(b64().decode(p).ok()?).ok()?;
    let sig = b64().decode(s).ok()?;
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("any key length");
    m.update(payload.as_bytes());
    m.verify_slice(&sig).ok()?;
    let mut parts = payload.split('|');
    let version = parts.next()?.to_string();
    let cred = parts.next()?.to_string();
    let issued_ms: u64 = parts.next()?.parse().ok()?;
    if parts.next().is_some()
        || cred != credential
        || now_ms().saturating_sub(issued_ms) > MAX_AGE_MS
        || !super::transport::HANDSHAKE_VERSIONS.contains(&version.as_str())
    {
        return None;
    }
    Some(Session {
        version,
        credential: cred,
        issued_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_verify_only_with_their_key_and_credential() {
        let k = derive(b"a shared secret of thirty-two bytes!");
        let id = issue(&k, "cred1", "2025-06-18");
        assert!(id.bytes().all(|b| (0x21..=0x7e).contains(&b)));
        let s = verify(&k, &id, "cred1").unwrap();
        assert_eq!(s.version, "2025-06-18");
        assert!(verify(&k, &id, "cred2").is_none(), "another credential");
        let other = derive(b"another secret of thirty-two bytes!!");
        assert!(verify(&other, &id, "cred1").is_none(), "another key");
        // A forged payload under the old signature.
        let (head, sig) = id.rsplit_once('.').unwrap();
        let forged = format!(
            "{PREFIX}{}.{sig}",
            b64().encode("2025-06-18|cred2|1".as_bytes())
        );
        assert!(verify(&k, &forged, "cred2").is_none());
        assert!(verify(&k, head, "cred1").is_none());
        assert!(verify(&k, "garbage", "cred1").is_none());
    }
}

//! Handshake tokens: JWTs signed with HS256 (a shared secret) or RS256/ES256 (the app's key
//! pair; the node holds the public key). Checked for signature, `exp` and `nbf`, with no leeway.

use crate::config::TokenKey;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};
use thiserror::Error;

/// Why a token key cannot be used.
#[derive(Debug, Error)]
pub enum TokenKeyError {
    /// The public key file could not be read.
    #[error("cannot read the token public key {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The file holds no RSA or P-256 public key in PEM form.
    #[error("{0}: not an RSA or EC (P-256) public key in PEM form")]
    NotAKey(String),
    /// The secret cannot be used as an HMAC key.
    #[error("the token secret cannot be used: {0}")]
    Secret(String),
}

/// Why a token was refused (never logged with the token itself).
#[derive(Debug, Error, PartialEq, Eq)]
pub(crate) enum TokenError {
    /// Bad signature, wrong algorithm, not a JWT, or a claim of the wrong type.
    #[error("invalid token: {0}")]
    Invalid(String),
    /// `exp` has passed.
    #[error("token expired")]
    Expired,
    /// `nbf` is still ahead.
    #[error("token not yet valid")]
    NotYetValid,
}

/// Checks handshake tokens with one key.
pub(crate) struct TokenVerifier {
    key: DecodingKey,
    validation: Validation,
}

impl std::fmt::Debug for TokenVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenVerifier").field("algorithms", &self.validation.algorithms).finish_non_exhaustive()
    }
}

impl TokenVerifier {
    /// Loads the key: the secret as is, or the public key file (RSA gives RS256, EC ES256).
    pub(crate) fn new(key: &TokenKey) -> Result<Self, TokenKeyError> {
        let (key, algorithm) = match key {
            TokenKey::Secret(secret) => (
                DecodingKey::from_secret(secret.0.as_bytes()).map_err(|e| TokenKeyError::Secret(e.to_string()))?,
                Algorithm::HS256,
            ),
            TokenKey::PublicKeyFile(path) => {
                let shown = path.display().to_string();
                let pem = std::fs::read(path).map_err(|source| TokenKeyError::Read { path: shown.clone(), source })?;
                if let Ok(key) = DecodingKey::from_rsa_pem(&pem) {
                    (key, Algorithm::RS256)
                } else if let Ok(key) = DecodingKey::from_ec_pem(&pem) {
                    (key, Algorithm::ES256)
                } else {
                    return Err(TokenKeyError::NotAKey(shown));
                }
            }
        };
        let mut validation = Validation::new(algorithm);
        validation.leeway = 0;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.validate_aud = false;
        validation.required_spec_claims.clear();
        Ok(Self { key, validation })
    }

    /// The token's claims when it is valid now.
    pub(crate) fn verify(&self, token: &str) -> Result<Map<String, Value>, TokenError> {
        use jsonwebtoken::errors::ErrorKind;
        let data =
            jsonwebtoken::decode::<Map<String, Value>>(token, &self.key, &self.validation).map_err(|e| {
                match e.kind() {
                    ErrorKind::ExpiredSignature => TokenError::Expired,
                    ErrorKind::ImmatureSignature => TokenError::NotYetValid,
                    _ => TokenError::Invalid(e.to_string()),
                }
            })?;
        let claims = data.claims;
        if claims.get("sub").is_some_and(|s| !s.is_string()) {
            return Err(TokenError::Invalid("sub must be a string".into()));
        }
        if claims.get("exp").is_some_and(|e| !e.is_number()) {
            return Err(TokenError::Invalid("exp must be a number".into()));
        }
        if let Some(channels) = claims.get("channels") {
            let valid = channels.as_object().is_some_and(|o| {
                o.iter().all(|(k, v)| {
                    (k == "subscribe" || k == "publish")
                        && v.as_array().is_some_and(|list| list.iter().all(|p| p.as_str().is_some_and(is_pattern)))
                })
            });
            if !valid {
                return Err(TokenError::Invalid(
                    "channels must be {\"subscribe\": [patterns], \"publish\": [patterns]}".into(),
                ));
            }
        }
        Ok(claims)
    }
}

fn is_pattern(p: &str) -> bool {
    let Some(rest) = p.strip_prefix('/') else { return false };
    let segments: Vec<&str> = rest.split('/').collect();
    segments.iter().enumerate().all(|(i, s)| match *s {
        "" => false,
        "**" => i + 1 == segments.len(),
        s => !s.contains(['*', '{', '}']) || s == "*",
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;
    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::json;

    fn sign(claims: Value, secret: &str) -> String {
        let key = EncodingKey::from_secret(secret.as_bytes()).map_err(|e| e.to_string());
        key.and_then(|k| jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &k).map_err(|e| e.to_string()))
            .unwrap_or_default()
    }

    fn now() -> u64 {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
    }

    #[test]
    fn hs256_tokens_are_checked_for_signature_and_time() -> Result<(), TokenKeyError> {
        let verifier = TokenVerifier::new(&TokenKey::Secret(Secret("s3cret".into())))?;
        let good = sign(json!({"sub": "alice", "exp": now() + 60}), "s3cret");
        assert_eq!(verifier.verify(&good).ok().and_then(|c| c.get("sub").cloned()), Some(json!("alice")));
        let forged = sign(json!({"sub": "alice", "exp": now() + 60}), "other");
        assert!(matches!(verifier.verify(&forged), Err(TokenError::Invalid(_))));
        let expired = sign(json!({"sub": "alice", "exp": now() - 1}), "s3cret");
        assert_eq!(verifier.verify(&expired), Err(TokenError::Expired));
        let early = sign(json!({"sub": "alice", "nbf": now() + 60}), "s3cret");
        assert_eq!(verifier.verify(&early), Err(TokenError::NotYetValid));
        let bad_channels = sign(json!({"sub": "alice", "channels": {"subscribe": "/a"}}), "s3cret");
        assert!(matches!(verifier.verify(&bad_channels), Err(TokenError::Invalid(_))));
        assert!(matches!(verifier.verify("not.a.jwt"), Err(TokenError::Invalid(_))));
        Ok(())
    }
}

//! Bayeux errors in Faye's `code:params:message` text form.

use std::fmt;

/// A Bayeux protocol error as carried in a reply's `error` field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BayeuxError {
    /// Numeric code (300–500).
    pub code: u16,
    /// Parameters, joined with `,` in the text form.
    pub params: Vec<String>,
    /// Human-readable message.
    pub message: String,
}

impl BayeuxError {
    fn new(code: u16, params: Vec<String>, message: &str) -> Self {
        Self { code, params, message: message.to_string() }
    }
    /// 300 Version mismatch.
    pub fn version_mismatch(params: Vec<String>) -> Self {
        Self::new(300, params, "Version mismatch")
    }
    /// 301 Connection types not supported.
    pub fn conntype_mismatch(params: Vec<String>) -> Self {
        Self::new(301, params, "Connection types not supported")
    }
    /// 302 Extension mismatch.
    pub fn ext_mismatch(params: Vec<String>) -> Self {
        Self::new(302, params, "Extension mismatch")
    }
    /// 400 Bad request.
    pub fn bad_request(params: Vec<String>) -> Self {
        Self::new(400, params, "Bad request")
    }
    /// 401 Unknown client.
    pub fn client_unknown(client_id: &str) -> Self {
        Self::new(401, vec![client_id.to_string()], "Unknown client")
    }
    /// 402 Missing required parameter.
    pub fn parameter_missing(name: &str) -> Self {
        Self::new(402, vec![name.to_string()], "Missing required parameter")
    }
    /// 403 Forbidden channel.
    pub fn channel_forbidden(channel: &str) -> Self {
        Self::new(403, vec![channel.to_string()], "Forbidden channel")
    }
    /// 404 Unknown channel.
    pub fn channel_unknown(channel: &str) -> Self {
        Self::new(404, vec![channel.to_string()], "Unknown channel")
    }
    /// 405 Invalid channel.
    pub fn channel_invalid(channel: &str) -> Self {
        Self::new(405, vec![channel.to_string()], "Invalid channel")
    }
    /// 406 Unknown extension.
    pub fn ext_unknown(params: Vec<String>) -> Self {
        Self::new(406, params, "Unknown extension")
    }
    /// 407 Failed to publish.
    pub fn publish_failed(channel: &str) -> Self {
        Self::new(407, vec![channel.to_string()], "Failed to publish")
    }
    /// 500 Internal server error.
    pub fn server_error(params: Vec<String>) -> Self {
        Self::new(500, params, "Internal server error")
    }

    /// 403 on a subscribe that would take the client past its subscription limit.
    pub fn subscription_limit(channel: &str, limit: usize) -> Self {
        Self {
            code: 403,
            params: vec![channel.to_string()],
            message: format!("Too many subscriptions (at most {limit} per client)"),
        }
    }

    /// 429 on a handshake refused because its address handshakes too often; the reply's
    /// advice says when to try again. Not a Faye code: HTTP's "Too Many Requests".
    pub fn handshake_rate_limited() -> Self {
        Self::new(429, Vec::new(), "Too many handshakes from this address")
    }

    /// Parses the text form; text that is not `ddd:params:message` becomes a code-less error
    /// (code 0) whose message is the whole text, as Faye's client does.
    pub fn parse(text: &str) -> Self {
        let mut parts = text.splitn(3, ':');
        let (Some(code), Some(params), Some(message)) = (parts.next(), parts.next(), parts.next()) else {
            return Self { code: 0, params: Vec::new(), message: text.to_string() };
        };
        match code.parse::<u16>() {
            Ok(code) if (100..1000).contains(&code) => Self {
                code,
                params: if params.is_empty() { Vec::new() } else { params.split(',').map(str::to_string).collect() },
                message: message.to_string(),
            },
            _ => Self { code: 0, params: Vec::new(), message: text.to_string() },
        }
    }
}

impl fmt::Display for BayeuxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.code, self.params.join(","), self.message)
    }
}

impl std::error::Error for BayeuxError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_form() {
        assert_eq!(BayeuxError::channel_forbidden("/meta/foo").to_string(), "403:/meta/foo:Forbidden channel");
        assert_eq!(
            BayeuxError::conntype_mismatch(vec!["foo".into(), "bar".into()]).to_string(),
            "301:foo,bar:Connection types not supported"
        );
        let parsed = BayeuxError::parse("405:/a/*:Invalid channel");
        assert_eq!(parsed, BayeuxError::channel_invalid("/a/*"));
        assert_eq!(BayeuxError::parse("nope").code, 0);
        assert_eq!(
            BayeuxError::subscription_limit("/a", 2).to_string(),
            "403:/a:Too many subscriptions (at most 2 per client)"
        );
        assert_eq!(BayeuxError::handshake_rate_limited().to_string(), "429::Too many handshakes from this address");
    }
}

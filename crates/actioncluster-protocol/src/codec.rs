//! Request bodies to messages, messages to bytes. A delivered message is encoded once and
//! the same bytes are spliced into every recipient's reply array.

use super::message::Message;
use bytes::{BufMut, Bytes, BytesMut};
use thiserror::Error;

/// Why a request body is not a Bayeux request.
#[derive(Debug, Error)]
pub enum CodecError {
    /// The body is larger than the configured limit.
    #[error("body of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// Bytes received.
        size: usize,
        /// The configured limit.
        limit: usize,
    },
    /// The body is empty.
    #[error("empty message")]
    Empty,
    /// The body is not valid JSON.
    #[error("malformed JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// Valid JSON, but neither an object nor an array (nor null).
    #[error("JSON messages must contain an object or array")]
    NotObject,
}

/// Parses a body: one object, an array of objects, or `null` (no messages).
pub fn decode(body: &[u8], limit: usize) -> Result<Vec<Message>, CodecError> {
    if body.len() > limit {
        return Err(CodecError::TooLarge { size: body.len(), limit });
    }
    let start = body.iter().position(|b| !b.is_ascii_whitespace()).ok_or(CodecError::Empty)?;
    match body[start] {
        b'[' => Ok(serde_json::from_slice::<Vec<Message>>(body)?),
        b'{' => Ok(vec![serde_json::from_slice::<Message>(body)?]),
        _ => match serde_json::from_slice::<serde_json::Value>(body)? {
            serde_json::Value::Null => Ok(Vec::new()),
            _ => Err(CodecError::NotObject),
        },
    }
}

/// Encodes one message as a JSON object.
pub fn encode(message: &Message) -> Bytes {
    let mut out = Vec::with_capacity(128);
    // Serializing our own Message to a Vec cannot fail: every field is a string, bool or
    // already-valid raw JSON.
    if serde_json::to_writer(&mut out, message).is_err() {
        out.clear();
        out.extend_from_slice(b"{}");
    }
    Bytes::from(out)
}

/// Joins already-encoded JSON objects into one JSON array, in one allocation.
pub fn encode_array<'a, I>(parts: I) -> Bytes
where
    I: IntoIterator<Item = &'a [u8]>,
    I::IntoIter: Clone,
{
    let iter = parts.into_iter();
    let len: usize = iter.clone().map(|p| p.len() + 1).sum::<usize>() + 2;
    let mut out = BytesMut::with_capacity(len);
    out.put_u8(b'[');
    for (i, part) in iter.enumerate() {
        if i > 0 {
            out.put_u8(b',');
        }
        out.put_slice(part);
    }
    out.put_u8(b']');
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_shapes() {
        assert_eq!(decode(b"null", 100).unwrap().len(), 0);
        assert_eq!(decode(b" [] ", 100).unwrap().len(), 0);
        assert_eq!(decode(br#"{"channel":"/a"}"#, 100).unwrap().len(), 1);
        assert_eq!(decode(br#"[{"channel":"/a"},{"channel":"/b"}]"#, 100).unwrap().len(), 2);
        assert!(matches!(decode(b"\"x\"", 100), Err(CodecError::NotObject)));
        assert!(matches!(decode(b"12", 100), Err(CodecError::NotObject)));
        assert!(matches!(decode(b"{", 100), Err(CodecError::Json(_))));
        assert!(matches!(decode(b"  ", 100), Err(CodecError::Empty)));
        assert!(matches!(decode(b"[{}]", 2), Err(CodecError::TooLarge { .. })));
    }

    #[test]
    fn array_join() {
        let parts: Vec<Bytes> = vec![Bytes::from_static(b"{}"), Bytes::from_static(b"{\"a\":1}")];
        assert_eq!(&encode_array(parts.iter().map(|b| b.as_ref()))[..], b"[{},{\"a\":1}]");
        assert_eq!(&encode_array(std::iter::empty::<&[u8]>())[..], b"[]");
    }

    proptest::proptest! {
        #[test]
        fn round_trip(channel in "/[a-z]{1,8}", data in proptest::collection::vec(0i64..1000, 0..5), extra in "[a-z]{1,4}") {
            let text = serde_json::json!({"channel": channel, "data": data, extra.clone(): 1}).to_string();
            let decoded = decode(text.as_bytes(), 1 << 20).unwrap();
            let encoded = encode(&decoded[0]);
            let back: serde_json::Value = serde_json::from_slice(&encoded).unwrap();
            proptest::prop_assert_eq!(back, serde_json::from_str::<serde_json::Value>(&text).unwrap());
        }
    }
}

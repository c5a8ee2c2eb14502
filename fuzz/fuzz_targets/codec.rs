//! The request codec on arbitrary bytes: `decode` never panics, and every message it yields
//! survives `encode` -> `decode` with its channel, clientId, id, data and ext intact (and
//! encoding is stable: encoding the re-decoded message gives the same bytes).
#![no_main]

use actioncluster::protocol::codec::{self, CodecError};
use actioncluster::protocol::{BayeuxError, Message};
use libfuzzer_sys::fuzz_target;

const LIMIT: usize = 1 << 20;

fn raw(v: &Option<Box<serde_json::value::RawValue>>) -> Option<&str> {
    v.as_deref().map(|r| r.get())
}

fuzz_target!(|body: &[u8]| {
    // The size limit is enforced before anything is parsed.
    if !body.is_empty() {
        assert!(matches!(codec::decode(body, body.len() - 1), Err(CodecError::TooLarge { .. })));
    }
    let Ok(messages) = codec::decode(body, LIMIT) else { return };

    let mut encoded = Vec::with_capacity(messages.len());
    for m in &messages {
        let bytes = codec::encode(m);
        // Valid JSON text, and an object. (Checked as a raw value: JSON's grammar allows
        // numbers such as 1e9999 and nesting deeper than serde_json's recursion limit, both of
        // which the codec keeps verbatim inside `data`, but which a `Value` refuses.)
        if let Err(e) = serde_json::from_slice::<&serde_json::value::RawValue>(&bytes) {
            panic!("encode produced invalid JSON ({e}): {:?}", String::from_utf8_lossy(&bytes));
        }
        assert!(bytes.starts_with(b"{") && bytes.ends_with(b"}"), "encode produced a non-object: {bytes:?}");

        let back = codec::decode(&bytes, usize::MAX).expect("an encoded message decodes");
        assert_eq!(back.len(), 1, "one object in, one message out");
        let b: &Message = &back[0];
        assert_eq!(b.channel, m.channel, "channel");
        assert_eq!(b.client_id, m.client_id, "clientId");
        assert_eq!(raw(&b.id), raw(&m.id), "id");
        assert_eq!(raw(&b.data), raw(&m.data), "data");
        assert_eq!(raw(&b.ext), raw(&m.ext), "ext");
        assert_eq!(b.subscription, m.subscription, "subscription");
        assert_eq!(b.connection_type, m.connection_type, "connectionType");
        assert_eq!(b.supported_connection_types, m.supported_connection_types, "supportedConnectionTypes");
        assert_eq!(b.error, m.error, "error");
        assert_eq!(b.other.len(), m.other.len(), "unknown fields");
        // Encoding is stable.
        assert_eq!(codec::encode(b), bytes, "re-encoding the decoded message");

        // What the server derives from a message must not panic on any input either.
        let _ = m.advice_timeout_ms();
        let reply = m.reply();
        assert_eq!(reply.channel.as_deref().filter(|c| !c.is_empty()), m.channel.as_deref().filter(|c| !c.is_empty()));
        let delivered = m.for_delivery();
        assert!(delivered.client_id.is_none());
        assert_eq!(raw(&delivered.data), raw(&m.data));
        if let Some(error) = &m.error {
            let parsed = BayeuxError::parse(error);
            if parsed.code == 0 {
                assert_eq!(&parsed.message, error);
            }
        }
        encoded.push(bytes);
    }

    // The reply array built from the encoded parts decodes back to as many messages.
    let array = codec::encode_array(encoded.iter().map(|b| b.as_ref()));
    let again = codec::decode(&array, usize::MAX).expect("an encoded array decodes");
    assert_eq!(again.len(), messages.len());
    for (a, m) in again.iter().zip(&messages) {
        assert_eq!(a.channel, m.channel);
        assert_eq!(a.client_id, m.client_id);
        assert_eq!(raw(&a.data), raw(&m.data));
    }
});

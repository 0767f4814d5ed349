//! Versioned MessagePack encoding of every message.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// The version byte that starts every encoded message.
pub const PROTOCOL_VERSION: u8 = 1;

/// Bytes that are not a message of this protocol version.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The message is empty.
    #[error("empty message")]
    Empty,
    /// The message was written by another protocol version.
    #[error(
        "message of protocol version {found}, this build speaks version {expected}: run the \
         same daisy-rs version on every machine of a run"
    )]
    Version {
        /// The version byte found.
        found: u8,
        /// [`PROTOCOL_VERSION`].
        expected: u8,
    },
    /// The body is not valid MessagePack for the expected type.
    #[error("malformed message body: {reason}")]
    Malformed {
        /// What the decoder said.
        reason: String,
    },
}

/// Encodes a message: the version byte, then MessagePack with field names.
pub fn encode<T: Serialize>(message: &T) -> Vec<u8> {
    let mut bytes = vec![PROTOCOL_VERSION];
    rmp_serde::encode::write_named(&mut bytes, message)
        .expect("serialising plain data into a Vec cannot fail");
    bytes
}

/// Decodes a message written by [`encode`].
///
/// # Errors
/// [`DecodeError`] for empty input, another version, or a malformed body.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, DecodeError> {
    let (&version, body) = bytes.split_first().ok_or(DecodeError::Empty)?;
    if version != PROTOCOL_VERSION {
        return Err(DecodeError::Version { found: version, expected: PROTOCOL_VERSION });
    }
    rmp_serde::from_slice(body).map_err(|err| DecodeError::Malformed { reason: err.to_string() })
}

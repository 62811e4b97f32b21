//! Body codecs: JSON (serde) by default, anything serde speaks by implementing [`Codec`].

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Error, Result};

/// Turns typed values into message bodies and back.
///
/// A codec is stateless or cheaply shared; it names the `content_type` it writes, which the
/// publisher puts in the message properties.
///
/// ```
/// use postroom_client::{Codec, Json};
/// let body = Json.encode(&vec![1, 2, 3]).unwrap();
/// assert_eq!(body, b"[1,2,3]");
/// let back: Vec<u8> = Json.decode(&body).unwrap();
/// assert_eq!(back, [1, 2, 3]);
/// ```
pub trait Codec: Send + Sync + 'static {
    /// The MIME type written to the `content_type` property.
    fn content_type(&self) -> &'static str;

    /// Encodes `value` as a body.
    ///
    /// # Errors
    /// [`Error::Codec`] when the value cannot be represented.
    fn encode<T: Serialize + ?Sized>(&self, value: &T) -> Result<Vec<u8>>;

    /// Decodes a body.
    ///
    /// # Errors
    /// [`Error::Codec`] when the bytes are not a valid `T`; the worker treats that as an
    /// invalid payload (rejected, never retried).
    fn decode<T: DeserializeOwned>(&self, body: &[u8]) -> Result<T>;
}

/// JSON through `serde_json`, content type `application/json`.
///
/// ```
/// use postroom_client::{Codec, Json};
/// assert_eq!(Json.content_type(), "application/json");
/// assert!(Json.decode::<u32>(b"not json").is_err());
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct Json;

impl Codec for Json {
    fn content_type(&self) -> &'static str {
        "application/json"
    }

    fn encode<T: Serialize + ?Sized>(&self, value: &T) -> Result<Vec<u8>> {
        serde_json::to_vec(value).map_err(|error| Error::Codec {
            content_type: self.content_type(),
            message: error.to_string(),
        })
    }

    fn decode<T: DeserializeOwned>(&self, body: &[u8]) -> Result<T> {
        serde_json::from_slice(body).map_err(|error| Error::Codec {
            content_type: self.content_type(),
            message: error.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Order {
        id: String,
        qty: u32,
    }

    #[test]
    fn json_round_trips_a_struct() {
        let order = Order { id: "o-1".into(), qty: 3 };
        let body = Json.encode(&order).unwrap();
        assert_eq!(Json.decode::<Order>(&body).unwrap(), order);
    }

    #[test]
    fn json_reports_a_missing_field_as_a_codec_error() {
        let error = Json.decode::<Order>(br#"{"id":"o-1"}"#).unwrap_err();
        assert!(matches!(error, Error::Codec { content_type: "application/json", .. }));
        assert!(error.to_string().contains("qty"), "{error}");
    }
}

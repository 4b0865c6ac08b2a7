//! The request body as a condition sees it. Only a request one of whose applicable
//! conditions reads `request.body` is read whole (up to `limits.max_inspected_body_bytes`);
//! it is then forwarded or parked as the bytes received. It is parsed as JSON only under
//! a JSON Content-Type, strictly: a key repeated at any depth, invalid UTF-8, a
//! top-level value that is not an object, or any other body is `uninspectable_body` —
//! a backend that reads the last of two `amount`s must never see a value the gate did not.

use cel::common::types::{
    CelBool, CelDouble, CelInt, CelList, CelMap, CelMapKey, CelNull, CelString, CelUInt,
};
use cel::common::value::Val;
use http_body_util::{Either, Full};
use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use std::collections::HashMap;

/// A CEL value that may borrow from the body's bytes.
pub type Owned<'v> = Box<dyn Val + 'v>;

/// What the request path read of a body a condition needs.
#[derive(Debug, Clone)]
pub enum Read {
    /// The request has no body: `request.body` is absent (`has(request.body)` is false).
    Empty,
    /// The bytes, and whether the Content-Type is JSON.
    Bytes { bytes: bytes::Bytes, json: bool },
}

/// Reads the body of `req` whole for a condition (up to `limits.max_inspected_body_bytes`
/// and `max_body_bytes`; over it → 413) and returns the request with those bytes as its
/// body, to be forwarded or parked byte for byte.
pub async fn read<B>(
    snap: &crate::config::Snapshot,
    req: http::Request<B>,
) -> Result<(http::Request<Either<B, Full<bytes::Bytes>>>, Option<Read>), crate::error::Error>
where
    B: http_body::Body<Data = bytes::Bytes>,
    B::Error: Into<crate::body::BoxError>,
{
    let limit = snap
        .limits
        .max_inspected_body_bytes
        .min(snap.limits.max_body_bytes);
    let (parts, body) = req.into_parts();
    let bytes = crate::body::collect_limited(&parts.headers, body, limit).await?;
    let read = if bytes.is_empty() {
        Read::Empty
    } else {
        let json = crate::override_scan::format_of(&parts.headers)?
            == Some(crate::override_scan::Format::Json);
        Read::Bytes {
            bytes: bytes.clone(),
            json,
        }
    };
    Ok((
        http::Request::from_parts(parts, Either::Right(Full::new(bytes))),
        Some(read),
    ))
}

/// Parses `bytes` as one JSON object with no repeated key, into CEL values that
/// borrow its strings where they hold no escapes.
pub fn parse_object(bytes: &[u8]) -> Result<Owned<'_>, String> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let v = Seed.deserialize(&mut de).map_err(|e| e.to_string())?;
    de.end().map_err(|e| e.to_string())?;
    if !v.1 {
        return Err("the body is not a JSON object".into());
    }
    Ok(v.0)
}

/// Builds a CEL value; the flag says whether it is a map.
struct Seed;

impl<'de> DeserializeSeed<'de> for Seed {
    type Value = (Owned<'de>, bool);
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(Build)
    }
}

struct Build;

impl<'de> Visitor<'de> for Build {
    type Value = (Owned<'de>, bool);

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Self::Value, E> {
        Ok((Box::new(CelBool::from(v)), false))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
        Ok((Box::new(CelInt::from(v)), false))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
        Ok(match i64::try_from(v) {
            Ok(i) => (Box::new(CelInt::from(i)), false),
            Err(_) => (Box::new(CelUInt::from(v)), false),
        })
    }
    fn visit_f64<E>(self, v: f64) -> Result<Self::Value, E> {
        Ok((Box::new(CelDouble::from(v)), false))
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok((Box::new(CelString::from(v)), false))
    }
    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok((Box::new(CelString::from(v.to_string())), false))
    }
    fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
        Ok((Box::new(CelString::from(v)), false))
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok((Box::new(CelNull), false))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut out: Vec<Owned<'de>> = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some((v, _)) = seq.next_element_seed(Seed)? {
            out.push(v);
        }
        Ok((Box::new(CelList::from(out)), false))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut out: HashMap<CelMapKey<'de>, Owned<'de>> = HashMap::new();
        while let Some(k) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            let (v, _) = map.next_value_seed(Seed)?;
            let dup = match &k {
                std::borrow::Cow::Borrowed(s) => out.insert(CelMapKey::from(*s), v).is_some(),
                std::borrow::Cow::Owned(s) => out.insert(CelMapKey::from(s.clone()), v).is_some(),
            };
            if dup {
                return Err(serde::de::Error::custom(format!(
                    "the key `{k}` appears twice"
                )));
            }
        }
        Ok((Box::new(CelMap::from(out)), true))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// What the gate accepts is exactly what `validate: request`'s strict parser
        /// accepts as an object: one meaning of "a JSON object with no repeated key".
        #[test]
        fn agrees_with_the_validator(b in proptest::collection::vec(
            prop_oneof![
                Just(b'{'), Just(b'}'), Just(b'['), Just(b']'), Just(b':'), Just(b','),
                Just(b'"'), Just(b'a'), Just(b'b'), Just(b'1'), Just(b' '), Just(b'\\'),
                Just(b'u'), Just(b'0'), Just(b'6'), Just(0xff),
            ],
            0..40,
        )) {
            let ours = parse_object(&b).is_ok();
            let theirs = crate::openapi::validate::strict_json(&b).is_ok_and(|v| v.is_object());
            prop_assert_eq!(ours, theirs, "{:?}", String::from_utf8_lossy(&b));
        }
    }

    #[test]
    fn strict_objects_only() {
        assert!(parse_object(br#"{"amount": 50, "items": [{"q": 1}], "s": "a\"b"}"#).is_ok());
        for (bad, says) in [
            (&br#"{"amount": 1, "amount": 1000}"#[..], "twice"),
            (br#"{"x": {"k": 1, "k": 2}}"#, "twice"),
            (br#"{"x": [{"k": 1, "k": 2}]}"#, "twice"),
            (br#"{"a\u0062": 1, "ab": 2}"#, "twice"),
            (b"[1, 2]", "not a JSON object"),
            (b"5", "not a JSON object"),
            (b"{} {}", "trailing"),
            (b"{\"a\": \"\xff\"}", "unicode"),
            (b"", "EOF"),
        ] {
            let e = parse_object(bad).err().unwrap();
            assert!(e.contains(says), "{:?}: {e}", String::from_utf8_lossy(bad));
        }
    }
}

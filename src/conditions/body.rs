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
use std::borrow::Cow;
use std::collections::{HashMap, HashSet};

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

/// Parses `bytes` as one JSON object with no repeated key at any depth, into CEL
/// values that borrow its strings where they hold no escapes. With `keys`, only those
/// top-level members are built; every other member is still read and checked.
pub fn parse_object<'a>(bytes: &'a [u8], keys: Option<&[&str]>) -> Result<Owned<'a>, String> {
    // UTF-8 checked once over the whole body, not string by string.
    let text = std::str::from_utf8(bytes).map_err(|e| format!("the body is not UTF-8: {e}"))?;
    let mut de = serde_json::Deserializer::from_str(text);
    let mut seen = Vec::new();
    let v = de
        .deserialize_any(Top {
            keys,
            seen: &mut seen,
        })
        .map_err(|e| e.to_string())?;
    de.end().map_err(|e| e.to_string())?;
    Ok(v)
}

/// An object's keys past this many are checked in a set rather than by a scan.
const LINEAR: usize = 16;

/// The keys of one object being read, kept on a stack shared by the whole document
/// (`seen[start..]`), or in a set once there are more than [`LINEAR`] of them.
struct Frame<'de> {
    start: usize,
    set: Option<HashSet<Cow<'de, str>>>,
}

impl<'de> Frame<'de> {
    fn new(seen: &[Cow<'de, str>]) -> Self {
        Frame {
            start: seen.len(),
            set: None,
        }
    }
    /// Records `k`; an error if this object named it already.
    fn add<E: serde::de::Error>(
        &mut self,
        seen: &mut Vec<Cow<'de, str>>,
        k: Cow<'de, str>,
    ) -> Result<(), E> {
        let dup = match &mut self.set {
            Some(set) => !set.insert(k.clone()),
            None => seen[self.start..].contains(&k),
        };
        if dup {
            return Err(E::custom(format!("the key `{k}` appears twice")));
        }
        if self.set.is_none() {
            seen.push(k);
            if seen.len() - self.start > LINEAR {
                self.set = Some(seen.drain(self.start..).collect());
            }
        }
        Ok(())
    }
    fn end(self, seen: &mut Vec<Cow<'de, str>>) {
        seen.truncate(self.start);
    }
}

/// A key, borrowed from the body unless it holds an escape.
struct Key;

impl<'de> DeserializeSeed<'de> for Key {
    type Value = Cow<'de, str>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(Key)
    }
}

impl<'de> Visitor<'de> for Key {
    type Value = Cow<'de, str>;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a key")
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v.to_string()))
    }
    fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v))
    }
}

/// The top level: an object, some of whose members are built.
struct Top<'k, 's, 'de> {
    keys: Option<&'k [&'k str]>,
    seen: &'s mut Vec<Cow<'de, str>>,
}

fn not_object<E: serde::de::Error>() -> E {
    E::custom("the body is not a JSON object")
}

impl<'de> Visitor<'de> for Top<'_, '_, 'de> {
    type Value = Owned<'de>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Err(not_object())
    }
    fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<Self::Value, E> {
        Err(not_object())
    }
    fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<Self::Value, E> {
        Err(not_object())
    }
    fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Err(not_object())
    }
    fn visit_str<E: serde::de::Error>(self, _: &str) -> Result<Self::Value, E> {
        Err(not_object())
    }
    fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
        Err(not_object())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, _: A) -> Result<Self::Value, A::Error> {
        Err(not_object())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let seen = self.seen;
        let mut frame = Frame::new(seen);
        let mut out: HashMap<CelMapKey<'de>, Owned<'de>> = HashMap::new();
        while let Some(k) = map.next_key_seed(Key)? {
            if self.keys.is_none_or(|ks| ks.contains(&&*k)) {
                let (v, _) = map.next_value_seed(Seed)?;
                frame.add(seen, k.clone())?;
                out.insert(key(k), v);
            } else {
                map.next_value_seed(Scan { seen: &mut *seen })?;
                frame.add(seen, k)?;
            }
        }
        frame.end(seen);
        Ok(Box::new(CelMap::from(out)))
    }
}

fn key<'de>(k: Cow<'de, str>) -> CelMapKey<'de> {
    match k {
        Cow::Borrowed(s) => CelMapKey::from(s),
        Cow::Owned(s) => CelMapKey::from(s),
    }
}

/// Reads a value without building it, refusing a repeated key in any object in it.
struct Scan<'s, 'de> {
    seen: &'s mut Vec<Cow<'de, str>>,
}

impl<'de> DeserializeSeed<'de> for Scan<'_, 'de> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Scan<'_, 'de> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq
            .next_element_seed(Scan {
                seen: &mut *self.seen,
            })?
            .is_some()
        {}
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let seen = self.seen;
        let mut frame = Frame::new(seen);
        while let Some(k) = map.next_key_seed(Key)? {
            map.next_value_seed(Scan { seen: &mut *seen })?;
            frame.add(seen, k)?;
        }
        frame.end(seen);
        Ok(())
    }
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
        while let Some(k) = map.next_key_seed(Key)? {
            let (v, _) = map.next_value_seed(Seed)?;
            let shown = k.clone();
            if out.insert(key(k), v).is_some() {
                return Err(serde::de::Error::custom(format!(
                    "the key `{shown}` appears twice"
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
            let ours = parse_object(&b, None).is_ok();
            prop_assert_eq!(ours, parse_object(&b, Some(&["a"])).is_ok());
            let theirs = crate::openapi::validate::strict_json(&b).is_ok_and(|v| v.is_object());
            prop_assert_eq!(ours, theirs, "{:?}", String::from_utf8_lossy(&b));
        }
    }

    #[test]
    fn strict_objects_only() {
        assert!(parse_object(br#"{"amount": 50, "items": [{"q": 1}], "s": "a\"b"}"#, None).is_ok());
        // Many keys: past the linear list, a set.
        let many: String = (0..40).map(|i| format!("\"k{i}\": {i}, ")).collect();
        assert!(parse_object(format!("{{{many}\"z\": 0}}").as_bytes(), Some(&["z"])).is_ok());
        let e = parse_object(format!("{{{many}\"k3\": 0}}").as_bytes(), Some(&["z"]))
            .err()
            .unwrap();
        assert!(e.contains("`k3` appears twice"), "{e}");
        for (bad, says) in [
            (&br#"{"amount": 1, "amount": 1000}"#[..], "twice"),
            (br#"{"x": {"k": 1, "k": 2}}"#, "twice"),
            (br#"{"x": [{"k": 1, "k": 2}]}"#, "twice"),
            (br#"{"a\u0062": 1, "ab": 2}"#, "twice"),
            (b"[1, 2]", "not a JSON object"),
            (b"5", "not a JSON object"),
            (b"{} {}", "trailing"),
            (b"{\"a\": \"\xff\"}", "not UTF-8"),
            (b"", "EOF"),
        ] {
            let e = parse_object(bad, None).err().unwrap();
            // Members that are not built are checked all the same.
            let e2 = parse_object(bad, Some(&["other"])).err().unwrap();
            assert!(
                e2.contains(says),
                "{:?}: {e2}",
                String::from_utf8_lossy(bad)
            );
            assert!(e.contains(says), "{:?}: {e}", String::from_utf8_lossy(bad));
        }
    }
}

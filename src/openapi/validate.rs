//! `validate: request`: the query parameters and the JSON body of a request are checked
//! against its operation's input schema (the `jsonschema` crate, draft 2020-12) after
//! the gate has decided and before anything is forwarded or parked. A violation is a
//! 400 `schema_violation` naming the JSON pointer and the rule that failed; a valid body
//! is forwarded byte for byte as it was received. A JSON body with a repeated key is
//! refused: a validator and a backend could read different values from it.

use super::schema::Schema;
use super::Operation;
use crate::canon::Canonical;
use crate::classify::Tool;
use crate::config::Snapshot;
use crate::error::Error;
use crate::override_scan::{self, Format};
use bytes::Bytes;
use http::{header, Request};
use http_body_util::{Either, Full};
use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;

/// A request body after validation: streamed as it came, or the bytes read to validate it.
pub type ReqBody<B> = Either<B, Full<Bytes>>;

const STRING: u8 = 1;
const INTEGER: u8 = 2;
const NUMBER: u8 = 4;
const BOOLEAN: u8 = 8;
const ARRAY: u8 = 16;

/// How a query parameter's text is read for validation.
#[derive(Debug, Clone)]
pub struct QueryParam {
    name: String,
    /// The JSON types its schema allows (0: any).
    kinds: u8,
    /// For an array: the types of its items.
    items: u8,
    /// A list is given by repeating the parameter (`a=1&a=2`), else as `a=1,2`.
    explode: bool,
}

/// The query parameters of an input schema with the types their text is read as.
pub fn query_params(input: &Schema, explodes: &[(String, bool)]) -> Vec<QueryParam> {
    if explodes.is_empty() {
        return Vec::new();
    }
    let root = input.root();
    let props = root.pointer("/properties/query/properties");
    explodes
        .iter()
        .map(|(name, explode)| {
            let s = props.and_then(|p| p.get(name)).unwrap_or(&Value::Null);
            let items = item_schema(input, s).map_or(0, |i| kinds(input, &i, 0));
            QueryParam {
                name: name.clone(),
                kinds: kinds(input, s, 0),
                items,
                explode: *explode,
            }
        })
        .collect()
}

/// The JSON types a schema allows, through `$ref`s and `anyOf`/`oneOf`/`allOf`.
fn kinds(s: &Schema, v: &Value, depth: usize) -> u8 {
    if depth > 8 {
        return 0;
    }
    let v = s.resolve(v);
    let one = |t: &str| match t {
        "string" => STRING,
        "integer" => INTEGER,
        "number" => NUMBER | INTEGER,
        "boolean" => BOOLEAN,
        "array" => ARRAY,
        _ => 0,
    };
    let mut k = match v.get("type") {
        Some(Value::String(t)) => one(t),
        Some(Value::Array(ts)) => ts
            .iter()
            .filter_map(Value::as_str)
            .map(one)
            .fold(0, |a, b| a | b),
        _ => 0,
    };
    for key in ["anyOf", "oneOf", "allOf"] {
        if let Some(Value::Array(subs)) = v.get(key) {
            for sub in subs {
                k |= kinds(s, sub, depth + 1);
            }
        }
    }
    if k == 0 {
        if let Some(Value::Array(e)) = v.get("enum") {
            for x in e {
                k |= match x {
                    Value::String(_) => STRING,
                    Value::Number(_) => NUMBER | INTEGER,
                    Value::Bool(_) => BOOLEAN,
                    _ => 0,
                };
            }
        }
    }
    k
}

fn item_schema(s: &Schema, v: &Value) -> Option<Value> {
    let v = s.resolve(v);
    v.get("items").cloned().or_else(|| {
        ["anyOf", "oneOf"]
            .iter()
            .filter_map(|k| v.get(*k).and_then(Value::as_array))
            .flatten()
            .find_map(|sub| s.resolve(sub).get("items").cloned())
    })
}

/// A compiled validator for an operation's query and body.
pub struct RequestCheck {
    validator: jsonschema::Validator,
}

impl std::fmt::Debug for RequestCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RequestCheck")
    }
}

impl RequestCheck {
    /// Compiles the part of `op`'s input schema that a request carries: `query`, and
    /// `body` when the operation's body is JSON (another body — a file upload, a form —
    /// is forwarded as it comes, so its schema is not the validator's business).
    pub fn build(op: &Operation) -> Result<RequestCheck, String> {
        let full = op.input.to_value();
        let checked: &[&str] = if op.json_body {
            &["query", "body"]
        } else {
            &["query"]
        };
        let mut props = Map::new();
        for &k in checked {
            if let Some(p) = full.pointer(&format!("/properties/{k}")) {
                props.insert(k.into(), p.clone());
            }
        }
        let required: Vec<Value> = full
            .get("required")
            .and_then(Value::as_array)
            .map(|r| {
                r.iter()
                    .filter(|x| x.as_str().is_some_and(|x| checked.contains(&x)))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        let mut schema =
            json!({"type": "object", "properties": Value::Object(props), "required": required});
        if let Some(defs) = full.get("$defs") {
            schema["$defs"] = defs.clone();
        }
        let validator = jsonschema::draft202012::new(&schema)
            .map_err(|e| format!("the input schema does not compile: {e}"))?;
        Ok(RequestCheck { validator })
    }

    /// Validates the instance `{"query": …, "body": …}`.
    pub fn check(&self, instance: &Value) -> Result<(), Error> {
        let Err(e) = self.validator.validate(instance) else {
            return Ok(());
        };
        let mut pointer = e.instance_path().to_string();
        if let jsonschema::error::ValidationErrorKind::Required { property } = e.kind() {
            if let Some(p) = property.as_str() {
                pointer.push('/');
                pointer.push_str(&super::refs::escape(p));
            }
        }
        let rule = e.kind().keyword().to_string();
        let detail = format!(
            "{}: {} (rule `{rule}` at {})",
            if pointer.is_empty() { "/" } else { &pointer },
            e.masked(),
            e.schema_path()
        );
        Err(violation(pointer, rule, detail))
    }
}

fn violation(pointer: String, rule: String, detail: String) -> Error {
    Error::SchemaViolation {
        pointer,
        rule,
        detail: super::ops::cap(&detail, 512),
    }
}

/// The query string as the validator sees it: each parameter the operation declares
/// read as its schema's type (`per_page=2` → 2, `a=1,2` or `a=1&a=2` → [1, 2]); a
/// parameter given more often than its schema allows becomes a list, which fails the
/// schema; undeclared parameters are strings.
pub fn query_object(op: &Operation, query: Option<&str>) -> Value {
    let mut raw: BTreeMap<String, Vec<String>> = BTreeMap::new();
    if let Some(q) = query {
        for (k, v) in crate::decode::pairs(q.as_bytes()) {
            raw.entry(k).or_default().push(v);
        }
    }
    let mut out = Map::new();
    for (k, vals) in raw {
        let v = match op.query.iter().find(|p| p.name == k) {
            Some(p) if p.kinds & ARRAY != 0 => {
                let items: Vec<Value> = if p.explode {
                    vals.iter().map(|s| scalar(s, p.items)).collect()
                } else {
                    vals.iter()
                        .flat_map(|v| v.split(','))
                        .map(|s| scalar(s, p.items))
                        .collect()
                };
                Value::Array(items)
            }
            Some(p) if vals.len() == 1 => scalar(&vals[0], p.kinds),
            Some(p) => Value::Array(vals.iter().map(|s| scalar(s, p.kinds)).collect()),
            None if vals.len() == 1 => Value::String(vals[0].clone()),
            None => Value::Array(vals.into_iter().map(Value::String).collect()),
        };
        out.insert(k, v);
    }
    Value::Object(out)
}

fn scalar(s: &str, kinds: u8) -> Value {
    if kinds & INTEGER != 0 {
        if let Ok(i) = s.parse::<i64>() {
            return Value::from(i);
        }
    }
    if kinds & NUMBER != 0 {
        if let Some(n) = s.parse::<f64>().ok().and_then(serde_json::Number::from_f64) {
            return Value::Number(n);
        }
    }
    if kinds & BOOLEAN != 0 && (s == "true" || s == "false") {
        return Value::Bool(s == "true");
    }
    Value::String(s.to_string())
}

/// Whether [`request`] checks anything for this tool (an operation with a schema).
pub fn applies(tool: &Tool) -> bool {
    tool.op.as_deref().is_some_and(|op| op.check.is_some())
}

/// Validates `req` when its tool's operation asks for it; returns the request with its
/// body as received (read whole only when it is JSON to validate).
pub async fn request<B>(
    snap: &Snapshot,
    tool: &Tool,
    c: &Canonical,
    req: Request<B>,
) -> Result<Request<ReqBody<B>>, Error>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let Some((op, check)) = tool
        .op
        .as_deref()
        .and_then(|op| op.check.as_ref().map(|ch| (op, ch)))
    else {
        return Ok(req.map(Either::Left));
    };
    let mut instance = Map::new();
    instance.insert("query".into(), query_object(op, c.query.as_deref()));
    let (parts, body) = req.into_parts();
    let declared: Option<u64> = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let has_body = declared.is_some_and(|n| n > 0)
        || parts.headers.contains_key(header::TRANSFER_ENCODING)
        || (declared.is_none() && !http_body::Body::is_end_stream(&body));
    if !op.json_body || !has_body {
        check.check(&Value::Object(instance))?;
        return Ok(Request::from_parts(parts, Either::Left(body)));
    }
    if override_scan::format_of(&parts.headers)? != Some(Format::Json) {
        return Err(violation(
            "/body".into(),
            "contentMediaType".into(),
            "/body: the operation takes a JSON body; send it with a JSON Content-Type".into(),
        ));
    }
    let limit = snap
        .limits
        .max_parked_body_bytes
        .min(snap.limits.max_body_bytes);
    let bytes = crate::body::collect_limited(&parts.headers, body, limit).await?;
    let value = strict_json(&bytes).map_err(|e| {
        violation(
            "/body".into(),
            "json".into(),
            format!("/body: the body is not one JSON value: {e}"),
        )
    })?;
    instance.insert("body".into(), value);
    check.check(&Value::Object(instance))?;
    Ok(Request::from_parts(parts, Either::Right(Full::new(bytes))))
}

/// Parses JSON, refusing an object that names one key twice.
pub fn strict_json(bytes: &[u8]) -> Result<Value, String> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let v = Strict::deserialize(&mut de).map_err(|e| e.to_string())?;
    de.end().map_err(|e| e.to_string())?;
    Ok(v.0)
}

struct Strict(Value);

impl<'de> Deserialize<'de> for Strict {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Strict, D::Error> {
        d.deserialize_any(StrictVisitor).map(Strict)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        while let Some(Strict(v)) = seq.next_element()? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(k) = map.next_key::<String>()? {
            let Strict(v) = map.next_value()?;
            if out.insert(k.clone(), v).is_some() {
                return Err(serde::de::Error::custom(format!(
                    "the key `{k}` appears twice"
                )));
            }
        }
        Ok(Value::Object(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_keys_are_refused() {
        assert_eq!(
            strict_json(br#"{"a": [1, {"b": null}]}"#).unwrap(),
            json!({"a": [1, {"b": null}]})
        );
        let e = strict_json(br#"{"amount": 1, "amount": 1000}"#).unwrap_err();
        assert!(e.contains("twice"), "{e}");
        let e = strict_json(br#"{"x": {"k": 1, "k": 2}}"#).unwrap_err();
        assert!(e.contains("twice"), "{e}");
        assert!(strict_json(b"{} {}").is_err());
        assert!(strict_json(b"").is_err());
    }

    #[test]
    fn query_text_is_read_as_the_schema_types() {
        assert_eq!(scalar("2", INTEGER), json!(2));
        assert_eq!(scalar("2.5", INTEGER), json!("2.5"));
        assert_eq!(scalar("2.5", NUMBER | INTEGER), json!(2.5));
        assert_eq!(scalar("true", BOOLEAN), json!(true));
        assert_eq!(scalar("yes", BOOLEAN), json!("yes"));
        assert_eq!(scalar("7", STRING), json!("7"));
    }
}

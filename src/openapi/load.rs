//! Reading one OpenAPI document (or a file it references): YAML or JSON, its SHA-256
//! (a spec change is a config change), the OpenAPI version it declares, and — only when
//! a message needs one — the `line:col` of a key.
//!
//! A JSON document is not parsed whole: its text is indexed once (top-level keys, each
//! path item, each component) and an entry is parsed into a `serde_json::Value` when
//! it is asked for, then dropped, so importing GitHub's 13 MB description never holds
//! its whole tree (which would be ~100 MB of small allocations). A YAML document is
//! parsed whole (YAML specs are small).

use serde_json::value::RawValue;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The largest spec file read (GitHub's whole REST description is 13 MB).
pub const MAX_FILE_BYTES: u64 = 64 << 20;

/// A document: its text indexed (JSON) or its tree (YAML).
pub struct Doc {
    /// The file as opened (absolute or relative to the working directory).
    pub file: PathBuf,
    /// The file as messages name it (as written in routes.yaml or the `$ref`).
    pub shown: String,
    pub sha256: [u8; 32],
    body: Body,
}

enum Body {
    Tree(Arc<Value>),
    Indexed(Box<Indexed>),
}

/// A JSON text and where its entries stand in it: `/key` for each top-level key,
/// `/paths/<path>` for each path item, `/components/<section>/<name>` for each component
/// (pointer segments escaped).
struct Indexed {
    text: String,
    entries: HashMap<String, Range<usize>>,
    /// Keys of the indexed objects, in order: `""` (top level), `/paths`, `/components`
    /// and `/components/<section>`.
    keys: HashMap<String, Vec<String>>,
    /// Small entries kept parsed: components other than schemas and examples, and
    /// top-level keys other than `paths` and `components`.
    kept: Mutex<HashMap<String, Arc<Value>>>,
    /// The last other entry parsed (path items are asked for once per operation).
    last: Mutex<Option<(String, Arc<Value>)>>,
}

/// A value in a document: the parsed entry holding it and the pointer inside it.
#[derive(Clone)]
pub struct Node {
    entry: Arc<Value>,
    sub: String,
}

impl Node {
    pub fn value(&self) -> &Value {
        self.entry.pointer(&self.sub).unwrap_or(&Value::Null)
    }
}

impl Doc {
    /// The value at JSON pointer `pointer` (escaped segments), if there is one.
    pub fn at(&self, pointer: &str) -> Option<Node> {
        match &self.body {
            Body::Tree(root) => root.pointer(pointer).map(|_| Node {
                entry: root.clone(),
                sub: pointer.to_string(),
            }),
            Body::Indexed(ix) => ix.at(pointer),
        }
    }

    /// Whether there is a value at `pointer` (an indexed entry is not parsed for this).
    pub fn exists(&self, pointer: &str) -> bool {
        match &self.body {
            Body::Indexed(ix) if ix.entries.contains_key(pointer) => true,
            _ => self.at(pointer).is_some(),
        }
    }

    /// The keys of the object at `pointer`; `None` when there is none or it is not an
    /// object (an indexed object is not parsed for this).
    pub fn object_keys(&self, pointer: &str) -> Option<Vec<String>> {
        if let Body::Indexed(ix) = &self.body {
            if let Some(k) = ix.keys.get(pointer) {
                return Some(k.clone());
            }
        }
        self.at(pointer)?
            .value()
            .as_object()
            .map(|m| m.keys().cloned().collect())
    }

    /// The keys of the object at `pointer` (`""` for the top level, `/paths`, …).
    pub fn keys(&self, pointer: &str) -> Vec<String> {
        match &self.body {
            Body::Tree(root) => root
                .pointer(pointer)
                .and_then(Value::as_object)
                .map(|m| m.keys().cloned().collect())
                .unwrap_or_default(),
            Body::Indexed(ix) => match ix.keys.get(pointer) {
                Some(k) => k.clone(),
                None => ix
                    .at(pointer)
                    .and_then(|n| n.value().as_object().map(|m| m.keys().cloned().collect()))
                    .unwrap_or_default(),
            },
        }
    }
}

impl Indexed {
    /// Indexes `text`; a syntax error anywhere in it is found here.
    fn new(text: String) -> Result<Indexed, serde_json::Error> {
        let mut entries = HashMap::new();
        let mut keys = HashMap::new();
        let base = text.as_ptr() as usize;
        let span = |r: &RawValue| {
            let start = r.get().as_ptr() as usize - base;
            start..start + r.get().len()
        };
        let top: BTreeMap<String, &RawValue> = serde_json::from_str(&text)?;
        for (k, v) in &top {
            entries.insert(format!("/{}", super::refs::escape(k)), span(v));
        }
        keys.insert(String::new(), top.keys().cloned().collect::<Vec<_>>());
        if let Some(paths) = top.get("paths") {
            if let Ok(m) = serde_json::from_str::<BTreeMap<String, &RawValue>>(paths.get()) {
                for (k, v) in &m {
                    entries.insert(format!("/paths/{}", super::refs::escape(k)), span(v));
                }
                keys.insert("/paths".into(), m.keys().cloned().collect());
            }
        }
        if let Some(components) = top.get("components") {
            if let Ok(m) = serde_json::from_str::<BTreeMap<String, &RawValue>>(components.get()) {
                keys.insert("/components".into(), m.keys().cloned().collect());
                for (section, v) in &m {
                    let at = format!("/components/{}", super::refs::escape(section));
                    entries.insert(at.clone(), span(v));
                    if let Ok(m) = serde_json::from_str::<BTreeMap<String, &RawValue>>(v.get()) {
                        for (k, v) in &m {
                            entries.insert(format!("{at}/{}", super::refs::escape(k)), span(v));
                        }
                        keys.insert(at, m.keys().cloned().collect());
                    }
                }
            }
        }
        drop(top);
        Ok(Indexed {
            text,
            entries,
            keys,
            kept: Mutex::default(),
            last: Mutex::default(),
        })
    }

    /// The deepest indexed entry that `pointer` lies in, and the rest of the pointer.
    fn entry_of<'p>(&self, pointer: &'p str) -> Option<(&'p str, &'p str)> {
        let mut ends: Vec<usize> = pointer
            .match_indices('/')
            .map(|(i, _)| i)
            .skip(1)
            .take(3)
            .collect();
        ends.push(pointer.len());
        ends.into_iter()
            .rev()
            .filter(|&e| e <= pointer.len())
            .find(|&e| self.entries.contains_key(&pointer[..e]))
            .map(|e| (&pointer[..e], &pointer[e..]))
    }

    fn at(&self, pointer: &str) -> Option<Node> {
        if pointer.is_empty() {
            // The whole document: parsed whole (a `$ref` to a JSON file's root).
            let v: Value = serde_json::from_str(&self.text).ok()?;
            return Some(Node {
                entry: Arc::new(v),
                sub: String::new(),
            });
        }
        let (key, sub) = self.entry_of(pointer)?;
        if !sub.is_empty() && self.keys.contains_key(key) {
            // Below an object whose members are indexed: a member that is not in the
            // index is not there (and the whole object is not parsed to find that out).
            return None;
        }
        let entry = self.parsed(key)?;
        entry.pointer(sub)?;
        Some(Node {
            entry,
            sub: sub.to_string(),
        })
    }

    fn parsed(&self, key: &str) -> Option<Arc<Value>> {
        let keep = !key.starts_with("/paths")
            && !key.starts_with("/components/schemas")
            && !key.starts_with("/components/examples")
            && key != "/components";
        if keep {
            if let Some(v) = lock(&self.kept).get(key) {
                return Some(v.clone());
            }
        } else if let Some((k, v)) = lock(&self.last).as_ref() {
            if k == key {
                return Some(v.clone());
            }
        }
        let range = self.entries.get(key)?.clone();
        let v: Arc<Value> = Arc::new(serde_json::from_str(&self.text[range]).ok()?);
        if keep {
            lock(&self.kept).insert(key.to_string(), v.clone());
        } else {
            *lock(&self.last) = Some((key.to_string(), v.clone()));
        }
        Some(v)
    }
}

/// The OpenAPI versions read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V30,
    V31,
}

/// Reads and parses `file`: JSON when it ends in `.json`, YAML otherwise. Errors are
/// `shown:line:col: why`.
pub fn read(file: &Path, shown: &str) -> Result<Doc, String> {
    let meta = std::fs::metadata(file).map_err(|e| format!("{shown}: cannot read: {e}"))?;
    if meta.len() > MAX_FILE_BYTES {
        return Err(format!(
            "{shown}: {} bytes; the most a spec file may have is {MAX_FILE_BYTES}",
            meta.len()
        ));
    }
    let bytes = std::fs::read(file).map_err(|e| format!("{shown}: cannot read: {e}"))?;
    let sha256: [u8; 32] = Sha256::digest(&bytes).into();
    let json = file
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("json"));
    let body = if json {
        let text = String::from_utf8(bytes).map_err(|e| format!("{shown}: not UTF-8 text: {e}"))?;
        Body::Indexed(Box::new(Indexed::new(text).map_err(|e| {
            format!(
                "{shown}:{}:{}: not valid JSON: {}",
                e.line(),
                e.column(),
                strip_position(&e.to_string())
            )
        })?))
    } else {
        let text =
            std::str::from_utf8(&bytes).map_err(|e| format!("{shown}: not UTF-8 text: {e}"))?;
        let y: serde_yaml::Value = serde_yaml::from_str(text).map_err(|e| {
            let (line, col) = e
                .location()
                .map(|l| (l.line(), l.column()))
                .unwrap_or((1, 1));
            format!(
                "{shown}:{line}:{col}: not valid YAML: {}",
                strip_position(&e.to_string())
            )
        })?;
        Body::Tree(Arc::new(from_yaml(y)))
    };
    Ok(Doc {
        file: file.to_path_buf(),
        shown: shown.to_string(),
        sha256,
        body,
    })
}

fn strip_position(msg: &str) -> &str {
    match msg.rfind(" at line ") {
        Some(i) => &msg[..i],
        None => msg,
    }
}

/// A YAML value as JSON: mapping keys that are numbers or booleans (`200:` under
/// `responses`) become their text; tags are dropped.
fn from_yaml(y: serde_yaml::Value) -> Value {
    match y {
        serde_yaml::Value::Null => Value::Null,
        serde_yaml::Value::Bool(b) => Value::Bool(b),
        serde_yaml::Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                Value::from(i)
            } else if let Some(u) = n.as_u64() {
                Value::from(u)
            } else {
                n.as_f64()
                    .and_then(serde_json::Number::from_f64)
                    .map_or(Value::Null, Value::Number)
            }
        }
        serde_yaml::Value::String(s) => Value::String(s),
        serde_yaml::Value::Sequence(seq) => Value::Array(seq.into_iter().map(from_yaml).collect()),
        serde_yaml::Value::Mapping(m) => Value::Object(
            m.into_iter()
                .map(|(k, v)| (key_text(k), from_yaml(v)))
                .collect(),
        ),
        serde_yaml::Value::Tagged(t) => from_yaml(t.value),
    }
}

fn key_text(k: serde_yaml::Value) -> String {
    match k {
        serde_yaml::Value::String(s) => s,
        serde_yaml::Value::Bool(b) => b.to_string(),
        serde_yaml::Value::Number(n) => n.to_string(),
        serde_yaml::Value::Null => "null".into(),
        other => serde_yaml::to_string(&other)
            .unwrap_or_default()
            .trim()
            .to_string(),
    }
}

/// The version a root document declares: `openapi: 3.0.x` or `3.1.x`; Swagger 2.0 and
/// anything else are refused.
pub fn version(doc: &Doc) -> Result<(Version, String), String> {
    if let Body::Tree(root) = &doc.body {
        if !root.is_object() {
            return Err(format!("{}: the document is not an object", doc.shown));
        }
    }
    if doc.at("/swagger").is_some() {
        return Err(format!(
            "{}: Swagger 2.0 is not supported; convert it to OpenAPI 3.0 or 3.1",
            doc.shown
        ));
    }
    let node = doc.at("/openapi");
    let v = node
        .as_ref()
        .and_then(|n| n.value().as_str())
        .ok_or_else(|| format!("{}: no `openapi:` version field", doc.shown))?;
    let parsed = if v == "3.0" || v.starts_with("3.0.") {
        Version::V30
    } else if v == "3.1" || v.starts_with("3.1.") {
        Version::V31
    } else {
        return Err(format!(
            "{}: OpenAPI {v} is not supported (3.0.x and 3.1.x are)",
            doc.shown
        ));
    };
    Ok((parsed, v.to_string()))
}

/// Where each key path (`["paths", "/pets", "get"]`) stands in `file`, as `line:col`
/// (`None` when the file cannot be read again or the key is not found). Reads and
/// scans the file again: only messages and `check` ask, never the request path.
pub fn locate(file: &Path, keys: &[Vec<&str>]) -> Vec<Option<(usize, usize)>> {
    let Ok(text) = std::fs::read_to_string(file) else {
        return vec![None; keys.len()];
    };
    if file
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("json"))
    {
        return locate_json(&text, keys);
    }
    let loc = crate::config::locate::Locator::new(&text);
    keys.iter()
        .map(|k| {
            let joined = k.join(".");
            loc.find_exact(&joined)
        })
        .collect()
}

/// `locate` for JSON text: one pass over the bytes, keeping only the key path it is in
/// (the YAML locator would map every key of a 13 MB document). Positions are those of
/// the key's opening quote, 1-based.
fn locate_json(text: &str, keys: &[Vec<&str>]) -> Vec<Option<(usize, usize)>> {
    let mut out = vec![None; keys.len()];
    let depth_max = keys.iter().map(Vec::len).max().unwrap_or(0);
    // One frame per open container: for an object, the key being read (`None` until
    // its key string) and whether the next string is a key.
    let mut stack: Vec<(bool, Option<String>, bool)> = Vec::new();
    let b = text.as_bytes();
    let (mut line, mut line_start) = (1usize, 0usize);
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'\n' => {
                line += 1;
                line_start = i + 1;
            }
            b'{' => stack.push((true, None, true)),
            b'[' => stack.push((false, None, false)),
            b'}' | b']' => {
                stack.pop();
            }
            b',' => {
                if let Some((true, key, expect)) = stack.last_mut() {
                    *key = None;
                    *expect = true;
                }
            }
            b'"' => {
                let start = i;
                i += 1;
                let mut escaped = false;
                while i < b.len() && b[i] != b'"' {
                    if b[i] == b'\\' {
                        escaped = true;
                        i += 1;
                    }
                    i += 1;
                }
                let is_key = matches!(stack.last(), Some((true, _, true)));
                if is_key && stack.len() <= depth_max {
                    let raw = &text[start..(i + 1).min(text.len())];
                    let key: String = if escaped {
                        serde_json::from_str(raw).unwrap_or_default()
                    } else {
                        raw.trim_matches('"').to_string()
                    };
                    let depth = stack.len();
                    for (k, want) in keys.iter().enumerate() {
                        if out[k].is_none()
                            && want.len() == depth
                            && want[depth - 1] == key
                            && stack[..depth - 1]
                                .iter()
                                .zip(want.iter())
                                .all(|(f, w)| f.1.as_deref() == Some(*w))
                        {
                            let col = text[line_start..start].chars().count() + 1;
                            out[k] = Some((line, col));
                        }
                    }
                    if let Some(top) = stack.last_mut() {
                        top.1 = Some(key);
                        top.2 = false;
                    }
                } else if is_key {
                    if let Some(top) = stack.last_mut() {
                        top.2 = false;
                    }
                }
            }
            _ => {}
        }
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_with_numeric_keys_reads_as_json_with_string_keys() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("s.yaml");
        std::fs::write(
            &f,
            "openapi: 3.0.3\npaths:\n  /a:\n    get:\n      responses:\n        200:\n          description: ok\n",
        )
        .unwrap();
        let d = read(&f, "s.yaml").unwrap();
        assert!(d
            .at("/paths/~1a/get/responses/200")
            .unwrap()
            .value()
            .is_object());
        assert_eq!(version(&d).unwrap().0, Version::V30);
        assert_eq!(
            locate(&f, &[vec!["paths", "/a", "get"]]),
            vec![Some((4, 5))]
        );
    }

    #[test]
    fn json_is_indexed_and_parsed_entry_by_entry() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("s.json");
        std::fs::write(
            &f,
            r#"{"openapi": "3.1.0", "info": {"title": "t"}, "paths": {"/a/{id}": {"get": {"operationId": "x"}}},
               "components": {"schemas": {"A~B": {"type": "string"}, "P": {"properties": {"q": {"type": "integer"}}}}}}"#,
        )
        .unwrap();
        let d = read(&f, "s.json").unwrap();
        assert_eq!(version(&d).unwrap().0, Version::V31);
        assert_eq!(d.at("/info/title").unwrap().value(), "t");
        assert_eq!(
            d.at("/paths/~1a~1{id}/get/operationId").unwrap().value(),
            "x"
        );
        assert_eq!(
            d.at("/components/schemas/A~0B").unwrap().value()["type"],
            "string"
        );
        assert_eq!(
            d.at("/components/schemas/P/properties/q/type")
                .unwrap()
                .value(),
            "integer"
        );
        assert!(d.at("/components/schemas/Nope").is_none());
        assert!(d.at("/paths/~1a~1{id}/put").is_none());
        assert_eq!(d.keys("/paths"), vec!["/a/{id}".to_string()]);
        assert_eq!(
            d.keys("/components/schemas"),
            vec!["A~B".to_string(), "P".to_string()]
        );
        assert_eq!(d.at("").unwrap().value()["openapi"], "3.1.0");
    }

    #[test]
    fn json_keys_are_located_in_one_pass() {
        let text = "{\n  \"paths\": {\n    \"/a\": { \"get\": {}, \"post\": {\"x\": \"}\\\"{\"} },\n    \"/b/{id}\": {\n      \"delete\": {}\n    }\n  },\n  \"get\": 1\n}";
        let keys = vec![
            vec!["paths", "/a", "post"],
            vec!["paths", "/b/{id}", "delete"],
            vec!["paths", "/a", "put"],
            vec!["paths"],
        ];
        assert_eq!(
            locate_json(text, &keys),
            vec![Some((3, 24)), Some((5, 7)), None, Some((2, 3))]
        );
    }

    #[test]
    fn bad_documents_name_their_place() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("s.json");
        std::fs::write(&f, "{\n  \"openapi\": \"3.0.0\",\n  \"paths\": {,}\n}").unwrap();
        let e = read(&f, "s.json").err().unwrap();
        assert!(e.starts_with("s.json:3:"), "{e}");
        std::fs::write(&f, "{\"swagger\": \"2.0\"}").unwrap();
        let e = version(&read(&f, "s.json").unwrap()).err().unwrap();
        assert!(e.contains("Swagger 2.0"), "{e}");
        std::fs::write(&f, "{\"openapi\": \"4.0.0\"}").unwrap();
        let e = version(&read(&f, "s.json").unwrap()).err().unwrap();
        assert!(e.contains("4.0.0"), "{e}");
    }
}

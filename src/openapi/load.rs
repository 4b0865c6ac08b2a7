//! Reading one OpenAPI document (or a file it references): YAML or JSON into a
//! `serde_json::Value`, its SHA-256 (a spec change is a config change), the OpenAPI
//! version it declares, and — only when a message needs one — the `line:col` of a key.

use serde_json::Value;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// The largest spec file read (GitHub's whole REST description is 13 MB).
pub const MAX_FILE_BYTES: u64 = 64 << 20;

/// A parsed document.
pub struct Doc {
    /// The file as opened (absolute or relative to the working directory).
    pub file: PathBuf,
    /// The file as messages name it (as written in routes.yaml or the `$ref`).
    pub shown: String,
    pub root: Value,
    pub sha256: [u8; 32],
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
    let root = if json {
        serde_json::from_slice::<Value>(&bytes).map_err(|e| {
            format!(
                "{shown}:{}:{}: not valid JSON: {}",
                e.line(),
                e.column(),
                strip_position(&e.to_string())
            )
        })?
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
        from_yaml(y)
    };
    Ok(Doc {
        file: file.to_path_buf(),
        shown: shown.to_string(),
        root,
        sha256,
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
    let root = doc
        .root
        .as_object()
        .ok_or_else(|| format!("{}: the document is not an object", doc.shown))?;
    if root.contains_key("swagger") {
        return Err(format!(
            "{}: Swagger 2.0 is not supported; convert it to OpenAPI 3.0 or 3.1",
            doc.shown
        ));
    }
    let v = root
        .get("openapi")
        .and_then(Value::as_str)
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
    let loc = crate::config::locate::Locator::new(&text);
    keys.iter()
        .map(|k| {
            let joined = k.join(".");
            loc.find_exact(&joined)
        })
        .collect()
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
        assert!(d.root["paths"]["/a"]["get"]["responses"]["200"].is_object());
        assert_eq!(version(&d).unwrap().0, Version::V30);
        assert_eq!(
            locate(&f, &[vec!["paths", "/a", "get"]]),
            vec![Some((4, 5))]
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

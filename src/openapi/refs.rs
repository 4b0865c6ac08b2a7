//! `$ref` resolution across the documents of one spec: local JSON pointers
//! (`#/components/schemas/Pet`), other files relative to the referring file and kept
//! inside the root spec's directory (`common.yaml#/Error`); remote references
//! (`https://…`, `//host/…`, any `scheme:`) and `#anchor`s are refused.

use super::load::{self, Doc, Node};
use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The most documents one spec may pull in through `$ref`s.
const MAX_DOCS: usize = 1000;
/// The longest chain of `$ref`s to `$ref`s followed.
const MAX_CHAIN: usize = 32;

/// The documents of one spec: the root first, then each referenced file once.
pub struct Docs {
    /// Canonical directory of the root document; referenced files must be under it.
    dir: PathBuf,
    /// How messages name that directory.
    shown_dir: PathBuf,
    docs: Vec<Arc<Doc>>,
    by_file: HashMap<PathBuf, usize>,
}

/// A resolved reference: a document and a JSON pointer into it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Place {
    pub doc: usize,
    pub pointer: String,
}

/// A value found through a reference, with the document it is in (a reference inside
/// it resolves against that document).
pub struct Found {
    pub doc: Arc<Doc>,
    pub place: Place,
    node: Option<Node>,
}

impl Found {
    pub fn value(&self) -> &Value {
        self.node.as_ref().map_or(&Value::Null, Node::value)
    }
}

impl Docs {
    /// Opens the root document `file` (shown as `shown`).
    pub fn open(file: &Path, shown: &str) -> Result<Docs, String> {
        let doc = load::read(file, shown)?;
        let canon = std::fs::canonicalize(file).map_err(|e| format!("{shown}: {e}"))?;
        let dir = canon.parent().map(Path::to_path_buf).unwrap_or_default();
        let shown_dir = Path::new(shown)
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let mut by_file = HashMap::new();
        by_file.insert(canon, 0);
        Ok(Docs {
            dir,
            shown_dir,
            docs: vec![Arc::new(doc)],
            by_file,
        })
    }

    pub fn doc(&self, i: usize) -> &Arc<Doc> {
        &self.docs[i]
    }

    /// Every document read, the root first: (shown name, SHA-256).
    pub fn files(&self) -> impl Iterator<Item = (&str, &[u8; 32])> {
        self.docs.iter().map(|d| (d.shown.as_str(), &d.sha256))
    }

    /// Files read, as opened (to watch them for changes).
    pub fn paths(&self) -> impl Iterator<Item = &Path> {
        self.docs.iter().map(|d| d.file.as_path())
    }

    /// Resolves the reference `r` written in document `from`.
    pub fn resolve(&mut self, from: usize, r: &str) -> Result<Place, String> {
        let (file_part, fragment) = match r.split_once('#') {
            Some((f, frag)) => (f, frag),
            None => (r, ""),
        };
        if is_remote(file_part) {
            return Err(format!(
                "remote $ref `{r}` is not supported (only references into this spec's own files)"
            ));
        }
        let doc = if file_part.is_empty() {
            from
        } else {
            self.load_relative(from, file_part, r)?
        };
        let pointer = if fragment.is_empty() {
            String::new()
        } else if fragment.starts_with('/') {
            crate::decode::percent_decode(fragment.as_bytes())
        } else {
            return Err(format!(
                "$ref `{r}`: anchors (`#name`) are not supported; use a JSON pointer (`#/components/...`)"
            ));
        };
        if !self.docs[doc].exists(&pointer) {
            return Err(format!(
                "$ref `{r}` does not resolve: `{}` has nothing at `{pointer}`",
                self.docs[doc].shown
            ));
        }
        Ok(Place { doc, pointer })
    }

    fn load_relative(&mut self, from: usize, file_part: &str, r: &str) -> Result<usize, String> {
        let rel = crate::decode::percent_decode(file_part.as_bytes());
        let base = self.docs[from]
            .file
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let path = base.join(&rel);
        let canon = std::fs::canonicalize(&path)
            .map_err(|e| format!("$ref `{r}`: cannot read `{}`: {e}", path.display()))?;
        if let Some(&i) = self.by_file.get(&canon) {
            return Ok(i);
        }
        let inside = canon
            .strip_prefix(&self.dir)
            .map_err(|_| {
                format!("$ref `{r}`: `{rel}` is outside the spec's directory; referenced files must be under it")
            })?
            .to_path_buf();
        if self.docs.len() >= MAX_DOCS {
            return Err(format!("$ref `{r}`: more than {MAX_DOCS} files referenced"));
        }
        let shown = self.shown_dir.join(inside).display().to_string();
        let doc = load::read(&canon, &shown)?;
        let i = self.docs.len();
        self.docs.push(Arc::new(doc));
        self.by_file.insert(canon, i);
        Ok(i)
    }

    /// The value at `place`.
    pub fn found(&self, place: Place) -> Found {
        let doc = self.docs[place.doc].clone();
        let node = doc.at(&place.pointer);
        Found { doc, place, node }
    }

    /// Follows `v` (found in document `doc` at `pointer`) through `$ref`s until a value
    /// that is not a reference: how parameters, request bodies and responses are read.
    pub fn deref(&mut self, doc: usize, pointer: String) -> Result<Found, String> {
        let mut place = Place { doc, pointer };
        let mut seen: Vec<Place> = Vec::new();
        loop {
            let found = self.found(place.clone());
            let Some(r) = found
                .value()
                .get("$ref")
                .and_then(Value::as_str)
                .map(str::to_string)
            else {
                return Ok(found);
            };
            if seen.contains(&place) || seen.len() >= MAX_CHAIN {
                return Err(format!("$ref `{r}` is part of a reference loop"));
            }
            let next = self.resolve(place.doc, &r)?;
            seen.push(std::mem::replace(&mut place, next));
        }
    }
}

/// `https://…`, `//host/…`, `file:…`, any `scheme:`.
fn is_remote(file_part: &str) -> bool {
    if file_part.starts_with("//") {
        return true;
    }
    match file_part.find(':') {
        Some(i) => {
            let scheme = &file_part[..i];
            !scheme.is_empty()
                && scheme.starts_with(|c: char| c.is_ascii_alphabetic())
                && scheme
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
        }
        None => false,
    }
}

/// `~` and `/` escaped for a JSON pointer segment.
pub fn escape(segment: &str) -> String {
    segment.replace('~', "~0").replace('/', "~1")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn local_external_and_remote_references() {
        let dir = tempfile::tempdir().unwrap();
        let root = write(
            dir.path(),
            "spec/api.yaml",
            "openapi: 3.1.0\ncomponents:\n  schemas:\n    A: { $ref: 'common/err.yaml#/Err' }\n    B: { $ref: '#/components/schemas/A' }\n",
        );
        write(
            dir.path(),
            "spec/common/err.yaml",
            "Err: { type: string }\n",
        );
        write(dir.path(), "secret.yaml", "S: { type: string }\n");
        let mut docs = Docs::open(&root, "spec/api.yaml").unwrap();
        let p = docs.resolve(0, "#/components/schemas/A").unwrap();
        assert_eq!(p.pointer, "/components/schemas/A");
        // A chain through another file ends at a value that is not a reference.
        let f = docs.deref(0, "/components/schemas/B".into()).unwrap();
        assert_eq!(f.value(), &serde_json::json!({"type": "string"}));
        assert_eq!(f.doc.shown, "spec/common/err.yaml");
        assert_eq!(docs.files().count(), 2);
        for (r, why) in [
            ("https://example.com/x.yaml#/A", "remote $ref"),
            ("//example.com/x.yaml", "remote $ref"),
            ("file:///etc/passwd", "remote $ref"),
            ("../secret.yaml#/S", "outside the spec's directory"),
            ("missing.yaml#/A", "cannot read"),
            ("#/components/schemas/Nope", "does not resolve"),
            ("#Pet", "anchors"),
        ] {
            let e = docs.resolve(0, r).unwrap_err();
            assert!(e.contains(why), "{r}: {e}");
        }
    }

    #[test]
    fn reference_loops_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let root = write(
            dir.path(),
            "api.yaml",
            "openapi: 3.0.0\ncomponents:\n  parameters:\n    A: { $ref: '#/components/parameters/B' }\n    B: { $ref: '#/components/parameters/A' }\n",
        );
        let mut docs = Docs::open(&root, "api.yaml").unwrap();
        let e = docs
            .deref(0, "/components/parameters/A".into())
            .err()
            .unwrap();
        assert!(e.contains("loop"), "{e}");
    }
}

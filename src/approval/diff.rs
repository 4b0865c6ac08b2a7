//! The change a parked write makes, field by field, against the resource as it was read
//! at park time (`preview: current`): PATCH as a JSON merge patch (RFC 7396) applied to
//! the current document, PUT as a replacement, DELETE as "will be deleted".

use serde::Serialize;
use serde_json::Value;
use std::collections::BTreeMap;

/// One field that changes: its path (`a.b[2].c`), and its value now and after
/// (`None`: absent).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Change {
    pub field: String,
    pub before: Option<Value>,
    pub after: Option<Value>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Diff {
    Fields(Vec<Change>),
    /// A DELETE: the whole document goes.
    Deleted,
    /// Not shown as fields (a body or document that is not JSON, an empty PATCH body):
    /// why, in a fixed sentence.
    Unavailable(&'static str),
}

/// The leaves of a document by path; arrays are compared whole below 100 elements so a
/// reordered list reads as one change, not one per index.
fn leaves(v: &Value, at: String, out: &mut BTreeMap<String, Value>) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (k, x) in m {
                let p = if at.is_empty() {
                    k.clone()
                } else {
                    format!("{at}.{k}")
                };
                leaves(x, p, out);
            }
        }
        Value::Array(a) if a.len() > 100 => {
            for (i, x) in a.iter().enumerate() {
                leaves(x, format!("{at}[{i}]"), out);
            }
        }
        _ => {
            out.insert(
                if at.is_empty() {
                    "(document)".into()
                } else {
                    at
                },
                v.clone(),
            );
        }
    }
}

/// Field changes from `before` to `after`, in path order.
pub fn fields(before: &Value, after: &Value) -> Vec<Change> {
    let (mut b, mut a) = (BTreeMap::new(), BTreeMap::new());
    leaves(before, String::new(), &mut b);
    leaves(after, String::new(), &mut a);
    let mut keys: Vec<&String> = b.keys().chain(a.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter(|k| b.get(*k) != a.get(*k))
        .map(|k| Change {
            field: k.clone(),
            before: b.get(k).cloned(),
            after: a.get(k).cloned(),
        })
        .collect()
}

/// What `method` with `body` does to `current`.
pub fn diff(method: &str, current: &[u8], body: &[u8]) -> Diff {
    if method == "DELETE" {
        return Diff::Deleted;
    }
    let Ok(now) = serde_json::from_slice::<Value>(current) else {
        return Diff::Unavailable("the current resource is not JSON");
    };
    let Ok(sent) = serde_json::from_slice::<Value>(body) else {
        return Diff::Unavailable("the request body is not JSON");
    };
    match method {
        "PATCH" => {
            let mut after = now.clone();
            json_patch::merge(&mut after, &sent);
            Diff::Fields(fields(&now, &after))
        }
        "PUT" => Diff::Fields(fields(&now, &sent)),
        _ => Diff::Unavailable("only PUT, PATCH and DELETE are previewed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn changes(d: Diff) -> Vec<(String, Option<Value>, Option<Value>)> {
        match d {
            Diff::Fields(c) => c
                .into_iter()
                .map(|c| (c.field, c.before, c.after))
                .collect(),
            o => panic!("{o:?}"),
        }
    }

    #[test]
    fn patch_is_a_merge_patch_on_the_current_document() {
        let now = br#"{"title":"old","status":"open","meta":{"a":1,"b":2},"tags":["x"]}"#;
        let d = diff(
            "PATCH",
            now,
            br#"{"status":"closed","meta":{"b":null,"c":3}}"#,
        );
        assert_eq!(
            changes(d),
            vec![
                ("meta.b".into(), Some(json!(2)), None),
                ("meta.c".into(), None, Some(json!(3))),
                ("status".into(), Some(json!("open")), Some(json!("closed"))),
            ]
        );
    }

    #[test]
    fn put_replaces_and_delete_deletes() {
        let now = br#"{"title":"old","status":"open"}"#;
        assert_eq!(
            changes(diff("PUT", now, br#"{"title":"new"}"#)),
            vec![
                ("status".into(), Some(json!("open")), None),
                ("title".into(), Some(json!("old")), Some(json!("new"))),
            ]
        );
        assert_eq!(diff("DELETE", now, b""), Diff::Deleted);
        assert!(matches!(
            diff("PATCH", b"<html>", b"{}"),
            Diff::Unavailable(_)
        ));
        assert!(matches!(
            diff("PATCH", now, b"not json"),
            Diff::Unavailable(_)
        ));
        assert_eq!(changes(diff("PATCH", now, b"{}")), vec![]);
    }
}

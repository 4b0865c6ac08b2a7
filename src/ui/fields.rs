//! Agent JSON as an operator reads it: pretty-printed, and a flat object as a table of
//! fields, long strings folded, every piece escaped by the template with hidden
//! characters spelled out (`approval::controls`).

use crate::approval::controls::{any_hidden, visible, Piece};
use serde_json::Value;

/// Strings longer than this are folded behind a `<details>` showing their start.
pub const FOLD_AT: usize = 160;

pub struct Field {
    pub name: Vec<Piece>,
    pub value: Vec<Piece>,
    /// The start of a long value, shown folded (the whole value opens below it).
    pub folded: Option<Vec<Piece>>,
}

/// A JSON value as one line of text (strings unquoted).
pub fn scalar_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        o => o.to_string(),
    }
}

fn fold(s: &str) -> Option<Vec<Piece>> {
    (s.chars().count() > FOLD_AT).then(|| {
        let mut head: String = s.chars().take(FOLD_AT).collect();
        head.push('…');
        visible(&head)
    })
}

/// One name/value row, folding a long value.
pub fn field(name: &str, value: &str) -> Field {
    Field {
        name: visible(name),
        value: visible(value),
        folded: fold(value),
    }
}

/// `text` as pretty JSON (when it is JSON), and its fields when it is an object whose
/// values are all scalars.
pub fn json(text: &str) -> Option<(Vec<Piece>, Option<Vec<Field>>)> {
    let v: Value = serde_json::from_str(text).ok()?;
    let pretty = serde_json::to_string_pretty(&v).ok()?;
    let rows = match &v {
        Value::Object(m)
            if !m.is_empty() && m.values().all(|x| !x.is_object() && !x.is_array()) =>
        {
            Some(m.iter().map(|(k, x)| field(k, &scalar_text(x))).collect())
        }
        _ => None,
    };
    Some((visible(&pretty), rows))
}

/// Whether any field shows a hidden character.
pub fn fields_hidden(rows: &[Field]) -> bool {
    rows.iter()
        .any(|r| any_hidden(&r.name) || any_hidden(&r.value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flat_objects_get_a_field_table_and_long_strings_fold() {
        let long = "x".repeat(300);
        let (pretty, rows) = json(&format!(r#"{{"a":1,"b":"{long}","c":"\u202e"}}"#)).unwrap();
        assert!(pretty
            .iter()
            .map(|p| p.text.as_str())
            .collect::<String>()
            .contains("\n  \"a\": 1"));
        let rows = rows.unwrap();
        assert_eq!(rows.len(), 3);
        assert!(rows[0].folded.is_none() && rows[1].folded.is_some());
        assert!(fields_hidden(&rows));
        assert!(
            json(r#"{"a":{"b":1}}"#).unwrap().1.is_none(),
            "nested: no table"
        );
        assert!(json("not json").is_none());
    }
}

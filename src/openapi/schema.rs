//! OpenAPI schema objects → JSON Schema 2020-12. Every `$ref` to a schema becomes
//! `{"$ref": "#/$defs/<key>"}` with the referenced schema converted once into a shared
//! table (so recursive schemas stay references, never an endless expansion); a tool's
//! schema carries the `$defs` it reaches. 3.0's `nullable` becomes a `"null"` type,
//! its boolean `exclusiveMinimum`/`exclusiveMaximum` the numeric 2020-12 form, and
//! `readOnly` properties are dropped from inputs (`writeOnly` from outputs).
//! OpenAPI-only keywords (`discriminator`, `xml`, `externalDocs`, `example`, `x-*`) are
//! left out.

use super::refs::{Docs, Place};
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::sync::Arc;

/// The deepest nesting of schemas inside one schema that is converted.
const MAX_DEPTH: usize = 64;

/// Which side of the call a schema describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    /// Arguments: `readOnly` properties are dropped.
    Input,
    /// Results: `writeOnly` properties are dropped.
    Output,
}

/// Converted definitions of one spec for one side, shared by every tool of the spec,
/// kept as JSON text (GitHub's take ~6 MB so, several times that as trees).
#[derive(Debug, Default)]
pub struct DefTable {
    keys: Vec<Arc<str>>,
    values: Vec<Box<str>>,
    /// The definitions each definition refers to directly.
    refs: Vec<Vec<u32>>,
    by_key: HashMap<Arc<str>, u32>,
}

impl DefTable {
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The definition `#/$defs/<key>` names.
    pub fn get(&self, reference: &str) -> Option<Value> {
        let key = reference.strip_prefix("#/$defs/")?;
        let i = *self.by_key.get(key)?;
        serde_json::from_str(&self.values[i as usize]).ok()
    }

    /// Every definition reachable from `direct`, sorted.
    fn closure(&self, direct: &[u32]) -> Vec<u32> {
        let mut seen = vec![false; self.keys.len()];
        let mut stack: Vec<u32> = direct.to_vec();
        let mut out = Vec::new();
        while let Some(i) = stack.pop() {
            if std::mem::replace(&mut seen[i as usize], true) {
                continue;
            }
            out.push(i);
            stack.extend(self.refs[i as usize].iter().copied());
        }
        out.sort_unstable();
        out
    }
}

/// A tool's schema: its root (JSON text) plus the definitions it reaches in the shared
/// table. Listings build the self-contained schema on demand ([`Schema::to_value`]).
#[derive(Debug, Clone)]
pub struct Schema {
    root: Box<str>,
    table: Arc<DefTable>,
    defs: Arc<[u32]>,
}

impl Schema {
    /// A schema that needs no definitions.
    pub fn plain(root: Value) -> Schema {
        Schema {
            root: root.to_string().into(),
            table: Arc::default(),
            defs: Arc::from(Vec::new()),
        }
    }

    /// The root, without `$defs`.
    pub fn root(&self) -> Value {
        serde_json::from_str(&self.root).unwrap_or(Value::Null)
    }

    /// The self-contained JSON Schema: the root with the `$defs` it reaches.
    pub fn to_value(&self) -> Value {
        let mut v = self.root();
        if !self.defs.is_empty() {
            if let Value::Object(m) = &mut v {
                let defs: Map<String, Value> = self
                    .defs
                    .iter()
                    .map(|&i| {
                        (
                            self.table.keys[i as usize].to_string(),
                            serde_json::from_str(&self.table.values[i as usize])
                                .unwrap_or(Value::Null),
                        )
                    })
                    .collect();
                m.insert("$defs".into(), Value::Object(defs));
            }
        }
        v
    }

    /// Follows `{"$ref": "#/$defs/…"}` (at most a few times) to the schema it names.
    pub fn resolve(&self, v: &Value) -> Value {
        let mut cur = v.clone();
        for _ in 0..8 {
            match cur
                .get("$ref")
                .and_then(Value::as_str)
                .and_then(|r| self.table.get(r))
            {
                Some(t) => cur = t,
                None => break,
            }
        }
        cur
    }

    /// How many definitions the schema carries.
    pub fn def_count(&self) -> usize {
        self.defs.len()
    }
}

/// A table being filled while a spec is imported.
#[derive(Default)]
struct Building {
    table: DefTable,
    places: Vec<Place>,
    by_place: HashMap<Place, u32>,
    pending: Vec<u32>,
}

/// Converts the schemas of one spec, filling one definition table per side.
pub struct Converter<'d> {
    pub docs: &'d mut Docs,
    v31: bool,
    input: Building,
    output: Building,
    /// What `marked` learned of a referenced schema: readOnly, writeOnly, its own `$ref`.
    facts: HashMap<Place, (bool, bool, Option<String>)>,
}

/// A converted schema before it is tied to a frozen table.
pub struct Converted {
    pub value: Value,
    refs: Vec<u32>,
}

impl Converted {
    /// A schema assembled from converted pieces, with their references.
    pub fn new(value: Value, mut refs: Vec<u32>) -> Converted {
        refs.sort_unstable();
        refs.dedup();
        Converted { value, refs }
    }

    /// The value and the definitions it refers to directly.
    pub fn split(self) -> (Value, Vec<u32>) {
        (self.value, self.refs)
    }

    /// As JSON text, waiting for the frozen table (a spec's worth of trees is big).
    pub fn freeze(self) -> Frozen {
        Frozen {
            text: self.value.to_string().into(),
            refs: self.refs,
        }
    }
}

/// A converted schema as JSON text, before it is tied to a frozen table.
pub struct Frozen {
    text: Box<str>,
    refs: Vec<u32>,
}

impl<'d> Converter<'d> {
    pub fn new(docs: &'d mut Docs, v31: bool) -> Converter<'d> {
        Converter {
            docs,
            v31,
            input: Building::default(),
            output: Building::default(),
            facts: HashMap::new(),
        }
    }

    fn side(&mut self, side: Side) -> &mut Building {
        match side {
            Side::Input => &mut self.input,
            Side::Output => &mut self.output,
        }
    }

    /// Converts the schema `v` written in document `doc`, and every definition it
    /// reaches that was not converted yet.
    pub fn convert(&mut self, doc: usize, v: &Value, side: Side) -> Result<Converted, String> {
        let mut refs = Vec::new();
        let value = self.walk(doc, v, side, 0, &mut refs)?;
        while let Some(i) = self.side(side).pending.pop() {
            let place = self.side(side).places[i as usize].clone();
            let found = self.docs.found(place.clone());
            let mut def_refs = Vec::new();
            let converted = self
                .walk(place.doc, found.value(), side, 0, &mut def_refs)
                .map_err(|e| format!("{}#{}: {e}", found.doc.shown, place.pointer))?;
            let b = self.side(side);
            b.table.values[i as usize] = converted.to_string().into();
            def_refs.sort_unstable();
            def_refs.dedup();
            b.table.refs[i as usize] = def_refs;
        }
        refs.sort_unstable();
        refs.dedup();
        Ok(Converted { value, refs })
    }

    /// Freezes both tables; `tie` then turns converted schemas into [`Schema`]s.
    pub fn finish(self) -> (Arc<DefTable>, Arc<DefTable>) {
        (Arc::new(self.input.table), Arc::new(self.output.table))
    }

    /// The definition a `$ref` names, registered (and queued for conversion) on first sight.
    fn def_for(&mut self, doc: usize, r: &str, side: Side) -> Result<u32, String> {
        let place = self.docs.resolve(doc, r)?;
        let b = self.side(side);
        if let Some(&i) = b.by_place.get(&place) {
            return Ok(i);
        }
        let base = place
            .pointer
            .rsplit('/')
            .next()
            .filter(|s| !s.is_empty())
            .map(|s| s.replace("~1", "/").replace("~0", "~"))
            .unwrap_or_else(|| "root".into());
        let mut key: String = base
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        if b.table.by_key.contains_key(key.as_str()) {
            let mut n = 2;
            while b.table.by_key.contains_key(format!("{key}_{n}").as_str()) {
                n += 1;
            }
            key = format!("{key}_{n}");
        }
        let i = b.table.keys.len() as u32;
        let key: Arc<str> = key.into();
        b.table.by_key.insert(key.clone(), i);
        b.table.keys.push(key);
        b.table.values.push("null".into());
        b.table.refs.push(Vec::new());
        b.places.push(place.clone());
        b.by_place.insert(place, i);
        b.pending.push(i);
        Ok(i)
    }

    fn reference(
        &mut self,
        doc: usize,
        r: &str,
        side: Side,
        refs: &mut Vec<u32>,
    ) -> Result<Value, String> {
        let i = self.def_for(doc, r, side)?;
        refs.push(i);
        let key = self.side(side).table.keys[i as usize].clone();
        Ok(json!({ "$ref": format!("#/$defs/{key}") }))
    }

    /// Whether the schema `v` (through `$ref`s and a one-item `allOf`) is marked `flag`.
    fn marked(&mut self, doc: usize, v: &Value, flag: &str) -> bool {
        if flag_on(v, flag) {
            return true;
        }
        let mut next = ref_of(v);
        let mut cur_doc = doc;
        for _ in 0..8 {
            let Some(r) = next else {
                return false;
            };
            let Ok(place) = self.docs.resolve(cur_doc, &r) else {
                return false;
            };
            cur_doc = place.doc;
            let facts = match self.facts.get(&place) {
                Some(f) => f.clone(),
                None => {
                    let found = self.docs.found(place.clone());
                    let t = found.value();
                    let f = (flag_on(t, "readOnly"), flag_on(t, "writeOnly"), ref_of(t));
                    self.facts.insert(place, f.clone());
                    f
                }
            };
            if (flag == "readOnly" && facts.0) || (flag == "writeOnly" && facts.1) {
                return true;
            }
            next = facts.2;
        }
        false
    }

    fn walk(
        &mut self,
        doc: usize,
        v: &Value,
        side: Side,
        depth: usize,
        refs: &mut Vec<u32>,
    ) -> Result<Value, String> {
        if depth > MAX_DEPTH {
            return Err(format!(
                "a schema is nested more than {MAX_DEPTH} levels deep"
            ));
        }
        let m = match v {
            Value::Bool(_) => return Ok(v.clone()),
            Value::Object(m) => m,
            other => return Err(format!("`{}` is not a schema", short(other))),
        };
        if let Some(r) = m.get("$ref") {
            let r = r.as_str().ok_or("`$ref` must be a string")?;
            let reference = self.reference(doc, r, side, refs)?;
            // 3.0 ignores everything beside a `$ref`; 3.1 (JSON Schema) applies it too.
            let siblings = m.keys().any(|k| k != "$ref" && !dropped(k));
            if !self.v31 || !siblings {
                return Ok(reference);
            }
        }
        let drop_flag = match side {
            Side::Input => "readOnly",
            Side::Output => "writeOnly",
        };
        let mut out = Map::new();
        let mut removed: Vec<String> = Vec::new();
        for (k, val) in m {
            match k.as_str() {
                "$ref" => {
                    let r = val.as_str().unwrap_or_default();
                    let reference = self.reference(doc, r, side, refs)?;
                    out.insert(k.clone(), reference["$ref"].clone());
                }
                "properties" | "patternProperties" | "dependentSchemas" => {
                    let Some(props) = val.as_object() else {
                        return Err(format!("`{k}` must be an object"));
                    };
                    let mut conv = Map::new();
                    for (name, sub) in props {
                        if k == "properties" && self.marked(doc, sub, drop_flag) {
                            removed.push(name.clone());
                            continue;
                        }
                        conv.insert(name.clone(), self.walk(doc, sub, side, depth + 1, refs)?);
                    }
                    out.insert(k.clone(), Value::Object(conv));
                }
                "items"
                | "additionalProperties"
                | "not"
                | "contains"
                | "propertyNames"
                | "if"
                | "then"
                | "else"
                | "unevaluatedItems"
                | "unevaluatedProperties"
                | "contentSchema"
                | "additionalItems" => {
                    let conv = match val {
                        Value::Object(_) | Value::Bool(_) => {
                            self.walk(doc, val, side, depth + 1, refs)?
                        }
                        Value::Array(items) if k == "items" => {
                            // Draft-4 tuple form: the 2020-12 spelling is `prefixItems`.
                            let conv = items
                                .iter()
                                .map(|s| self.walk(doc, s, side, depth + 1, refs))
                                .collect::<Result<Vec<_>, _>>()?;
                            out.insert("prefixItems".into(), Value::Array(conv));
                            continue;
                        }
                        other => {
                            return Err(format!("`{k}` must be a schema, not `{}`", short(other)))
                        }
                    };
                    out.insert(k.clone(), conv);
                }
                "allOf" | "anyOf" | "oneOf" | "prefixItems" => {
                    let Some(items) = val.as_array() else {
                        return Err(format!("`{k}` must be a list of schemas"));
                    };
                    let conv = items
                        .iter()
                        .map(|s| self.walk(doc, s, side, depth + 1, refs))
                        .collect::<Result<Vec<_>, _>>()?;
                    out.insert(k.clone(), Value::Array(conv));
                }
                "exclusiveMinimum" | "exclusiveMaximum" if val.is_boolean() => {
                    // 3.0: a flag on `minimum`/`maximum`; 2020-12: the bound itself.
                    let bound = if k == "exclusiveMinimum" {
                        "minimum"
                    } else {
                        "maximum"
                    };
                    if val == &Value::Bool(true) {
                        if let Some(b) = m.get(bound) {
                            out.insert(k.clone(), b.clone());
                        }
                    }
                }
                k if dropped(k) => {}
                _ => {
                    out.insert(k.clone(), val.clone());
                }
            }
        }
        if !self.v31 {
            for (flag, bound) in [
                ("exclusiveMinimum", "minimum"),
                ("exclusiveMaximum", "maximum"),
            ] {
                if m.get(flag) == Some(&Value::Bool(true)) && m.contains_key(bound) {
                    out.remove(bound);
                }
            }
        }
        if !removed.is_empty() {
            if let Some(Value::Array(req)) = out.get_mut("required") {
                req.retain(|r| !r.as_str().is_some_and(|r| removed.iter().any(|x| x == r)));
                if req.is_empty() {
                    out.remove("required");
                }
            }
        }
        if !self.v31 && m.get("nullable") == Some(&Value::Bool(true)) {
            return Ok(nullable(out));
        }
        Ok(Value::Object(out))
    }
}

/// Ties a converted schema to the frozen table of its side.
pub fn tie(c: Frozen, table: &Arc<DefTable>) -> Schema {
    let defs = table.closure(&c.refs);
    Schema {
        root: c.text,
        table: table.clone(),
        defs: Arc::from(defs),
    }
}

/// `flag: true` on the schema or on the one schema of its `allOf`.
fn flag_on(v: &Value, flag: &str) -> bool {
    let on = |v: &Value| v.get(flag) == Some(&Value::Bool(true));
    on(v)
        || v.get("allOf")
            .and_then(Value::as_array)
            .is_some_and(|a| a.len() == 1 && on(&a[0]))
}

/// The `$ref` of the schema or of the one schema of its `allOf`.
fn ref_of(v: &Value) -> Option<String> {
    let r = |v: &Value| v.get("$ref").and_then(Value::as_str).map(str::to_string);
    r(v).or_else(|| match v.get("allOf").and_then(Value::as_array) {
        Some(a) if a.len() == 1 => r(&a[0]),
        _ => None,
    })
}

/// Keywords that are OpenAPI's own, examples, extensions, or places this importer
/// does not resolve references into.
fn dropped(k: &str) -> bool {
    k.starts_with("x-")
        || matches!(
            k,
            "nullable"
                | "discriminator"
                | "xml"
                | "externalDocs"
                | "example"
                | "examples"
                | "$schema"
                | "$id"
                | "$anchor"
                | "$dynamicAnchor"
                | "$comment"
                | "$defs"
                | "definitions"
        )
}

/// 3.0 `nullable: true`: `null` joins the types (and the enum); without a `type` the
/// schema becomes `anyOf: [schema, {type: null}]`.
fn nullable(mut out: Map<String, Value>) -> Value {
    let with_null = |t: &mut Value| match t {
        Value::String(s) if s != "null" => *t = json!([s.clone(), "null"]),
        Value::Array(a) if !a.iter().any(|x| x == "null") => a.push("null".into()),
        _ => {}
    };
    match out.get_mut("type") {
        Some(t) => {
            with_null(t);
            if let Some(Value::Array(e)) = out.get_mut("enum") {
                if !e.contains(&Value::Null) {
                    e.push(Value::Null);
                }
            }
            Value::Object(out)
        }
        None => json!({ "anyOf": [Value::Object(out), { "type": "null" }] }),
    }
}

fn short(v: &Value) -> String {
    let mut s = v.to_string();
    if s.len() > 40 {
        let mut cut = 40;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push('…');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn spec(dir: &Path, text: &str) -> Docs {
        let f = dir.join("api.yaml");
        std::fs::write(&f, text).unwrap();
        Docs::open(&f, "api.yaml").unwrap()
    }

    fn convert(text: &str, pointer: &str, side: Side) -> Value {
        let dir = tempfile::tempdir().unwrap();
        let mut docs = spec(dir.path(), text);
        let v31 = text.contains("openapi: 3.1");
        let v = docs
            .found(crate::openapi::refs::Place {
                doc: 0,
                pointer: pointer.into(),
            })
            .value()
            .clone();
        let mut c = Converter::new(&mut docs, v31);
        let conv = c.convert(0, &v, side).unwrap();
        let (input, output) = c.finish();
        let table = if side == Side::Input { input } else { output };
        let s = tie(conv.freeze(), &table).to_value();
        assert!(
            jsonschema::draft202012::meta::is_valid(&s),
            "not a valid 2020-12 schema: {s}"
        );
        s
    }

    #[test]
    fn nullable_becomes_a_null_type() {
        let s = convert(
            "openapi: 3.0.3\nx:\n  type: object\n  properties:\n    a: { type: string, nullable: true }\n    b: { type: string, enum: [x, y], nullable: true }\n    c: { allOf: [{ type: integer }], nullable: true }\n",
            "/x",
            Side::Input,
        );
        assert_eq!(s["properties"]["a"]["type"], json!(["string", "null"]));
        assert_eq!(s["properties"]["b"]["enum"], json!(["x", "y", null]));
        assert_eq!(
            s["properties"]["c"],
            json!({"anyOf": [{"allOf": [{"type": "integer"}]}, {"type": "null"}]})
        );
        let v = jsonschema::draft202012::new(&s).unwrap();
        assert!(v.is_valid(&json!({"a": null, "b": null, "c": null})));
        assert!(!v.is_valid(&json!({"b": "z"})));
    }

    #[test]
    fn read_only_properties_leave_inputs_and_write_only_leave_outputs() {
        let text = "openapi: 3.0.3\ncomponents:\n  schemas:\n    Id: { type: integer, readOnly: true }\n    Pet:\n      type: object\n      required: [id, name, secret]\n      properties:\n        id: { $ref: '#/components/schemas/Id' }\n        created: { type: string, readOnly: true }\n        name: { type: string }\n        secret: { type: string, writeOnly: true }\nx: { $ref: '#/components/schemas/Pet' }\n";
        let input = convert(text, "/x", Side::Input);
        let pet = &input["$defs"]["Pet"];
        assert_eq!(
            pet["properties"]
                .as_object()
                .unwrap()
                .keys()
                .collect::<Vec<_>>(),
            ["name", "secret"]
        );
        assert_eq!(pet["required"], json!(["name", "secret"]));
        let output = convert(text, "/x", Side::Output);
        let pet = &output["$defs"]["Pet"];
        assert_eq!(
            pet["properties"]
                .as_object()
                .unwrap()
                .keys()
                .collect::<Vec<_>>(),
            ["created", "id", "name"]
        );
        assert_eq!(pet["required"], json!(["id", "name"]));
    }

    #[test]
    fn recursive_schemas_become_defs_references() {
        let text = "openapi: 3.0.3\ncomponents:\n  schemas:\n    Node:\n      type: object\n      properties:\n        value: { type: string }\n        children: { type: array, items: { $ref: '#/components/schemas/Node' } }\n        parent: { $ref: '#/components/schemas/Parent' }\n    Parent:\n      allOf: [{ $ref: '#/components/schemas/Node' }]\nx: { $ref: '#/components/schemas/Node' }\n";
        let s = convert(text, "/x", Side::Input);
        assert_eq!(s["$ref"], "#/$defs/Node");
        assert_eq!(
            s["$defs"]["Node"]["properties"]["children"]["items"]["$ref"],
            "#/$defs/Node"
        );
        assert_eq!(s["$defs"]["Parent"]["allOf"][0]["$ref"], "#/$defs/Node");
        let v = jsonschema::draft202012::new(&s).unwrap();
        assert!(v.is_valid(&json!({"value": "a", "children": [{"value": "b", "children": []}]})));
        assert!(!v.is_valid(&json!({"value": "a", "children": [{"value": 7}]})));
    }

    #[test]
    fn all_of_one_of_any_of_and_exclusive_bounds() {
        let text = "openapi: 3.0.3\ncomponents:\n  schemas:\n    Base: { type: object, required: [kind], properties: { kind: { type: string } } }\nx:\n  allOf:\n    - $ref: '#/components/schemas/Base'\n    - type: object\n      properties:\n        size: { type: integer, minimum: 0, exclusiveMinimum: true, maximum: 10, exclusiveMaximum: false }\n        tag: { oneOf: [{ type: string }, { type: integer }] }\n        any: { anyOf: [{ type: boolean }, { type: number }] }\n      example: { kind: a }\n      x-internal: true\n      discriminator: { propertyName: kind }\n";
        let s = convert(text, "/x", Side::Input);
        let size = &s["allOf"][1]["properties"]["size"];
        assert_eq!(
            size,
            &json!({"type": "integer", "exclusiveMinimum": 0, "maximum": 10})
        );
        assert!(s["allOf"][1].get("example").is_none());
        assert!(s["allOf"][1].get("x-internal").is_none());
        assert!(s["allOf"][1].get("discriminator").is_none());
        let v = jsonschema::draft202012::new(&s).unwrap();
        assert!(v.is_valid(&json!({"kind": "a", "size": 1, "tag": 3, "any": true})));
        assert!(!v.is_valid(&json!({"kind": "a", "size": 0})));
        assert!(!v.is_valid(&json!({"size": 1})));
        assert!(!v.is_valid(&json!({"kind": "a", "tag": 1.5})));
    }

    #[test]
    fn openapi_3_1_keeps_ref_siblings_and_type_arrays() {
        let text = "openapi: 3.1.0\ncomponents:\n  schemas:\n    Name: { type: string }\nx:\n  type: object\n  properties:\n    n: { $ref: '#/components/schemas/Name', maxLength: 3 }\n    m: { type: [integer, 'null'], exclusiveMinimum: 0 }\n";
        let s = convert(text, "/x", Side::Input);
        assert_eq!(
            s["properties"]["n"],
            json!({"$ref": "#/$defs/Name", "maxLength": 3})
        );
        assert_eq!(s["properties"]["m"]["exclusiveMinimum"], 0);
        let v = jsonschema::draft202012::new(&s).unwrap();
        assert!(v.is_valid(&json!({"n": "abc", "m": null})));
        assert!(!v.is_valid(&json!({"n": "abcd"})));
        assert!(!v.is_valid(&json!({"m": 0})));
    }

    #[test]
    fn bad_schemas_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let mut docs = spec(dir.path(), "openapi: 3.0.0\nx: { properties: { a: 5 } }\ny: { $ref: 'https://example.com/s.json' }\n");
        let mut c = Converter::new(&mut docs, false);
        let x = json!({"properties": {"a": 5}});
        assert!(c
            .convert(0, &x, Side::Input)
            .err()
            .unwrap()
            .contains("not a schema"));
        let y = json!({"$ref": "https://example.com/s.json"});
        assert!(c
            .convert(0, &y, Side::Input)
            .err()
            .unwrap()
            .contains("remote $ref"));
        let mut deep = json!({"type": "string"});
        for _ in 0..100 {
            deep = json!({"items": deep});
        }
        assert!(c
            .convert(0, &deep, Side::Input)
            .err()
            .unwrap()
            .contains("nested"));
    }
}

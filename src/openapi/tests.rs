//! Importing small specs through the real config loader: templates, names, risk,
//! collisions, conflicts, shadowing, references and validation settings.

use crate::canon::Method;
use crate::classify::{ConflictWith, Risk, Source};
use crate::config::{ConfigError, Snapshot};
use serde_json::json;
use std::path::Path;

const SPEC: &str = r##"openapi: 3.0.3
info: { title: Pets, version: "1.0" }
servers: [{ url: "https://pets.example/api/v1" }]
security: [{ key: [] }]
components:
  securitySchemes:
    key: { type: apiKey, in: header, name: X-Key }
  parameters:
    Limit: { name: limit, in: query, schema: { type: integer, maximum: 100 } }
  schemas:
    Pet:
      type: object
      required: [id, name]
      properties:
        id: { type: integer, readOnly: true }
        name: { type: string }
        tag: { type: string, nullable: true }
paths:
  /pets:
    get:
      operationId: listPets
      summary: "  List pets  "
      description: Every pet in the store.
      parameters: [{ $ref: "#/components/parameters/Limit" }]
      responses:
        "200":
          description: ok
          content:
            application/json:
              schema: { type: array, items: { $ref: "#/components/schemas/Pet" } }
    post:
      operationId: createPet
      requestBody:
        required: true
        content:
          application/json:
            schema: { $ref: "#/components/schemas/Pet" }
      responses: { "201": { description: created } }
  /pets/{petId}:
    parameters: [{ name: petId, in: path, required: true, schema: { type: integer } }]
    get:
      operationId: getPetById
      security: []
      responses: { "200": { description: ok } }
    delete:
      operationId: deletePet
      x-portcullis-risk: critical
      responses: { "204": { description: gone } }
  /pets/{id}/refund:
    post:
      operationId: refund-pet
      responses: { "200": { description: ok } }
  /store/inventory:
    get:
      responses: { "200": { description: ok } }
"##;

fn config(route_extra: &str) -> String {
    format!(
        "listen: 127.0.0.1:0\nadmin_listen: 127.0.0.1:0\nupstreams:\n  pets: {{ url: \"https://pets.example/api/v1\" }}\nroutes:\n  - prefix: /pets-api\n    upstream: pets\n    tool_prefix: pets\n    strip_prefix: true\n{route_extra}profiles: {{ all: {{ admin: true }} }}\nagents: {{ bot: {{ profile: all }} }}\n"
    )
}

fn load(dir: &Path, yaml: &str, files: &[(&str, &str)]) -> Result<Snapshot, ConfigError> {
    for (name, text) in files {
        let p = dir.join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }
    let file = dir.join("routes.yaml");
    std::fs::write(&file, yaml).unwrap();
    Snapshot::parse(&file, yaml, &|_| None)
}

fn snap(route_extra: &str) -> Snapshot {
    let dir = tempfile::tempdir().unwrap();
    load(
        dir.path(),
        &config(&format!("    openapi: specs/pets.yaml\n{route_extra}")),
        &[("specs/pets.yaml", SPEC)],
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn operations_become_templates_and_tools() {
    let s = snap("");
    let c = &s.classifier;
    let t = c.classify(Method::Get, "/pets-api/pets").unwrap();
    assert_eq!(
        (&*t.name, t.risk, &*t.template, t.source),
        ("pets.list_pets", Risk::Low, "/pets-api/pets", Source::Spec)
    );
    let op = t.op.as_ref().unwrap();
    assert_eq!(
        op.description.as_deref(),
        Some("List pets\n\nEvery pet in the store.")
    );
    assert_eq!(op.summary.as_deref(), Some("List pets"));
    assert_eq!(op.security, vec!["key".to_string()]);
    let t = c.classify(Method::Get, "/pets-api/pets/7").unwrap();
    assert_eq!(
        (&*t.name, &*t.template),
        ("pets.get_pet_by_id", "/pets-api/pets/{petId}")
    );
    assert_eq!(t.op.as_ref().unwrap().security, vec!["none".to_string()]);
    // x-portcullis-risk sets the risk.
    let t = c.classify(Method::Delete, "/pets-api/pets/7").unwrap();
    assert_eq!((&*t.name, t.risk), ("pets.delete_pet", Risk::Critical));
    // kebab operationId; the spec's parameter names are kept in the template.
    let t = c.classify(Method::Post, "/pets-api/pets/7/refund").unwrap();
    assert_eq!(
        (&*t.name, &*t.template),
        ("pets.refund_pet", "/pets-api/pets/{id}/refund")
    );
    // Without an operationId: the generated name.
    let t = c
        .classify(Method::Get, "/pets-api/store/inventory")
        .unwrap();
    assert_eq!(&*t.name, "pets.store.inventory.list");
    // A method the spec does not define on its template: generated, marked heuristic.
    let t = c.classify(Method::Patch, "/pets-api/pets/7").unwrap();
    assert_eq!(
        (&*t.name, t.source, t.op.is_none()),
        ("pets.pets.update", Source::Heuristic, true)
    );
    // Lenient spellings still count: the highest risk wins.
    let t = c.classify(Method::Delete, "/pets-api/PETS/7").unwrap();
    assert_eq!(t.risk, Risk::Critical);
    assert_eq!(
        s.tool_description("pets.list_pets"),
        Some("List pets\n\nEvery pet in the store.")
    );
}

#[test]
fn input_and_output_schemas() {
    let s = snap("");
    let ops: Vec<_> = s.openapi.operations().collect();
    let create = ops.iter().find(|o| &*o.name == "pets.create_pet").unwrap();
    let input = create.input.to_value();
    assert_eq!(input["required"], json!(["body"]));
    assert_eq!(input["properties"]["body"]["$ref"], "#/$defs/Pet");
    // readOnly `id` left the input, and its `required`; nullable became a type list.
    assert_eq!(
        input["$defs"]["Pet"],
        json!({"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}, "tag": {"type": ["string", "null"]}}})
    );
    assert!(jsonschema::draft202012::meta::is_valid(&input));
    let list = ops.iter().find(|o| &*o.name == "pets.list_pets").unwrap();
    let input = list.input.to_value();
    assert_eq!(
        input["properties"]["query"]["properties"]["limit"]["maximum"],
        100
    );
    let output = list.output.as_ref().unwrap().to_value();
    assert_eq!(output["items"]["$ref"], "#/$defs/Pet");
    // The output keeps readOnly `id`.
    assert!(output["$defs"]["Pet"]["properties"].get("id").is_some());
    let get = ops
        .iter()
        .find(|o| &*o.name == "pets.get_pet_by_id")
        .unwrap();
    assert_eq!(
        get.input.to_value()["properties"]["path"],
        json!({"type": "object", "properties": {"petId": {"type": "integer"}}, "required": ["petId"], "additionalProperties": false})
    );
    for op in &ops {
        assert!(
            jsonschema::draft202012::meta::is_valid(&op.input.to_value()),
            "{}",
            op.name
        );
    }
}

#[test]
fn overrides_still_win_and_shadowed_operations_are_listed() {
    let s = snap("    tools:\n      - { match: \"POST /pets-api/pets/{id}/refund\", name: pets.refund, risk: critical, validate: request }\n");
    let t = s
        .classifier
        .classify(Method::Post, "/pets-api/pets/1/refund")
        .unwrap();
    assert_eq!(
        (&*t.name, t.risk, t.source),
        ("pets.refund", Risk::Critical, Source::Override)
    );
    // The shadowed operation stays attached for its schemas (and validation).
    assert_eq!(&*t.op.as_ref().unwrap().name, "pets.refund_pet");
    assert!(t.op.as_ref().unwrap().validate);
    let r = &s.openapi.routes[0];
    assert_eq!(r.shadowed.len(), 1);
    assert_eq!(&*r.shadowed[0].0.name, "pets.refund_pet");
    let table = crate::tooltable::render(&s);
    assert!(
        table.contains("is shadowed by routes[0].tools[0]"),
        "{table}"
    );
    assert!(table.contains("specs/pets.yaml:"), "{table}");
}

#[test]
fn server_base_path_and_check_say_how_they_combined() {
    let s = snap("");
    let table = crate::tooltable::render(&s);
    assert!(
        table.contains("SOURCE") && table.contains("DESCRIPTION"),
        "{table}"
    );
    assert!(
        table.contains("server base path /api/v1, upstream `pets` base path /api/v1; templates = /pets-api + <spec path> (strip_prefix: true)"),
        "{table}"
    );
    assert!(table.contains("security schemes key are shown"), "{table}");
    let row = table
        .lines()
        .find(|l| l.starts_with("pets.list_pets "))
        .unwrap();
    assert!(
        row.contains(" spec ") && row.ends_with("List pets"),
        "{row}"
    );
    // A spec change is a config change.
    let dir = tempfile::tempdir().unwrap();
    let yaml = config("    openapi: specs/pets.yaml\n");
    let a = load(dir.path(), &yaml, &[("specs/pets.yaml", SPEC)]).unwrap();
    let b = load(
        dir.path(),
        &yaml,
        &[(
            "specs/pets.yaml",
            &SPEC.replace("List pets", "List all pets"),
        )],
    )
    .unwrap();
    assert_ne!(a.policy_version, b.policy_version);
    // Without specs, the version is the config's own.
    let plain = load(dir.path(), &config(""), &[]).unwrap();
    assert!(plain.openapi.routes[0].specs.is_empty());
}

#[test]
fn collisions_name_both_operations_and_their_lines() {
    let dir = tempfile::tempdir().unwrap();
    let spec = "openapi: 3.0.0\ninfo: { title: x, version: '1' }\npaths:\n  /a:\n    get:\n      operationId: getThing\n      responses: {}\n  /b:\n    get:\n      operationId: get-thing\n      responses: {}\n";
    let e = load(
        dir.path(),
        &config("    openapi: s.yaml\n"),
        &[("s.yaml", spec)],
    )
    .err()
    .unwrap()
    .to_string();
    assert!(e.contains("routes.yaml:10:5: routes[0].openapi:"), "{e}");
    assert!(
        e.contains("tool name `pets.get_thing` is produced by two operations"),
        "{e}"
    );
    assert!(e.contains("GET /a (getThing) at s.yaml:5:5"), "{e}");
    assert!(e.contains("GET /b (get-thing) at s.yaml:9:5"), "{e}");
    // `tool_names: generated` keeps today's names: no collision.
    let s = load(
        dir.path(),
        &config("    openapi: s.yaml\n    tool_names: generated\n"),
        &[("s.yaml", spec)],
    )
    .unwrap();
    let names: Vec<_> = s.openapi.operations().map(|o| o.name.to_string()).collect();
    assert_eq!(names, ["pets.a.list", "pets.b.list"]);
}

#[test]
fn same_shape_templates_merge_and_conflicts_are_kept() {
    let dir = tempfile::tempdir().unwrap();
    let spec = "openapi: 3.0.0\ninfo: { title: x, version: '1' }\npaths:\n  /c/{basehead}:\n    get: { operationId: compareBasehead, responses: {} }\n  /c/{base}...{head}:\n    get: { operationId: compare, x-portcullis-risk: medium, responses: {} }\n  /d/{a}:\n    get: { operationId: getD, responses: {} }\n  /d/{b}:\n    delete: { operationId: deleteD, responses: {} }\n";
    let s = load(
        dir.path(),
        &config("    openapi: s.yaml\n"),
        &[("s.yaml", spec)],
    )
    .unwrap();
    let c = &s.classifier;
    // Different parameter names, same shape, different methods: both known.
    assert_eq!(
        &*c.classify(Method::Get, "/pets-api/d/1").unwrap().name,
        "pets.get_d"
    );
    let del = c.classify(Method::Delete, "/pets-api/d/1").unwrap();
    assert_eq!(
        (&*del.name, &*del.template),
        ("pets.delete_d", "/pets-api/d/{b}")
    );
    // One method on one shape twice: the higher risk names the requests; the other is listed.
    let t = c.classify(Method::Get, "/pets-api/c/main...dev").unwrap();
    assert_eq!((&*t.name, t.risk), ("pets.compare", Risk::Medium));
    let conflicts = &s.openapi.routes[0].conflicts;
    assert_eq!(conflicts.len(), 1);
    assert_eq!(&*conflicts[0].op.name, "pets.compare_basehead");
    assert!(matches!(&conflicts[0].with, ConflictWith::Operation(w) if &*w.name == "pets.compare"));
    let table = crate::tooltable::render(&s);
    let line = table
        .lines()
        .find(|l| l.starts_with("warning: template conflict"))
        .unwrap();
    assert!(
        line.contains("GET /c/{basehead} (compareBasehead) at s.yaml:5:5"),
        "{line}"
    );
    assert!(
        line.contains("GET /c/{base}...{head} (compare) at s.yaml:7:5"),
        "{line}"
    );
}

#[test]
fn references_across_files_and_remote_ones() {
    let dir = tempfile::tempdir().unwrap();
    let spec = "openapi: 3.1.0\ninfo: { title: x, version: '1' }\npaths:\n  /a:\n    post:\n      operationId: postA\n      requestBody: { $ref: 'common/bodies.yaml#/A' }\n      responses: {}\n";
    let bodies =
        "A:\n  content:\n    application/json:\n      schema: { $ref: 'schemas.yaml#/Thing' }\n";
    let schemas = "Thing: { type: object, properties: { next: { $ref: '#/Thing' }, n: { type: integer } } }\n";
    let s = load(
        dir.path(),
        &config("    openapi: [s.yaml]\n"),
        &[
            ("s.yaml", spec),
            ("common/bodies.yaml", bodies),
            ("common/schemas.yaml", schemas),
        ],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let op = s.openapi.operations().next().unwrap();
    let input = op.input.to_value();
    assert_eq!(input["properties"]["body"]["$ref"], "#/$defs/Thing");
    assert_eq!(
        input["$defs"]["Thing"]["properties"]["next"]["$ref"],
        "#/$defs/Thing"
    );
    assert_eq!(s.openapi.files().count(), 3);
    // A remote reference is a config error naming the spec's place.
    let remote = "openapi: 3.0.0\ninfo: { title: x, version: '1' }\npaths:\n  /a:\n    get:\n      operationId: a\n      parameters: [{ $ref: 'https://example.com/p.yaml#/P' }]\n      responses: {}\n";
    let e = load(
        dir.path(),
        &config("    openapi: [s.yaml, r.yaml]\n"),
        &[("r.yaml", remote)],
    )
    .err()
    .unwrap()
    .to_string();
    assert!(e.contains("routes[0].openapi[1]: r.yaml:5:5: paths./a.get: remote $ref `https://example.com/p.yaml#/P` is not supported"), "{e}");
}

#[test]
fn settings_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    for (extra, key, why) in [
        (
            "    openapi: s.yaml\n    tool_names: short\n",
            "routes[0].tool_names",
            "expected operation_id or generated",
        ),
        (
            "    openapi: s.yaml\n    validate: always\n",
            "routes[0].validate",
            "expected request or none",
        ),
        (
            "    openapi: missing.yaml\n",
            "routes[0].openapi",
            "missing.yaml: cannot read",
        ),
    ] {
        let e = load(dir.path(), &config(extra), &[("s.yaml", SPEC)])
            .err()
            .unwrap_or_else(|| panic!("{extra} loaded"))
            .to_string();
        assert!(e.contains(key) && e.contains(why), "{extra}: {e}");
    }
    let e = load(dir.path(), &config("    validate: request\n"), &[])
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("routes[0].validate: applies to the operations of an `openapi:` spec"),
        "{e}"
    );
    let e = load(
        dir.path(),
        &config("    openapi: s.yaml\n    tools:\n      - { match: \"POST /pets-api/other\", name: x.y, validate: request }\n"),
        &[("s.yaml", SPEC)],
    )
    .err()
    .unwrap()
    .to_string();
    assert!(
        e.contains("routes[0].tools[0].validate") && e.contains("shadows no operation"),
        "{e}"
    );
    let bad_risk = SPEC.replace("x-portcullis-risk: critical", "x-portcullis-risk: extreme");
    let e = load(
        dir.path(),
        &config("    openapi: s.yaml\n"),
        &[("s.yaml", &bad_risk)],
    )
    .err()
    .unwrap()
    .to_string();
    assert!(
        e.contains(
            "s.yaml:45:5: paths./pets/{petId}.delete: x-portcullis-risk `extreme`: expected"
        ),
        "{e}"
    );
}

#[test]
fn unknown_paths_deny_knows_only_the_spec_operations() {
    let s = snap("    unknown_paths: deny\n");
    assert!(s
        .classifier
        .classify(Method::Get, "/pets-api/pets/1")
        .is_ok());
    assert_eq!(
        s.classifier
            .classify(Method::Patch, "/pets-api/pets/1")
            .unwrap_err(),
        crate::classify::Unclassified::UnknownPath(0)
    );
}

#[test]
fn a_conflict_with_a_paths_template_names_the_entry_and_its_place() {
    // matchit takes one standalone parameter or one catch-all at a segment, not both.
    let dir = tempfile::tempdir().unwrap();
    let s = load(
        dir.path(),
        &config("    paths: [\"/pets-api/store/inventory\", \"/pets-api/pets/{*rest}\"]\n    openapi: specs/pets.yaml\n"),
        &[("specs/pets.yaml", SPEC)],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let conflicts = &s.openapi.routes[0].conflicts;
    let mut names: Vec<&str> = conflicts.iter().map(|c| &*c.op.name).collect();
    names.sort_unstable();
    assert_eq!(
        names,
        ["pets.delete_pet", "pets.get_pet_by_id", "pets.refund_pet"]
    );
    assert!(conflicts.iter().all(|c| matches!(
        &c.with,
        ConflictWith::Template { template, paths: Some(1), .. } if template == "/pets-api/pets/{*rest}"
    )));
    let table = crate::tooltable::render(&s);
    let line = table
        .lines()
        .find(|l| l.contains("(getPetById)"))
        .unwrap_or_else(|| panic!("{table}"));
    let config = dir.path().join("routes.yaml").display().to_string();
    assert!(
        line.starts_with("warning: template conflict on route /pets-api: spec operation GET /pets/{petId} (getPetById) at specs/pets.yaml:41:5 (template /pets-api/pets/{petId}, tool pets.get_pet_by_id) and routes[0].paths[1] `/pets-api/pets/{*rest}` at "),
        "{line}"
    );
    assert!(line.contains(&format!("at {config}:10:")), "{line}");
    assert!(
        line.ends_with("the operation is not a known template"),
        "{line}"
    );
}

#[test]
fn annotations_follow_the_method_and_the_risk_in_force() {
    use crate::openapi::annotations;
    // (method, risk) → (read-only, destructive, idempotent)
    for (m, r, want) in [
        (Method::Get, Risk::Low, (true, false, true)),
        (Method::Head, Risk::Low, (true, false, true)),
        (Method::Get, Risk::Critical, (true, false, true)),
        (Method::Post, Risk::Medium, (false, false, false)),
        (Method::Post, Risk::High, (false, true, false)),
        (Method::Patch, Risk::Critical, (false, true, false)),
        (Method::Put, Risk::Medium, (false, false, true)),
        (Method::Delete, Risk::Low, (false, true, true)),
    ] {
        let a = annotations(m, r);
        assert_eq!(
            (a.read_only, a.destructive, a.idempotent),
            want,
            "{m:?} {r}"
        );
    }
}

#[test]
fn profiles_naming_spec_tools_are_not_warned_about() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = config("    openapi: specs/pets.yaml\n    tools:\n      - { match: \"POST /pets-api/pets/{id}/refund\", name: pets.refund, risk: critical }\n")
        .replace(
            "profiles: { all: { admin: true } }",
            "profiles:\n  all: { admin: true }\n  clerk: { tools: [pets.list_pets, pets.get_pet_by_id, pets.refund_pet], approval: [pets.refund, pets.delet_pet] }",
        );
    let s = load(dir.path(), &yaml, &[("specs/pets.yaml", SPEC)]).unwrap_or_else(|e| panic!("{e}"));
    let warnings = crate::lint::profile_patterns(&s);
    // A spec tool is known; the operation the override shadows is not (its requests carry
    // the override's name), and a typo is still caught.
    assert_eq!(warnings.len(), 2, "{warnings:#?}");
    assert!(
        warnings[0].starts_with("profiles.clerk.tools[2]: `pets.refund_pet` matches no known tool"),
        "{}",
        warnings[0]
    );
    assert!(
        warnings[1]
            .starts_with("profiles.clerk.approval[1]: `pets.delet_pet` matches no known tool")
            && warnings[1].contains("did you mean `pets.delete_pet`?"),
        "{}",
        warnings[1]
    );
}

#[test]
fn header_parameters_responses_by_reference_and_the_first_2xx() {
    let dir = tempfile::tempdir().unwrap();
    let spec = r##"openapi: 3.0.3
info: { title: x, version: "1" }
components:
  responses:
    Made:
      description: made
      content:
        application/json:
          schema: { type: object, properties: { id: { type: integer } } }
paths:
  /things:
    post:
      operationId: makeThing
      parameters:
        - { name: X-Request-Tag, in: header, required: true, schema: { type: string, maxLength: 8 } }
        - { name: Authorization, in: header, schema: { type: string } }
        - { name: session, in: cookie, schema: { type: string } }
        - { name: dry_run, in: query, schema: { type: boolean } }
      responses:
        "2XX": { description: any, content: { application/json: { schema: { type: string } } } }
        "202": { $ref: "#/components/responses/Made" }
        "default": { description: error }
"##;
    let s = load(
        dir.path(),
        &config("    openapi: s.yaml\n"),
        &[("s.yaml", spec)],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let op = s.openapi.by_name("pets.make_thing").unwrap();
    let input = op.input.to_value();
    // Header parameters are arguments (Authorization is OpenAPI's own business and left
    // out); a required one makes `header` required; cookies are not imported.
    assert_eq!(
        input["properties"]["header"],
        json!({"type": "object", "properties": {"X-Request-Tag": {"type": "string", "maxLength": 8}}, "required": ["X-Request-Tag"]})
    );
    assert_eq!(input["required"], json!(["header"]));
    assert!(input["properties"].get("cookie").is_none());
    assert_eq!(
        input["properties"]["query"]["properties"]["dry_run"]["type"],
        "boolean"
    );
    // The first 2xx is `202` (a code before a range), read through its `$ref`.
    assert_eq!(
        op.output.as_ref().unwrap().to_value(),
        json!({"type": "object", "properties": {"id": {"type": "integer"}}})
    );
    assert!(jsonschema::draft202012::meta::is_valid(&input));
    let table = crate::tooltable::render(&s);
    assert!(
        table.contains(
            "note: spec s.yaml: not imported: 1 cookie parameters (cookies are stripped by default)"
        ),
        "{table}"
    );
}

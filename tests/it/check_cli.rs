//! `portcullis check --config F`: a good config prints the tool table and exits 0; a broken
//! one exits 1 and says where (`file:line:col`) and which key path is wrong.

use std::path::Path;
use std::process::Output;

const KEY_VAR: &str = "PC_CHECK_TEST_TICKETS_KEY";

fn good_config() -> String {
    format!(
        r#"listen: 127.0.0.1:0
admin_listen: 127.0.0.1:0
store: {{ embedded: data/p.redb }}
audit: {{ path: data/audit.jsonl }}
upstreams:
  tickets:
    url: http://127.0.0.1:7000/v2
    inject: {{ header: Authorization, value_env: {KEY_VAR} }}
routes:
  - prefix: /tickets
    upstream: tickets
    paths: ["/tickets/{{id}}", "/tickets/{{id}}/comments"]
    tools:
      - {{ match: "POST /tickets/{{id}}/refund", name: tickets.refund, risk: critical }}
profiles:
  reader: {{ tools: ["tickets.get", "tickets.list", "tickets.comments.list"], approval: ["tickets.refund"] }}
  all: {{ admin: true }}
agents: {{ bot: {{ profile: all }} }}
"#
    )
}

fn check(dir: &Path, yaml: &str, with_key: bool) -> (Output, String) {
    let file = dir.join("routes.yaml");
    std::fs::write(&file, yaml).unwrap();
    let path = file.display().to_string();
    let env: &[(&str, &str)] = if with_key {
        &[(KEY_VAR, "secret-value")]
    } else {
        &[]
    };
    let out = crate::common::run_bin_in(
        Some(dir),
        &["check", "--config", &path],
        env,
        crate::common::CLI_BOUND,
    );
    (out, file.display().to_string())
}

/// Table rows as whitespace-split cells.
fn rows(stdout: &str) -> Vec<Vec<String>> {
    stdout
        .lines()
        .map(|l| l.split_whitespace().map(str::to_string).collect())
        .collect()
}

fn row<'a>(rows: &'a [Vec<String>], tool: &str, method: &str, template: &str) -> &'a Vec<String> {
    rows.iter()
        .find(|r| r.len() >= 4 && r[0] == tool && r[1] == method && r[2] == template)
        .unwrap_or_else(|| panic!("no row `{tool} {method} {template}` in the table:\n{rows:#?}"))
}

#[test]
fn good_config_prints_the_tool_table_and_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let (out, _) = check(dir.path(), &good_config(), true);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    let header = stdout.lines().next().unwrap_or_default();
    for col in ["TOOL", "METHOD", "TEMPLATE", "RISK", "ROUTE", "UPSTREAM"] {
        assert!(header.contains(col), "header lacks {col}: {header}");
    }
    let rows = rows(&stdout);
    for (tool, method, template, risk) in [
        ("tickets.get", "GET", "/tickets/{id}", "low"),
        ("tickets.delete", "DELETE", "/tickets/{id}", "high"),
        (
            "tickets.comments.create",
            "POST",
            "/tickets/{id}/comments",
            "medium",
        ),
        ("tickets.refund", "POST", "/tickets/{id}/refund", "critical"),
    ] {
        let r = row(&rows, tool, method, template);
        assert_eq!(r[3], risk, "risk of {tool}: {r:?}");
        assert_eq!(r[4], "/tickets", "route of {tool}: {r:?}");
        assert_eq!(r[5], "tickets", "upstream of {tool}: {r:?}");
    }
    // Which profiles allow, park or deny: `reader` may read, must ask for a refund, may not delete.
    let get = row(&rows, "tickets.get", "GET", "/tickets/{id}").join(" ");
    let refund = row(&rows, "tickets.refund", "POST", "/tickets/{id}/refund").clone();
    let delete = row(&rows, "tickets.delete", "DELETE", "/tickets/{id}").clone();
    assert!(get.contains("reader"), "{get}");
    assert!(refund.len() >= 9, "{refund:?}");
    assert!(
        refund[7].split(',').any(|p| p == "reader"),
        "reader should park the refund: {refund:?}"
    );
    assert!(
        delete[8].split(',').any(|p| p == "reader"),
        "reader should be denied delete: {delete:?}"
    );
    assert!(
        delete[6].split(',').any(|p| p == "all"),
        "the admin profile allows delete: {delete:?}"
    );
    // The secret is not printed.
    assert!(!stdout.contains("secret-value") && !stderr.contains("secret-value"));
}

/// Runs `check` on `yaml`, expects exit 1 and an error naming `file:LINE:COL` (LINE = the
/// 1-based line of the first line containing `at`) and `key_path`.
fn expect_error(yaml: &str, with_key: bool, at: &str, key_path: &str, also: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let (out, file) = check(dir.path(), yaml, with_key);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "want exit 1; stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(
        !stdout.contains("TOOL"),
        "a broken config must not print a table:\n{stdout}"
    );
    let line = yaml
        .lines()
        .position(|l| l.contains(at))
        .expect("marker in yaml")
        + 1;
    let prefix = format!("{file}:{line}:");
    let i = stderr
        .find(&prefix)
        .unwrap_or_else(|| panic!("stderr lacks `{prefix}COL`:\n{stderr}"));
    let col: String = stderr[i + prefix.len()..]
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    let col: usize = col
        .parse()
        .unwrap_or_else(|_| panic!("no column after `{prefix}`:\n{stderr}"));
    let text_line = yaml.lines().nth(line - 1).unwrap();
    assert!(
        col >= 1 && col <= text_line.len() + 1,
        "column {col} is outside line {line}: {text_line:?}"
    );
    assert!(
        stderr.contains(key_path),
        "stderr lacks the key path `{key_path}`:\n{stderr}"
    );
    for s in also {
        assert!(stderr.contains(s), "stderr lacks `{s}`:\n{stderr}");
    }
}

#[test]
fn unknown_key_is_an_error_naming_its_path() {
    let yaml = good_config().replace("    upstream: tickets", "    upstrem: tickets");
    expect_error(&yaml, true, "upstrem:", "routes[0].upstrem", &[]);
}

#[test]
fn unknown_top_level_key_is_an_error() {
    let yaml = good_config().replace("routes:", "rouets:");
    expect_error(&yaml, true, "rouets:", "rouets", &[]);
}

#[test]
fn unknown_upstream_is_an_error() {
    let yaml = good_config().replace("    upstream: tickets", "    upstream: nope");
    expect_error(
        &yaml,
        true,
        "upstream: nope",
        "routes[0].upstream",
        &["nope"],
    );
}

#[test]
fn colon_template_is_an_error() {
    let yaml = good_config().replace(r#""/tickets/{id}/comments""#, r#""/tickets/:id/comments""#);
    expect_error(
        &yaml,
        true,
        "/tickets/:id/comments",
        "routes[0].paths[1]",
        &[":id"],
    );
}

#[test]
fn missing_env_var_for_value_env_is_a_note_for_check_and_an_error_for_serve() {
    // `check` decides without secrets: exit 0 and a note naming file:line:col, the key
    // and the variable (tests/it/quickstart.rs covers --require-secrets and explain).
    let yaml = good_config();
    let dir = tempfile::tempdir().unwrap();
    let (out, file) = check(dir.path(), &yaml, false);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    let line = yaml.lines().position(|l| l.contains("value_env")).unwrap() + 1;
    let note = stdout
        .lines()
        .find(|l| l.starts_with("note: secret not checked:"))
        .unwrap_or_else(|| panic!("no note:\n{stdout}"));
    for s in [
        format!("{file}:{line}:"),
        "upstreams.tickets.inject.value_env".into(),
        KEY_VAR.into(),
    ] {
        assert!(note.contains(&s), "note lacks `{s}`: {note}");
    }
    // `serve` still fails closed on it.
    let out = crate::common::run_bin_in(
        Some(dir.path()),
        &["serve", "--config", &file],
        &[],
        crate::common::CLI_BOUND,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("{file}:{line}:"))
            && stderr.contains("upstreams.tickets.inject.value_env")
            && stderr.contains(KEY_VAR),
        "{stderr}"
    );
}

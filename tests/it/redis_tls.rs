//! A production redis over TLS: `rediss://` to a TLS-only `redis-server` whose
//! certificate a throwaway CA signed, trusted through `store.redis.ca_file`; an ACL user
//! with its password in the URL (from the environment or a file) or apart (`username` +
//! `password_env`); a database index.
//! Without the CA (system roots) or with the wrong password nothing starts, and the
//! password appears in no log line and no error.

use crate::common::{admin_call, base_config, get, run_bin, Proxy, CLI_BOUND, OPERATOR_SECRET};
use crate::support::redis::random_prefix;
use crate::support::redis_ha::TlsRedis;
use serde_json::json;

const USER: &str = "portcullis";
const PASSWORD: &str = "redis-pw-canary-8c1f2e7d";

/// The harness config on the given `store.redis` mapping body (flow style, no braces).
fn config(store: &str) -> String {
    base_config().replace(
        "store: { embedded: data/p.redb }",
        &format!("store: {{ redis: {{ {store} }} }}"),
    )
}

/// The agent token issued in the first run authenticates: the proxy reads db 3.
async fn token_from_db_3(p: &Proxy, token: &str) {
    let resp = get(p.addr, "/_portcullis/tools", token).await;
    assert_eq!(
        resp.status,
        200,
        "the token from the first run, read from db 3: {}",
        resp.text()
    );
}

fn assert_no_password(what: &str, text: &str) {
    assert!(
        !text.contains(PASSWORD),
        "{what} shows the redis password:\n{text}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn rediss_with_a_private_ca_an_acl_user_and_a_db_index() {
    let r = TlsRedis::start(USER, PASSWORD);
    let ca = r.ca_file.display().to_string();
    let prefix = random_prefix();

    // The password in the URL, db 3.
    let url = format!("rediss://{USER}:{PASSWORD}@127.0.0.1:{}/3", r.port());
    let p = Proxy::start(
        &config(&format!(
            "url_env: REDIS_URL, key_prefix: \"{prefix}\", ca_file: {ca}, timeouts: {{ connect: 3s, command: 2s }}"
        )),
        &[("REDIS_URL", &url)],
    );
    let token = p.agent_token("bot").await;
    let r1 = admin_call(p.admin, "GET", "/readyz", "", None).await;
    assert_eq!(r1.status, 200, "{}", r1.text());
    let resp = get(p.addr, "/_portcullis/tools", &token).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    // The store's keys are in db 3, reached over TLS as the ACL user.
    let keys = r.cli(USER, PASSWORD, &["-n", "3", "KEYS", &format!("{prefix}*")]);
    assert!(
        keys.contains(&format!("{prefix}v1:token:")),
        "db 3 keys: {keys}"
    );
    let db0 = r.cli(USER, PASSWORD, &["-n", "0", "KEYS", &format!("{prefix}*")]);
    assert!(db0.trim().is_empty(), "db 0 holds {db0}");
    assert_no_password("the proxy's log", &p.logs());
    drop(p);

    // The user and password apart from the URL.
    let url = format!("rediss://127.0.0.1:{}", r.port());
    let p = Proxy::start(
        &config(&format!(
            "url_env: REDIS_URL, key_prefix: \"{prefix}\", ca_file: {ca}, username: {USER}, password_env: REDIS_PASSWORD, db: 3"
        )),
        &[("REDIS_URL", &url), ("REDIS_PASSWORD", PASSWORD)],
    );
    token_from_db_3(&p, &token).await;
    let r2 = admin_call(
        p.admin,
        "POST",
        "/pause",
        OPERATOR_SECRET,
        Some(&json!({"scope": "agent", "target": "bot"})),
    )
    .await;
    assert_eq!(r2.status, 200, "{}", r2.text());
    assert_no_password("the proxy's log", &p.logs());
    drop(p);

    // The whole URL (user, password, db 3) read from a file, as a mounted secret is.
    let secrets = tempfile::tempdir().unwrap();
    let url_file = secrets.path().join("redis-url");
    std::fs::write(
        &url_file,
        format!("rediss://{USER}:{PASSWORD}@127.0.0.1:{}/3\n", r.port()),
    )
    .unwrap();
    let p = Proxy::start(
        &config(&format!(
            "url_file: {}, key_prefix: \"{prefix}\", ca_file: {ca}",
            url_file.display()
        )),
        &[],
    );
    token_from_db_3(&p, &token).await;
    let sw = admin_call(p.admin, "GET", "/switches", OPERATOR_SECRET, None).await;
    assert_eq!(sw.status, 200, "{}", sw.text());
    assert_eq!(
        sw.json()["paused_agents"],
        json!(["bot"]),
        "the second run's pause, read from db 3: {}",
        sw.text()
    );
    assert_no_password("the proxy's log", &p.logs());
}

#[test]
fn without_the_ca_or_with_a_wrong_password_nothing_starts_and_nothing_leaks() {
    let r = TlsRedis::start(USER, PASSWORD);
    let ca = r.ca_file.display().to_string();
    let dir = tempfile::tempdir().unwrap();
    let run = |store: &str, env: &[(&str, &str)]| {
        let file = dir.path().join("routes.yaml");
        std::fs::write(&file, config(store)).unwrap();
        let out = run_bin(
            &["serve", "--config", &file.display().to_string()],
            env,
            CLI_BOUND,
        );
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(1), "serve should refuse:\n{stderr}");
        assert!(stderr.contains("cannot reach redis"), "{stderr}");
        assert_no_password("serve's output", &stderr);
        assert_no_password("serve's output", &String::from_utf8_lossy(&out.stdout));
        stderr
    };
    let good = format!("rediss://{USER}:{PASSWORD}@127.0.0.1:{}/0", r.port());

    // System roots do not know the throwaway CA: the certificate is refused.
    let e = run("url_env: REDIS_URL", &[("REDIS_URL", &good)]);
    assert!(e.to_lowercase().contains("certificate"), "{e}");

    // A wrong password (the right one nowhere near): refused by the server.
    let wrong = good.replace(PASSWORD, "not-the-password");
    let e = run(
        &format!("url_env: REDIS_URL, ca_file: {ca}"),
        &[("REDIS_URL", &wrong)],
    );
    assert!(!e.contains("not-the-password"), "{e}");

    // Plain redis:// to the TLS port: no answer it can read.
    let plain = good.replace("rediss://", "redis://");
    run(
        "url_env: REDIS_URL, timeouts: { connect: 1s, command: 500ms }",
        &[("REDIS_URL", &plain)],
    );

    // Config errors name the key, never the URL.
    let file = dir.path().join("bad.yaml");
    std::fs::write(&file, config("url_env: REDIS_URL, username: other")).unwrap();
    let out = run_bin(
        &[
            "check",
            "--require-secrets",
            "--config",
            &file.display().to_string(),
        ],
        &[("REDIS_URL", &good)],
        CLI_BOUND,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr.contains("store.redis.username"), "{stderr}");
    assert_no_password("check's error", &stderr);
    let insecure = format!("{good}#insecure");
    std::fs::write(&file, config("url_env: REDIS_URL")).unwrap();
    let out = run_bin(
        &[
            "check",
            "--require-secrets",
            "--config",
            &file.display().to_string(),
        ],
        &[("REDIS_URL", &insecure)],
        CLI_BOUND,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr.contains("#insecure") && stderr.contains("store.redis.url_env"),
        "{stderr}"
    );
    assert_no_password("check's error", &stderr);
}

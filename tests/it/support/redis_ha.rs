//! Production-shaped redis for tests, all `redis-server` processes the test starts on
//! loopback (free ports below the ephemeral range, temp dirs, killed on drop): a master
//! with replicas watched by three sentinels (`redis-server CONF --sentinel`), and a
//! TLS-only server (`--tls-port`, a throwaway CA) with an ACL user. Readiness is polled
//! (replication online, sentinels that know each other), never slept for.
#![allow(dead_code)]

use super::redis::free_port;
use crate::common::TestCa;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Generous: sentinels find each other through hello messages every 2 s.
const READY_BOUND: Duration = Duration::from_secs(40);

/// One `redis-server` process.
pub struct Node {
    child: Option<Child>,
    pub port: u16,
    pub dir: tempfile::TempDir,
    /// The CA's PEM when the node speaks TLS only.
    tls_ca: Option<Vec<u8>>,
}

/// Certificate, key and CA files for TLS nodes (one leaf for every node: 127.0.0.1).
pub struct TlsFiles {
    pub ca: TestCa,
    pub dir: tempfile::TempDir,
}

impl TlsFiles {
    pub fn new() -> TlsFiles {
        let ca = TestCa::new();
        let leaf = ca.issue();
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
        std::fs::write(dir.path().join("server.pem"), &leaf.cert_pem).unwrap();
        std::fs::write(dir.path().join("server.key"), &leaf.key_pem).unwrap();
        TlsFiles { ca, dir }
    }

    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// `redis-server` arguments: TLS only on `{port}`, replication over TLS too.
    fn server_args(&self) -> Vec<String> {
        let f = |n: &str| self.dir.path().join(n).display().to_string();
        vec![
            "--port".into(),
            "0".into(),
            "--tls-port".into(),
            "{port}".into(),
            "--tls-cert-file".into(),
            f("server.pem"),
            "--tls-key-file".into(),
            f("server.key"),
            "--tls-ca-cert-file".into(),
            f("ca.pem"),
            "--tls-auth-clients".into(),
            "no".into(),
            "--tls-replication".into(),
            "yes".into(),
        ]
    }

    /// The same for a sentinel's config file.
    fn sentinel_conf(&self, port: u16) -> String {
        let f = |n: &str| self.dir.path().join(n).display().to_string();
        format!(
            "port 0\ntls-port {port}\ntls-cert-file {}\ntls-key-file {}\n\
             tls-ca-cert-file {}\ntls-auth-clients no\ntls-replication yes\n",
            f("server.pem"),
            f("server.key"),
            f("ca.pem")
        )
    }
}

impl Default for TlsFiles {
    fn default() -> Self {
        Self::new()
    }
}

impl Node {
    fn spawn(args: &[String]) -> Node {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let mut n = Node {
            child: None,
            port,
            dir,
            tls_ca: None,
        };
        n.start(args);
        n
    }

    fn start(&mut self, args: &[String]) {
        let args: Vec<String> = args
            .iter()
            .map(|a| {
                a.replace("{port}", &self.port.to_string())
                    .replace("{dir}", &self.dir.path().display().to_string())
            })
            .collect();
        let child = Command::new("redis-server")
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("run redis-server (is it on PATH?)");
        self.child = Some(child);
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default()
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// A synchronous connection (TLS for a TLS node).
    pub fn conn(&self) -> Option<redis::Connection> {
        let client = match &self.tls_ca {
            None => redis::Client::open(self.url()).ok()?,
            Some(ca) => redis::Client::build_with_tls(
                redis::ConnectionAddr::TcpTls {
                    host: "127.0.0.1".into(),
                    port: self.port,
                    insecure: false,
                    tls_params: None,
                },
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(ca.clone()),
                },
            )
            .ok()?,
        };
        client
            .get_connection_with_timeout(Duration::from_millis(500))
            .ok()
    }

    pub fn info(&self, section: &str) -> String {
        self.conn()
            .and_then(|mut c| redis::cmd("INFO").arg(section).query(&mut c).ok())
            .unwrap_or_default()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

fn wait_for(what: &str, mut ok: impl FnMut() -> bool, diag: impl Fn() -> String) {
    let end = Instant::now() + READY_BOUND;
    while !ok() {
        assert!(
            Instant::now() < end,
            "{what}: not within {READY_BOUND:?}\n{}",
            diag()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn data_node(replica_of: Option<u16>, tls: Option<&TlsFiles>) -> Node {
    let mut args: Vec<String> = [
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        "{dir}",
        "--logfile",
        "{dir}/redis.log",
        // A master without a connected replica refuses writes (NOREPLICAS) rather than
        // accepting ones a failover would lose; set on every node since any may be promoted.
        "--min-replicas-to-write",
        "1",
        "--min-replicas-max-lag",
        "10",
    ]
    .map(String::from)
    .to_vec();
    match tls {
        Some(t) => args.extend(t.server_args()),
        None => args.extend(["--port".into(), "{port}".into()]),
    }
    if let Some(p) = replica_of {
        args.extend(["--replicaof".into(), "127.0.0.1".into(), p.to_string()]);
    }
    let mut n = Node {
        child: None,
        port: free_port(),
        dir: tempfile::tempdir().expect("tempdir"),
        tls_ca: tls.map(|t| t.ca.pem().into_bytes()),
    };
    n.start(&args);
    wait_for(
        &format!("redis-server on {}", n.port),
        || n.conn().is_some(),
        || n.log(),
    );
    n
}

/// A master, `replicas` replicas and three sentinels (quorum 2) monitoring it as `name`.
pub struct SentinelSet {
    pub name: String,
    pub master: Node,
    pub replicas: Vec<Node>,
    pub sentinels: Vec<Node>,
}

impl SentinelSet {
    pub fn start(replicas: usize) -> SentinelSet {
        Self::start_with(replicas, None)
    }

    /// The same with every node and sentinel on TLS only (`tls-replication yes`).
    pub fn start_with(replicas: usize, tls: Option<&TlsFiles>) -> SentinelSet {
        let name = "pcmaster".to_string();
        let master = data_node(None, tls);
        let replicas: Vec<Node> = (0..replicas)
            .map(|_| data_node(Some(master.port), tls))
            .collect();
        wait_for(
            "replicas online",
            || {
                let i = master.info("replication");
                i.matches("state=online").count() == replicas.len()
            },
            || master.info("replication"),
        );
        let mut sentinels = Vec::new();
        for _ in 0..3 {
            let dir = tempfile::tempdir().expect("tempdir");
            let port = free_port();
            let conf = dir.path().join("sentinel.conf");
            let listen = match tls {
                Some(t) => t.sentinel_conf(port),
                None => format!("port {port}\n"),
            };
            std::fs::write(
                &conf,
                format!(
                    "{listen}bind 127.0.0.1\ndir {d}\nlogfile {d}/redis.log\n\
                     sentinel monitor {name} 127.0.0.1 {m} 2\n\
                     sentinel down-after-milliseconds {name} 1000\n\
                     sentinel failover-timeout {name} 10000\n\
                     sentinel parallel-syncs {name} 2\n",
                    d = dir.path().display(),
                    m = master.port,
                ),
            )
            .unwrap();
            let mut n = Node {
                child: None,
                port,
                dir,
                tls_ca: tls.map(|t| t.ca.pem().into_bytes()),
            };
            n.start(&[conf.display().to_string(), "--sentinel".into()]);
            sentinels.push(n);
        }
        let set = SentinelSet {
            name,
            master,
            replicas,
            sentinels,
        };
        // Each sentinel answers for the master at once; discovery takes longer.
        for s in &set.sentinels {
            wait_for(
                &format!("sentinel {} names the master", s.port),
                || s.conn().is_some(),
                || s.log(),
            );
        }
        set
    }

    /// Waits until every sentinel knows every replica and the two other sentinels (hello
    /// messages every 2 s): a failover can then reach its quorum and elect a leader.
    pub fn wait_discovered(&self) {
        let set = self;
        for s in &set.sentinels {
            wait_for(
                &format!("sentinel {} discovery", s.port),
                || {
                    let Some(mut c) = s.conn() else { return false };
                    let reps: Vec<redis::Value> = redis::cmd("SENTINEL")
                        .arg("replicas")
                        .arg(&set.name)
                        .query(&mut c)
                        .unwrap_or_default();
                    let sents: Vec<redis::Value> = redis::cmd("SENTINEL")
                        .arg("sentinels")
                        .arg(&set.name)
                        .query(&mut c)
                        .unwrap_or_default();
                    reps.len() == set.replicas.len() && sents.len() == 2
                },
                || s.log(),
            );
        }
    }

    /// `host:port,host:port,host:port` (for `sentinel.addrs_env`).
    pub fn addrs(&self) -> String {
        self.sentinels
            .iter()
            .map(|s| format!("127.0.0.1:{}", s.port))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The master's port as the first sentinel that answers names it.
    pub fn master_port(&self) -> Option<u16> {
        self.sentinels.iter().find_map(|s| {
            let mut c = s.conn()?;
            let v: Vec<String> = redis::cmd("SENTINEL")
                .arg("get-master-addr-by-name")
                .arg(&self.name)
                .query(&mut c)
                .ok()?;
            v.get(1)?.parse().ok()
        })
    }

    /// Every sentinel's log, for a failure message.
    pub fn logs(&self) -> String {
        self.sentinels
            .iter()
            .map(|s| format!("--- sentinel {}\n{}", s.port, s.log()))
            .collect()
    }
}

/// A TLS-only `redis-server` (no plain port) with its certificate from a throwaway CA,
/// an ACL user `user` with `password`, and the `default` user off.
pub struct TlsRedis {
    pub node: Node,
    pub ca_file: PathBuf,
    pub ca: TestCa,
}

impl TlsRedis {
    pub fn start(user: &str, password: &str) -> TlsRedis {
        let ca = TestCa::new();
        let leaf = ca.issue();
        let dir = tempfile::tempdir().expect("tempdir");
        let w = |name: &str, text: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, text).unwrap();
            p
        };
        let ca_file = w("ca.pem", &ca.pem());
        let cert = w("server.pem", &leaf.cert_pem);
        let key = w("server.key", &leaf.key_pem);
        let port = free_port();
        let mut node = Node {
            child: None,
            port,
            dir,
            tls_ca: None,
        };
        let args: Vec<String> = vec![
            "--port".into(),
            "0".into(),
            "--tls-port".into(),
            port.to_string(),
            "--bind".into(),
            "127.0.0.1".into(),
            "--tls-cert-file".into(),
            cert.display().to_string(),
            "--tls-key-file".into(),
            key.display().to_string(),
            "--tls-ca-cert-file".into(),
            ca_file.display().to_string(),
            "--tls-auth-clients".into(),
            "no".into(),
            "--save".into(),
            "".into(),
            "--appendonly".into(),
            "no".into(),
            "--dir".into(),
            "{dir}".into(),
            "--logfile".into(),
            "{dir}/redis.log".into(),
            "--user".into(),
            "default".into(),
            "off".into(),
            "--user".into(),
            user.into(),
            "on".into(),
            format!(">{password}"),
            "~*".into(),
            "&*".into(),
            "+@all".into(),
        ];
        node.start(&args);
        let t = TlsRedis { node, ca_file, ca };
        wait_for(
            &format!("TLS redis-server on {port}"),
            || t.cli(user, password, &["PING"]).trim() == "PONG",
            || t.node.log(),
        );
        t
    }

    /// `redis-cli` over TLS as `user`: its stdout.
    pub fn cli(&self, user: &str, password: &str, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["--tls", "--cacert"])
            .arg(&self.ca_file)
            .args(["-h", "127.0.0.1", "-p", &self.node.port.to_string()])
            .args(["--user", user, "--pass", password, "--no-auth-warning"])
            .args(args)
            .stdin(Stdio::null())
            .output();
        match out {
            Ok(o) => String::from_utf8_lossy(&o.stdout).into_owned(),
            Err(_) => String::new(),
        }
    }

    pub fn port(&self) -> u16 {
        self.node.port
    }

    pub fn dir(&self) -> &Path {
        self.node.dir.path()
    }
}

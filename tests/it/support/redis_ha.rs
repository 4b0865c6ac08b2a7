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
}

impl Node {
    fn spawn(args: &[String]) -> Node {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let mut n = Node {
            child: None,
            port,
            dir,
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

    /// A synchronous connection (plain TCP).
    pub fn conn(&self) -> Option<redis::Connection> {
        redis::Client::open(self.url())
            .ok()?
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

fn data_node(replica_of: Option<u16>) -> Node {
    let mut args: Vec<String> = [
        "--port",
        "{port}",
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
    if let Some(p) = replica_of {
        args.extend(["--replicaof".into(), "127.0.0.1".into(), p.to_string()]);
    }
    let n = Node::spawn(&args);
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
        let name = "pcmaster".to_string();
        let master = data_node(None);
        let replicas: Vec<Node> = (0..replicas)
            .map(|_| data_node(Some(master.port)))
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
            std::fs::write(
                &conf,
                format!(
                    "port {port}\nbind 127.0.0.1\ndir {d}\nlogfile {d}/redis.log\n\
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

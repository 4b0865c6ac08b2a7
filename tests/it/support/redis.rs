//! A real `redis-server` for tests: its own process on a loopback port and
//! its own temp dir, ready once a TCP `PING` answers `+PONG` (a bounded poll, never a
//! fixed sleep), killed on drop. `start_aof` persists every write (`appendfsync always`)
//! so `restart` proves data survives a server restart.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a fresh `redis-server` gets to answer `PING`.
const READY_BOUND: Duration = Duration::from_secs(15);
/// How many ports to try if the one picked is taken before redis binds it.
const PORT_ATTEMPTS: usize = 5;

pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    aof: bool,
    dir: tempfile::TempDir,
}

/// Every port [`free_port`] handed out in this test process: never handed out twice, so
/// the port of a server killed for a fault test stays its own until it restarts.
static HANDED_OUT: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());

/// A free port drawn at random from *below* the kernel's ephemeral range, reserved for
/// the rest of the test process. Nothing on the machine is ever handed one of these
/// implicitly (listeners on port 0 and outgoing connections take theirs from the
/// ephemeral range), and no other server of the suite is handed it again, so a server
/// killed for a fault test gets its port back on restart instead of finding another
/// test on it.
pub fn free_port() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let (from, to) = (10_000u16, low.max(10_001));
    loop {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(Instant::now().elapsed().as_nanos());
        let port = from + (h.finish() % u64::from(to - from)) as u16;
        let mut handed = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
        if !handed.contains(&port) && TcpListener::bind(("127.0.0.1", port)).is_ok() {
            handed.push(port);
            return port;
        }
    }
}

/// One `PING` over a fresh TCP connection; true if the answer is `+PONG`.
fn ping(addr: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    let _ = s.set_write_timeout(Some(Duration::from_millis(500)));
    if s.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 64];
    let mut got = Vec::new();
    while got.len() < 7 {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    got.starts_with(b"+PONG")
}

impl RedisServer {
    /// A server without persistence (`--save "" --appendonly no`).
    pub fn start() -> RedisServer {
        Self::start_with(false)
    }

    /// A server with an append-only file fsynced on every write.
    pub fn start_aof() -> RedisServer {
        Self::start_with(true)
    }

    fn start_with(aof: bool) -> RedisServer {
        let mut dir = tempfile::tempdir().expect("redis tempdir");
        let mut last_err = String::new();
        for _ in 0..PORT_ATTEMPTS {
            let port = free_port();
            let mut s = RedisServer {
                child: None,
                port,
                aof,
                dir,
            };
            match s.spawn() {
                Ok(()) => return s,
                Err(e) => {
                    last_err = e;
                    dir = s.take_dir();
                }
            }
        }
        panic!("redis-server did not start after {PORT_ATTEMPTS} attempts: {last_err}");
    }

    /// Moves the temp dir out of a server that failed to start (so it can be reused).
    fn take_dir(mut self) -> tempfile::TempDir {
        self.kill();
        let placeholder = tempfile::tempdir().expect("tempdir");
        std::mem::replace(&mut self.dir, placeholder)
    }

    fn spawn(&mut self) -> Result<(), String> {
        let mut cmd = Command::new("redis-server");
        cmd.arg("--port")
            .arg(self.port.to_string())
            .arg("--bind")
            .arg("127.0.0.1")
            .arg("--save")
            .arg("")
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--logfile")
            .arg(self.dir.path().join("redis.log"));
        if self.aof {
            cmd.args(["--appendonly", "yes", "--appendfsync", "always"]);
        } else {
            cmd.args(["--appendonly", "no"]);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = cmd
            .spawn()
            .map_err(|e| format!("cannot run redis-server (is it on PATH?): {e}"))?;
        self.child = Some(child);
        let addr = self.addr();
        let end = Instant::now() + READY_BOUND;
        loop {
            if ping(addr) {
                return Ok(());
            }
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    self.child = None;
                    return Err(format!(
                        "redis-server exited ({status}) before answering PING on {addr}; log:\n{}",
                        self.log()
                    ));
                }
            }
            if Instant::now() >= end {
                self.kill();
                return Err(format!(
                    "redis-server did not answer PING on {addr} within {READY_BOUND:?}; log:\n{}",
                    self.log()
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// `redis://127.0.0.1:PORT/`
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The server's own log file (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default()
    }

    /// Kills the server (SIGKILL) and reaps it; a no-op if it is not running.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends `signal` (e.g. `libc::SIGSTOP`, `libc::SIGCONT`) to the server process.
    pub fn signal(&self, signal: i32) {
        let pid = self
            .child
            .as_ref()
            .expect("redis-server is not running")
            .id();
        // SAFETY: `kill` on the pid of a child we spawned and have not reaped.
        let rc = unsafe { libc::kill(pid as libc::pid_t, signal) };
        assert_eq!(rc, 0, "kill({signal}) on redis-server failed");
    }

    /// Whether the server process is running.
    pub fn running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Starts the server again on the same port and directory (kills it first if it runs).
    /// With `start_aof`, everything written before is there again.
    pub fn restart(&mut self) {
        self.kill();
        // The old process is reaped, but its listening socket may take a moment to free:
        // retry the spawn (bounded) rather than sleeping a fixed time.
        let end = Instant::now() + READY_BOUND;
        loop {
            match self.spawn() {
                Ok(()) => return,
                Err(e) if Instant::now() >= end => panic!("redis-server restart failed: {e}"),
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }

    /// A synchronous connection for test-side commands (dumps, schema markers).
    pub fn conn(&self) -> redis::Connection {
        redis::Client::open(self.url())
            .expect("redis url")
            .get_connection()
            .expect("connect to the test redis-server")
    }

    /// Every key and value (strings, sets, lists, hashes, sorted sets) as text, one
    /// `key = value` per line: what an attacker with the store would see.
    pub fn dump(&self) -> String {
        let mut c = self.conn();
        let keys: Vec<String> = redis::cmd("KEYS").arg("*").query(&mut c).expect("KEYS");
        let mut out = String::new();
        for k in keys {
            let ty: String = redis::cmd("TYPE").arg(&k).query(&mut c).expect("TYPE");
            let vals: Vec<Vec<u8>> = match ty.as_str() {
                "string" => {
                    let v: Vec<u8> = redis::cmd("GET").arg(&k).query(&mut c).unwrap_or_default();
                    vec![v]
                }
                "set" => redis::cmd("SMEMBERS")
                    .arg(&k)
                    .query(&mut c)
                    .unwrap_or_default(),
                "list" => redis::cmd("LRANGE")
                    .arg(&k)
                    .arg(0)
                    .arg(-1)
                    .query(&mut c)
                    .unwrap_or_default(),
                "hash" => redis::cmd("HGETALL")
                    .arg(&k)
                    .query(&mut c)
                    .unwrap_or_default(),
                "zset" => redis::cmd("ZRANGE")
                    .arg(&k)
                    .arg(0)
                    .arg(-1)
                    .arg("WITHSCORES")
                    .query(&mut c)
                    .unwrap_or_default(),
                other => vec![format!("<{other}>").into_bytes()],
            };
            for v in vals {
                out.push_str(&k);
                out.push_str(" = ");
                out.push_str(&String::from_utf8_lossy(&v));
                out.push('\n');
            }
        }
        out
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A random key prefix (`t<hex>:`) so tests sharing a server never see each other's keys.
pub fn random_prefix() -> String {
    let mut b = [0u8; 8];
    getrandom_fill(&mut b);
    format!("t{}:", hex::encode(b))
}

fn getrandom_fill(b: &mut [u8]) {
    use ring::rand::SecureRandom;
    ring::rand::SystemRandom::new().fill(b).expect("system RNG");
}

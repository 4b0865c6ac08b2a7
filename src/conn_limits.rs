//! How many connections a listener holds: the agent port's global and per-address caps
//! (checked right after accept, before any read), the open-connection gauges and refusal
//! counters, and the process's descriptor limit raised at start.

use metrics::{Counter, Gauge};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tracing::{info, warn};

/// The caps in force when a connection is accepted (read from the live snapshot, so a
/// reload applies to the next connection).
#[derive(Debug, Clone, Copy)]
pub struct Caps {
    pub max: usize,
    pub per_ip: usize,
}

/// The open connections of one listener. Shared by every worker thread accepting on it.
pub struct Listener {
    open: AtomicUsize,
    /// Open connections per client address; an entry is removed when it reaches zero, so
    /// the map holds at most as many entries as there are open connections.
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    gauge: Gauge,
    refused_max: Counter,
    refused_ip: Counter,
}

/// Why a connection was closed right after accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    MaxConnections,
    PerIp,
}

impl Refused {
    pub fn as_str(self) -> &'static str {
        match self {
            Refused::MaxConnections => "max_connections",
            Refused::PerIp => "per_ip",
        }
    }
}

/// One open connection's place in its listener's counts; dropping it frees the place.
pub struct Slot {
    listener: Arc<Listener>,
    ip: Option<IpAddr>,
}

impl Listener {
    /// `name` labels the gauge (`agent`, `admin`).
    pub fn new(name: &'static str) -> Arc<Listener> {
        let refused = |reason: &'static str| metrics::counter!("portcullis_connections_refused_total", "reason" => reason);
        Arc::new(Listener {
            open: AtomicUsize::new(0),
            per_ip: Mutex::new(HashMap::new()),
            gauge: metrics::gauge!("portcullis_connections_open", "listener" => name),
            refused_max: refused(Refused::MaxConnections.as_str()),
            refused_ip: refused(Refused::PerIp.as_str()),
        })
    }

    /// Takes a place for a connection from `peer`, or says why there is none (and counts
    /// the refusal). Without `caps` the connection is only counted, never refused.
    pub fn admit(self: &Arc<Self>, peer: IpAddr, caps: Option<Caps>) -> Result<Slot, Refused> {
        let Some(caps) = caps else {
            self.open.fetch_add(1, Ordering::Relaxed);
            self.gauge.increment(1.0);
            return Ok(Slot {
                listener: self.clone(),
                ip: None,
            });
        };
        let admitted = self
            .open
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| {
                (n < caps.max).then_some(n + 1)
            });
        if admitted.is_err() {
            self.refused_max.increment(1);
            return Err(Refused::MaxConnections);
        }
        let key = ip_key(peer);
        {
            let mut map = self.per_ip.lock().unwrap_or_else(|p| p.into_inner());
            let n = map.entry(key).or_insert(0);
            if *n >= caps.per_ip {
                if *n == 0 {
                    map.remove(&key);
                }
                drop(map);
                self.open.fetch_sub(1, Ordering::AcqRel);
                self.refused_ip.increment(1);
                return Err(Refused::PerIp);
            }
            *n += 1;
        }
        self.gauge.increment(1.0);
        Ok(Slot {
            listener: self.clone(),
            ip: Some(key),
        })
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Client addresses with an open connection now.
    pub fn addresses(&self) -> usize {
        self.per_ip.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(ip) = self.ip {
            let mut map = self
                .listener
                .per_ip
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if let Some(n) = map.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    map.remove(&ip);
                }
            }
        }
        self.listener.open.fetch_sub(1, Ordering::AcqRel);
        self.listener.gauge.decrement(1.0);
    }
}

/// The address a per-client cap counts under: IPv4 (also when mapped into IPv6) as is,
/// IPv6 by its /64 — one host usually holds a whole /64.
fn ip_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & !u128::from(u64::MAX)).into()),
        v4 => v4,
    }
}

/// Raises the soft limit on open descriptors to the hard limit (each connection is one
/// descriptor; 1,024 is a common soft default), logs both figures, and warns when
/// `max_connections` would not fit under it.
pub fn raise_nofile(max_connections: u32) {
    #[cfg(not(target_os = "linux"))]
    let _ = max_connections;
    #[cfg(target_os = "linux")]
    {
        use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
        let before = getrlimit(Resource::Nofile);
        // An unlimited hard limit cannot be the soft one on Linux (it is capped by
        // fs.nr_open); use that cap instead.
        let hard = before.maximum.or_else(|| {
            std::fs::read_to_string("/proc/sys/fs/nr_open")
                .ok()
                .and_then(|s| s.trim().parse().ok())
        });
        if let Some(hard) = hard {
            if before.current.is_some_and(|soft| soft < hard) {
                let want = Rlimit {
                    current: Some(hard),
                    maximum: before.maximum,
                };
                if let Err(e) = setrlimit(Resource::Nofile, want) {
                    warn!(error = %e, nofile_soft = ?before.current, nofile_hard = hard,
                        "cannot raise the open-file limit");
                }
            }
        }
        let now = getrlimit(Resource::Nofile);
        info!(
            nofile_soft = now.current.unwrap_or(u64::MAX),
            nofile_hard = now.maximum.unwrap_or(u64::MAX),
            nofile_was = before.current.unwrap_or(u64::MAX),
            "open-file limit"
        );
        if let Some(soft) = now.current {
            if soft <= u64::from(max_connections) {
                warn!(
                    nofile_soft = soft,
                    max_connections,
                    "limits.max_connections is not below the open-file limit: \
                     accepts will fail before the cap refuses anything"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps(max: usize, per_ip: usize) -> Option<Caps> {
        Some(Caps { max, per_ip })
    }

    #[test]
    fn per_ip_and_global_caps_release_on_drop() {
        let l = Listener::new("test");
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let s1 = l.admit(a, caps(3, 2)).unwrap();
        let s2 = l.admit(a, caps(3, 2)).unwrap();
        assert_eq!(l.admit(a, caps(3, 2)).err(), Some(Refused::PerIp));
        let s3 = l.admit(b, caps(3, 2)).unwrap();
        assert_eq!(l.admit(b, caps(3, 2)).err(), Some(Refused::MaxConnections));
        assert_eq!((l.open(), l.addresses()), (3, 2));
        drop(s3);
        assert_eq!((l.open(), l.addresses()), (2, 1), "entries go at zero");
        drop((s1, s2));
        assert_eq!((l.open(), l.addresses()), (0, 0));
        let _s = l.admit(a, caps(3, 2)).unwrap();
    }

    #[test]
    fn uncapped_listener_only_counts() {
        let l = Listener::new("test");
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let slots: Vec<_> = (0..5).map(|_| l.admit(ip, None).unwrap()).collect();
        assert_eq!((l.open(), l.addresses()), (5, 0));
        drop(slots);
        assert_eq!(l.open(), 0);
    }

    #[test]
    fn ipv6_counts_per_64_and_mapped_v4_as_v4() {
        let l = Listener::new("test");
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let _s = l.admit(a, caps(10, 1)).unwrap();
        assert_eq!(l.admit(b, caps(10, 1)).err(), Some(Refused::PerIp));
        let v4: IpAddr = "192.0.2.7".parse().unwrap();
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        let _t = l.admit(v4, caps(10, 1)).unwrap();
        assert_eq!(l.admit(mapped, caps(10, 1)).err(), Some(Refused::PerIp));
    }
}

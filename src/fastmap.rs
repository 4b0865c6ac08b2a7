//! The hash map for lookups on the request path whose keys are never chosen by a
//! client at insertion: agents and route prefixes from the config, credentials the
//! store confirmed. foldhash seeded per process instead of std's SipHash (about 200
//! instructions per short-string lookup, several lookups per request). A map that
//! stores keys a client made up (unknown credential ids) keeps std's SipHash.

/// `HashMap` with foldhash's per-process seeded hasher.
pub type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

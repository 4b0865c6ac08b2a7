//! Every admin-side decoder of client text (`portcullis::decode`: percent-escapes, query
//! parameters, form bodies, the session cookie) on arbitrary bytes: no panic, and what
//! they return is consistent with their input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis::decode::{cookie, form, pairs, percent_decode, query_param};

fuzz_target!(|data: &[u8]| {
    let decoded = percent_decode(data);
    // Every escape shortens; nothing else grows (U+FFFD takes three bytes for one).
    assert!(decoded.len() <= data.len() * 3);
    if !data.contains(&b'%') && !data.contains(&b'+') {
        assert_eq!(decoded, String::from_utf8_lossy(data));
    }
    let f = form(data);
    assert!(f.len() <= pairs(data).count());
    for (k, v) in pairs(data) {
        assert!(f.contains_key(&k));
        let _ = v;
    }
    if let Ok(q) = std::str::from_utf8(data) {
        for name in ["state", "done", "agent", "path", ""] {
            let _ = query_param(q, name);
        }
    }
    let values: Vec<&[u8]> = data.split(|&b| b == b'\n').collect();
    if let Some(v) = cookie(values.iter().copied(), "pc_session") {
        assert!(!v.is_empty() && v.bytes().all(|b| b.is_ascii_graphic()));
    }
});

//! A parked request's body as the detail page shows it: decoded from its
//! `Content-Encoding` (at most `limits.max_parked_body_bytes`), then as text with hidden
//! characters spelled out, or base64. What the page says about it is fixed server text.

use crate::approval::controls::{visible, Piece};
use crate::approval::encoding::{for_display, ForDisplay};
use base64::Engine;

pub struct ShownBody {
    pub pieces: Vec<Piece>,
    /// `utf-8` or `base64`: how `pieces` spell the bytes shown.
    pub encoding: &'static str,
    /// How the bytes shown relate to the bytes sent, when they differ.
    pub note: Option<String>,
    /// The `Content-Encoding` could not be undone: the bytes are shown as sent.
    pub undecodable: bool,
}

/// `raw` (the bytes that will be sent) for reading, given the record's kept headers.
pub fn body(raw: &[u8], headers: &[(String, String)], limit: usize) -> ShownBody {
    let (bytes, note, undecodable, truncated) = match for_display(raw, headers, limit) {
        ForDisplay::AsSent => (raw.to_vec(), None, false, false),
        ForDisplay::Undecodable => (raw.to_vec(), None, true, false),
        ForDisplay::Decoded {
            bytes,
            truncated,
            codings,
        } => {
            let names: Vec<&str> = codings.iter().map(|c| c.as_str()).collect();
            let note = format!(
                "decoded from {} for reading: {}{} bytes",
                names.join(", "),
                if truncated { "the first " } else { "" },
                bytes.len()
            );
            (bytes, Some(note), false, truncated)
        }
    };
    let text = match std::str::from_utf8(&bytes) {
        Ok(s) => Some(s),
        // A cut inside the last character: show the whole ones before it.
        Err(e) if truncated && e.error_len().is_none() => {
            std::str::from_utf8(&bytes[..e.valid_up_to()]).ok()
        }
        Err(_) => None,
    };
    match text {
        Some(s) => ShownBody {
            pieces: visible(s),
            encoding: "utf-8",
            note,
            undecodable,
        },
        None => ShownBody {
            pieces: visible(&base64::engine::general_purpose::STANDARD.encode(&bytes)),
            encoding: "base64",
            note,
            undecodable,
        },
    }
}

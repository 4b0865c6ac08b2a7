//! Invisible and bidirectional control characters in what an operator reads: which
//! characters they are, and how they are made visible (`<U+202E>`) before a page or a
//! terminal could render them, so an approver sees the text that will be sent.

/// Code points that render as nothing or reorder what is around them: C0/C1 controls
/// other than tab, line feed and carriage return; Unicode's default-ignorable code points
/// (zero-width characters, bidirectional embeddings, overrides and isolates, variation
/// selectors, tags, fillers); the other format characters (category Cf); and the line
/// and paragraph separators.
pub fn is_hidden(c: char) -> bool {
    let c = c as u32;
    matches!(
        c,
        0x00..=0x08
            | 0x0B..=0x0C
            | 0x0E..=0x1F
            | 0x7F..=0x9F
            | 0xAD
            | 0x034F
            | 0x0600..=0x0605
            | 0x061C
            | 0x06DD
            | 0x070F
            | 0x0890..=0x0891
            | 0x08E2
            | 0x115F..=0x1160
            | 0x17B4..=0x17B5
            | 0x180B..=0x180F
            | 0x200B..=0x200F
            | 0x2028..=0x202E
            | 0x2060..=0x206F
            | 0x3164
            | 0xFE00..=0xFE0F
            | 0xFEFF
            | 0xFFA0
            | 0xFFF0..=0xFFFB
            | 0x110BD
            | 0x110CD
            | 0x13430..=0x1345F
            | 0x1BCA0..=0x1BCA3
            | 0x1D173..=0x1D17A
            | 0xE0000..=0xE0FFF
    )
}

/// The name of the commonest hidden characters, for the page's tooltip.
fn name(c: char) -> &'static str {
    match c as u32 {
        0x00 => "NULL",
        0xAD => "SOFT HYPHEN",
        0x061C => "ARABIC LETTER MARK",
        0x200B => "ZERO WIDTH SPACE",
        0x200C => "ZERO WIDTH NON-JOINER",
        0x200D => "ZERO WIDTH JOINER",
        0x200E => "LEFT-TO-RIGHT MARK",
        0x200F => "RIGHT-TO-LEFT MARK",
        0x2028 => "LINE SEPARATOR",
        0x2029 => "PARAGRAPH SEPARATOR",
        0x202A => "LEFT-TO-RIGHT EMBEDDING",
        0x202B => "RIGHT-TO-LEFT EMBEDDING",
        0x202C => "POP DIRECTIONAL FORMATTING",
        0x202D => "LEFT-TO-RIGHT OVERRIDE",
        0x202E => "RIGHT-TO-LEFT OVERRIDE",
        0x2060 => "WORD JOINER",
        0x2066 => "LEFT-TO-RIGHT ISOLATE",
        0x2067 => "RIGHT-TO-LEFT ISOLATE",
        0x2068 => "FIRST STRONG ISOLATE",
        0x2069 => "POP DIRECTIONAL ISOLATE",
        0xFEFF => "ZERO WIDTH NO-BREAK SPACE",
        0xE0000..=0xE0FFF => "TAG OR VARIATION SELECTOR",
        0xFE00..=0xFE0F => "VARIATION SELECTOR",
        0x01..=0x1F | 0x7F..=0x9F => "CONTROL CHARACTER",
        _ => "INVISIBLE FORMAT CHARACTER",
    }
}

/// A run of text as shown: plain text, or one hidden character spelled `<U+XXXX>`.
/// The template HTML-escapes `text` either way and styles a hidden one distinctly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Piece {
    pub text: String,
    pub hidden: bool,
    /// What the hidden character is (empty for plain text).
    pub name: &'static str,
}

/// `s` cut into plain runs and visibly spelled hidden characters.
pub fn visible(s: &str) -> Vec<Piece> {
    let mut out = Vec::new();
    let mut plain = String::new();
    for c in s.chars() {
        if is_hidden(c) {
            if !plain.is_empty() {
                out.push(Piece {
                    text: std::mem::take(&mut plain),
                    hidden: false,
                    name: "",
                });
            }
            out.push(Piece {
                text: format!("<U+{:04X}>", c as u32),
                hidden: true,
                name: name(c),
            });
        } else {
            plain.push(c);
        }
    }
    if !plain.is_empty() || out.is_empty() {
        out.push(Piece {
            text: plain,
            hidden: false,
            name: "",
        });
    }
    out
}

/// Whether any of `pieces` is a hidden character.
pub fn any_hidden(pieces: &[Piece]) -> bool {
    pieces.iter().any(|p| p.hidden)
}

/// Serialised JSON with every hidden character written as a `\uXXXX` escape: the same
/// JSON value, but a terminal shows the escape instead of obeying the character.
pub fn escape_json_text(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    for c in json.chars() {
        if is_hidden(c) {
            let mut units = [0u16; 2];
            for u in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{u:04x}"));
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bidi_and_zero_width_characters_are_spelled_out() {
        let p = visible("pay\u{202E}txt.exe\u{200B}!");
        let text: String = p.iter().map(|p| p.text.as_str()).collect();
        assert_eq!(text, "pay<U+202E>txt.exe<U+200B>!");
        assert!(any_hidden(&p));
        assert_eq!(p[1].name, "RIGHT-TO-LEFT OVERRIDE");
        for c in [
            '\u{202A}',
            '\u{202D}',
            '\u{2066}',
            '\u{2069}',
            '\u{200F}',
            '\u{2060}',
            '\u{FEFF}',
            '\u{E0041}',
            '\u{0}',
            '\u{85}',
        ] {
            assert!(is_hidden(c), "U+{:04X}", c as u32);
        }
        for c in ['a', '\n', '\t', '\r', 'é', '€', ' ', '\u{5D0}'] {
            assert!(!is_hidden(c), "U+{:04X}", c as u32);
        }
        assert!(!any_hidden(&visible("plain\ntext")));
        assert_eq!(
            visible(""),
            vec![Piece {
                text: String::new(),
                hidden: false,
                name: ""
            }]
        );
    }

    #[test]
    fn json_keeps_its_value_with_hidden_characters_escaped() {
        let v = serde_json::json!({"path": "/a\u{202E}b", "tag": "\u{E0041}", "ok": "é"});
        let text = escape_json_text(&serde_json::to_string(&v).unwrap());
        assert!(
            text.contains("\\u202e") && text.contains("\\udb40\\udc41"),
            "{text}"
        );
        assert!(text.chars().all(|c| !is_hidden(c)));
        assert_eq!(serde_json::from_str::<serde_json::Value>(&text).unwrap(), v);
    }
}

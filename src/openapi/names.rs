//! Tool names from operationIds: camelCase and kebab-case become snake_case, `/` and
//! `.` separate name parts, only `[a-z0-9_.]` is kept, and a name is at most 64
//! characters (longer ones are cut and end in 8 hex digits of their SHA-256).

use sha2::{Digest, Sha256};

/// The longest tool name a spec operation gets.
pub const MAX_NAME: usize = 64;

/// `repos/list-for-org` → `repos.list_for_org`, `getPetById` → `get_pet_by_id`,
/// `listHTTPServers` → `list_http_servers`. `None` when nothing usable is left.
pub fn normalise(operation_id: &str) -> Option<String> {
    let parts: Vec<String> = operation_id
        .split(['/', '.'])
        .map(snake)
        .filter(|p| !p.is_empty())
        .collect();
    if parts.is_empty() {
        None
    } else {
        Some(parts.join("."))
    }
}

/// `<tool_prefix>.<normalised operationId>`, shortened to [`MAX_NAME`].
pub fn tool_name(tool_prefix: &str, operation_id: &str) -> Option<String> {
    let n = normalise(operation_id)?;
    Some(shorten(format!("{tool_prefix}.{n}")))
}

/// One name part in snake_case: a `_` goes before an upper-case letter that follows a
/// lower-case letter or a digit, or that starts a word after an acronym (`HTTPServer`
/// → `http_server`); every character outside `[A-Za-z0-9]` becomes `_`; runs of `_`
/// collapse and none is left at either end.
fn snake(part: &str) -> String {
    let chars: Vec<char> = part.chars().collect();
    let mut out = String::with_capacity(part.len() + 4);
    for (i, &ch) in chars.iter().enumerate() {
        if ch.is_ascii_uppercase() {
            let prev = i.checked_sub(1).map(|j| chars[j]);
            let next = chars.get(i + 1).copied();
            let boundary = match prev {
                Some(p) if p.is_ascii_lowercase() || p.is_ascii_digit() => true,
                Some(p) if p.is_ascii_uppercase() => next.is_some_and(|n| n.is_ascii_lowercase()),
                _ => false,
            };
            if boundary {
                out.push('_');
            }
            out.push(ch.to_ascii_lowercase());
        } else if ch.is_ascii_alphanumeric() {
            out.push(ch);
        } else {
            out.push('_');
        }
    }
    let mut collapsed = String::with_capacity(out.len());
    for ch in out.chars() {
        if ch == '_' && (collapsed.is_empty() || collapsed.ends_with('_')) {
            continue;
        }
        collapsed.push(ch);
    }
    while collapsed.ends_with('_') {
        collapsed.pop();
    }
    collapsed
}

/// A name of at most [`MAX_NAME`] bytes: a longer one keeps its first 55 bytes (cut on
/// a character boundary, trailing separators dropped) and gets `_` plus the first 8 hex
/// digits of the SHA-256 of the whole name, so two long names stay apart.
pub fn shorten(name: String) -> String {
    if name.len() <= MAX_NAME {
        return name;
    }
    let digest = hex::encode(Sha256::digest(name.as_bytes()));
    let mut cut = MAX_NAME - 9;
    while !name.is_char_boundary(cut) {
        cut -= 1;
    }
    let mut out = name[..cut].trim_end_matches(['.', '_', '-']).to_string();
    out.push('_');
    out.push_str(&digest[..8]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operation_ids_become_snake_case_with_dots() {
        for (id, want) in [
            ("getPetById", "get_pet_by_id"),
            ("repos/list-for-org", "repos.list_for_org"),
            ("listHTTPServers", "list_http_servers"),
            ("HTTPServer", "http_server"),
            ("getV2Thing", "get_v2_thing"),
            ("tickets.comments.create", "tickets.comments.create"),
            ("Tickets--Create  Now", "tickets_create_now"),
            ("a//b", "a.b"),
            ("café-latte", "caf_latte"),
            ("_leading_", "leading"),
            ("already_snake", "already_snake"),
        ] {
            assert_eq!(normalise(id).as_deref(), Some(want), "{id}");
        }
        assert_eq!(normalise("--/.."), None);
        assert_eq!(normalise(""), None);
    }

    #[test]
    fn names_are_prefixed_and_at_most_64_characters() {
        assert_eq!(
            tool_name("pets", "getPetById").as_deref(),
            Some("pets.get_pet_by_id")
        );
        let long = "packages/get-all-package-versions-for-package-owned-by-authenticated-user";
        let a = tool_name("github", long).unwrap();
        assert_eq!(a.len(), MAX_NAME, "{a}");
        assert!(a.starts_with("github.packages.get_all_package_versions_for_package_"));
        assert!(a
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.'));
        // Two long names that share their first 55 bytes stay apart.
        let b = tool_name("github", &format!("{long}-2")).unwrap();
        assert_ne!(a, b);
        assert_eq!(b.len(), MAX_NAME);
        // A multi-byte prefix is cut on a character boundary.
        let c = shorten(format!("{}{}", "é".repeat(40), "x".repeat(10)));
        assert!(c.len() <= MAX_NAME, "{c}");
    }
}

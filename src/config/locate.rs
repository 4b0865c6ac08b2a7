//! Maps a key path (`routes[0].upstream`) to where it stands in the YAML text, so
//! validation errors found after deserialisation can still name `file:line:col`.

use std::collections::HashMap;
use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

/// Key path → (line, column), both 1-based. Built once per load; cheap for config-sized files.
#[derive(Debug, Default)]
pub struct Locator {
    spots: HashMap<String, (usize, usize)>,
}

enum Frame {
    Map { path: String, key: Option<String> },
    Seq { path: String, index: usize },
}

struct Builder {
    stack: Vec<Frame>,
    spots: HashMap<String, (usize, usize)>,
}

impl Builder {
    /// The path of the value about to be read, and whether it is a map key.
    fn next_path(&self) -> (String, bool) {
        match self.stack.last() {
            None => (String::new(), false),
            Some(Frame::Map { path, key: None }) => (path.clone(), true),
            Some(Frame::Map { path, key: Some(k) }) => (join(path, k), false),
            Some(Frame::Seq { path, index }) => (format!("{path}[{index}]"), false),
        }
    }

    fn value_done(&mut self) {
        match self.stack.last_mut() {
            Some(Frame::Map { key, .. }) => *key = None,
            Some(Frame::Seq { index, .. }) => *index += 1,
            None => {}
        }
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        let spot = (mark.line(), mark.col() + 1);
        match ev {
            Event::Scalar(value, ..) => {
                let (path, is_key) = self.next_path();
                if is_key {
                    // A map's own place is its first key (block maps report their start late).
                    self.spots.entry(path.clone()).or_insert(spot);
                    self.spots.insert(join(&path, &value), spot);
                    if let Some(Frame::Map { key, .. }) = self.stack.last_mut() {
                        *key = Some(value);
                    }
                } else {
                    self.spots.entry(path).or_insert(spot);
                    self.value_done();
                }
            }
            Event::Alias(_) => {
                let (path, _) = self.next_path();
                self.spots.entry(path).or_insert(spot);
                self.value_done();
            }
            Event::MappingStart(..) => {
                let (path, _) = self.next_path();
                self.stack.push(Frame::Map { path, key: None });
            }
            Event::SequenceStart(..) => {
                let (path, _) = self.next_path();
                self.spots.entry(path.clone()).or_insert(spot);
                self.stack.push(Frame::Seq { path, index: 0 });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
                self.value_done();
            }
            _ => {}
        }
    }
}

impl Locator {
    pub fn new(text: &str) -> Locator {
        let mut b = Builder {
            stack: Vec::new(),
            spots: HashMap::new(),
        };
        // A scan error here is reported by serde's own parse with its position.
        let _ = Parser::new_from_str(text).load(&mut b, false);
        Locator { spots: b.spots }
    }

    /// Where exactly `path` stands, if it is in the text.
    pub fn find_exact(&self, path: &str) -> Option<(usize, usize)> {
        self.spots.get(path).copied()
    }

    /// Where `path` stands; falls back to its nearest ancestor, then to 1:1.
    pub fn find(&self, path: &str) -> (usize, usize) {
        let mut p = path;
        loop {
            if let Some(s) = self.spots.get(p) {
                return *s;
            }
            match p.rfind(['.', '[']) {
                Some(i) => p = &p[..i],
                None => return (1, 1),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_nested_keys_and_sequence_items() {
        let text = "a: 1\nroutes:\n  - prefix: /x\n    upstream: up\n  - prefix: /y\n";
        let l = Locator::new(text);
        assert_eq!(l.find("a"), (1, 1));
        assert_eq!(l.find("routes[0].upstream"), (4, 5));
        assert_eq!(l.find("routes[1].prefix"), (5, 5));
        assert_eq!(l.find("routes[1].nothing"), (5, 5));
    }
}

//! Where each YAML path sits in the file: `routes[1].upstream` -> line 12.
//!
//! serde_yaml's `Value` forgets positions, so a second, event-level pass with yaml-rust2 records
//! the line of every mapping key and sequence item. Validation errors are raised by path and get
//! their line from here, which is how `tollgate check` can say `conf/x.yaml:12: routes[1]...`.

use std::collections::HashMap;
use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

/// Map from YAML path to 1-based line.
#[derive(Debug, Default)]
pub struct LocationIndex {
    lines: HashMap<String, usize>,
    duplicates: Vec<Duplicate>,
}

/// A mapping key written twice under the same parent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Duplicate {
    /// YAML path of the key, like `upstreams.app`.
    pub path: String,
    /// Line of its first definition.
    pub first_line: usize,
    /// Line of the repeated definition.
    pub line: usize,
}

impl LocationIndex {
    /// Index a YAML text. A text that does not parse yields an empty index (the syntax error
    /// is reported by the main parser).
    pub fn build(text: &str) -> Self {
        let mut rec = Recorder::default();
        let mut parser = Parser::new_from_str(text);
        if parser.load(&mut rec, false).is_err() {
            return LocationIndex::default();
        }
        LocationIndex {
            lines: rec.lines,
            duplicates: rec.duplicates,
        }
    }

    /// Keys defined twice in one mapping (serde_yaml refuses them but points at the mapping).
    pub fn duplicates(&self) -> &[Duplicate] {
        &self.duplicates
    }

    /// Line of `path`, or of its closest ancestor that has one (`routes[1].match.host` falls back
    /// to `routes[1].match` when `host` is absent).
    pub fn line_of(&self, path: &str) -> Option<usize> {
        let mut p = path;
        loop {
            if let Some(l) = self.lines.get(p) {
                return Some(*l);
            }
            let cut = p.rfind(['.', '['])?;
            p = &p[..cut];
        }
    }
}

enum Frame {
    Map { path: String, key: Option<String> },
    Seq { path: String, index: usize },
}

#[derive(Default)]
struct Recorder {
    stack: Vec<Frame>,
    lines: HashMap<String, usize>,
    duplicates: Vec<Duplicate>,
}

impl Recorder {
    /// Path of the node that starts now, if it is a value (not a mapping key); advances the parent.
    fn enter_value(&mut self, line: usize) -> Option<String> {
        match self.stack.last_mut() {
            None => Some(String::new()),
            Some(Frame::Seq { path, index }) => {
                let p = format!("{path}[{index}]");
                *index += 1;
                self.lines.insert(p.clone(), line);
                Some(p)
            }
            Some(Frame::Map { path, key }) => key.take().map(|k| {
                if path.is_empty() {
                    k
                } else {
                    format!("{path}.{k}")
                }
            }),
        }
    }
}

impl MarkedEventReceiver for Recorder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        let line = mark.line();
        match ev {
            Event::Scalar(value, ..) => {
                let is_key = self.enter_value(line).is_none();
                // A mapping key: remember it and where it is.
                if let (true, Some(Frame::Map { path, key })) = (is_key, self.stack.last_mut()) {
                    let p = if path.is_empty() {
                        value.clone()
                    } else {
                        format!("{path}.{value}")
                    };
                    if let Some(first_line) = self.lines.insert(p.clone(), line) {
                        self.duplicates.push(Duplicate {
                            path: p,
                            first_line,
                            line,
                        });
                    }
                    *key = Some(value);
                }
            }
            Event::Alias(_) => {
                self.enter_value(line);
            }
            Event::MappingStart(..) => {
                let path = self.enter_value(line).unwrap_or_default();
                self.stack.push(Frame::Map { path, key: None });
            }
            Event::SequenceStart(..) => {
                let path = self.enter_value(line).unwrap_or_default();
                self.stack.push(Frame::Seq { path, index: 0 });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_keys_and_items() {
        let idx = LocationIndex::build(
            "listen: a\nupstreams:\n  app:\n    endpoints: [\"x:1\"]\nroutes:\n  - name: r\n    upstream: app\n  - match: { path_prefix: / }\n    upstream: b\n",
        );
        assert_eq!(idx.line_of("listen"), Some(1));
        assert_eq!(idx.line_of("upstreams.app"), Some(3));
        assert_eq!(idx.line_of("upstreams.app.endpoints[0]"), Some(4));
        assert_eq!(idx.line_of("routes[0].upstream"), Some(7));
        assert_eq!(idx.line_of("routes[1].match.path_prefix"), Some(8));
        assert_eq!(idx.line_of("routes[1].upstream"), Some(9));
        // Missing key: falls back to the parent.
        assert_eq!(idx.line_of("routes[1].name"), Some(8));
    }
}

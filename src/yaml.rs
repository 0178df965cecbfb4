//! Every YAML read and write in selfspec goes through this module.
//!
//! `serde_yaml` is archived upstream; keeping it (and `yaml-rust2`, which gives the source
//! positions serde_yaml hides) behind these few functions means a maintained fork replaces it in
//! one place. Two ways in:
//! - [`parse`] builds a [`Node`] tree that remembers where each value starts, for files whose
//!   every problem must be reported with line and column (seed files, InstructLab `qna.yaml`).
//! - [`from_str`] deserialises straight into a serde type (configuration, themes).
//!
//! Writing is [`to_string`]: deterministic, so `to_string(from(to_string(x))) == to_string(x)`.

use std::fmt;

use serde::de::DeserializeOwned;
use serde::Serialize;
use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

/// A place in a source text; both numbers start at 1. Columns count characters, not bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Pos {
    pub line: usize,
    pub column: usize,
}

impl Pos {
    fn from_marker(m: &Marker) -> Pos {
        Pos { line: m.line().max(1), column: m.col() + 1 }
    }
}

impl fmt::Display for Pos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.column)
    }
}

/// A YAML syntax error: the parser stops at the first one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntaxError {
    pub pos: Pos,
    pub message: String,
}

impl fmt::Display for SyntaxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.pos, self.message)
    }
}

impl std::error::Error for SyntaxError {}

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `~`, `null`, or nothing at all after a key.
    Null,
    /// Any other scalar, kept as the text it spells: `42` and `yes` are the strings "42" and
    /// "yes" (seed text is text, whatever it looks like).
    Text(String),
    List(Vec<Node>),
    Map(Vec<(Node, Node)>),
}

/// A value and where it starts.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub value: Value,
    pub pos: Pos,
}

impl Node {
    pub fn as_text(&self) -> Option<&str> {
        match &self.value {
            Value::Text(s) => Some(s),
            _ => None,
        }
    }

    pub fn is_null(&self) -> bool {
        matches!(self.value, Value::Null)
    }

    /// What this value is, as a user reads it in an error message.
    pub fn kind(&self) -> &'static str {
        match self.value {
            Value::Null => "nothing",
            Value::Text(_) => "text",
            Value::List(_) => "a list",
            Value::Map(_) => "a mapping",
        }
    }

    /// The entries of a mapping, `None` for anything else.
    pub fn entries(&self) -> Option<&[(Node, Node)]> {
        match &self.value {
            Value::Map(entries) => Some(entries),
            _ => None,
        }
    }

    /// The value under `key` in a mapping (the first, if a key repeats).
    pub fn get(&self, key: &str) -> Option<&Node> {
        self.entries()?.iter().find(|(k, _)| k.as_text() == Some(key)).map(|(_, v)| v)
    }
}

/// Parses the first document of `text`. `Ok(None)` for a text with no document at all (empty,
/// or only comments).
pub fn parse(text: &str) -> Result<Option<Node>, SyntaxError> {
    let mut builder = TreeBuilder::new(text);
    let mut parser = Parser::new_from_str(text);
    parser
        .load(&mut builder, false)
        .map_err(|e| SyntaxError { pos: Pos::from_marker(e.marker()), message: e.info().to_string() })?;
    if let Some(message) = builder.error {
        return Err(message);
    }
    Ok(builder.root)
}

/// Deserialises `text` into `T`; a syntax or type error carries its position when serde_yaml
/// knows it.
pub fn from_str<T: DeserializeOwned>(text: &str) -> Result<T, SyntaxError> {
    // serde_yaml expands aliases without bound: the tree builder's count runs first.
    let mut builder = TreeBuilder::new(text);
    let _ = Parser::new_from_str(text).load(&mut builder, false);
    if let Some(e) = builder.expansion {
        return Err(e);
    }
    serde_yaml::from_str(text).map_err(|e| {
        let pos = e.location().map(|l| Pos { line: l.line(), column: l.column() }).unwrap_or_default();
        // serde_yaml appends " at line X column Y" to its message; the position is ours to print.
        let mut message = e.to_string();
        if let Some(cut) = message.find(" at line ") {
            message.truncate(cut);
        }
        SyntaxError { pos, message }
    })
}

/// Serialises `value` as block-style YAML: struct fields in declaration order, multi-line text
/// as `|` blocks, strings that would read as another type quoted.
pub fn to_string<T: Serialize>(value: &T) -> anyhow::Result<String> {
    Ok(serde_yaml::to_string(value)?)
}

enum Open {
    List(Pos, Vec<Node>),
    Map(Pos, Vec<(Node, Node)>, Option<Node>),
}

/// What a document of `bytes` bytes may grow to once its aliases are expanded, counted as one
/// per value plus the bytes of its text: far above what written-out text can spell (at most
/// about 1.5 × its size), far below what aliases can (a few hundred bytes of "billion laughs"
/// spell 10⁹ values; a long string aliased through a few levels spells gigabytes). The parsed
/// tree stays within a small multiple of this.
fn expansion_limit(bytes: usize) -> usize {
    (1 << 20) + 16 * bytes
}

/// What `node` counts toward [`expansion_limit`], itself included.
fn size(node: &Node) -> usize {
    1 + match &node.value {
        Value::Null => 0,
        Value::Text(t) => t.len(),
        Value::List(items) => items.iter().map(size).sum(),
        Value::Map(entries) => entries.iter().map(|(k, v)| size(k) + size(v)).sum(),
    }
}

struct TreeBuilder {
    stack: Vec<Open>,
    anchors: Vec<(usize, Node)>,
    /// Anchor id of each open collection, to register it when it closes.
    open_anchors: Vec<usize>,
    root: Option<Node>,
    done: bool,
    error: Option<SyntaxError>,
    /// Values and text bytes built so far, aliases counted expanded, and the most allowed.
    values: usize,
    limit: usize,
    /// The error of an alias that would pass `limit` (also in `error`).
    expansion: Option<SyntaxError>,
}

impl TreeBuilder {
    fn new(text: &str) -> TreeBuilder {
        TreeBuilder {
            stack: Vec::new(),
            anchors: Vec::new(),
            open_anchors: Vec::new(),
            root: None,
            done: false,
            error: None,
            values: 0,
            limit: expansion_limit(text.len()),
            expansion: None,
        }
    }

    fn push_value(&mut self, node: Node) {
        match self.stack.last_mut() {
            None => {
                if self.root.is_none() {
                    self.root = Some(node);
                }
            }
            Some(Open::List(_, items)) => items.push(node),
            Some(Open::Map(_, entries, pending_key)) => match pending_key.take() {
                None => *pending_key = Some(node),
                Some(key) => entries.push((key, node)),
            },
        }
    }

    fn remember(&mut self, anchor: usize, node: &Node) {
        if anchor != 0 {
            self.anchors.push((anchor, node.clone()));
        }
    }
}

fn is_null_scalar(text: &str, style: TScalarStyle) -> bool {
    style == TScalarStyle::Plain && matches!(text, "" | "~" | "null" | "Null" | "NULL")
}

impl MarkedEventReceiver for TreeBuilder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        if self.done || self.error.is_some() {
            return;
        }
        let pos = Pos::from_marker(&mark);
        match ev {
            Event::Scalar(text, style, anchor, _tag) => {
                self.values += 1 + text.len();
                let value = if is_null_scalar(&text, style) { Value::Null } else { Value::Text(text) };
                let node = Node { value, pos };
                self.remember(anchor, &node);
                self.push_value(node);
            }
            Event::Alias(anchor) => match self.anchors.iter().rev().find(|(id, _)| *id == anchor) {
                Some((_, node)) => {
                    let grows = size(node);
                    if self.values + grows > self.limit {
                        let e = SyntaxError {
                            pos,
                            message: format!(
                                "this alias expands the document past {} values and text bytes, 16 times \
                                 the file's size and 1 MiB (aliases that multiply, a \"billion laughs\"); \
                                 write the values out instead",
                                self.limit
                            ),
                        };
                        self.expansion = Some(e.clone());
                        self.error = Some(e);
                        return;
                    }
                    self.values += grows;
                    let node = Node { value: node.value.clone(), pos };
                    self.push_value(node);
                }
                None => self.error = Some(SyntaxError { pos, message: "alias to an unknown anchor".into() }),
            },
            Event::SequenceStart(anchor, _) => {
                self.open_anchors.push(anchor);
                self.stack.push(Open::List(pos, Vec::new()));
            }
            Event::MappingStart(anchor, _) => {
                self.open_anchors.push(anchor);
                // yaml-rust2 marks a block mapping's start after its first key; the first key's
                // own position replaces it below.
                self.stack.push(Open::Map(pos, Vec::new(), None));
            }
            Event::SequenceEnd | Event::MappingEnd => {
                self.values += 1;
                let anchor = self.open_anchors.pop().unwrap_or(0);
                let node = match self.stack.pop() {
                    Some(Open::List(pos, items)) => Node { value: Value::List(items), pos },
                    Some(Open::Map(pos, entries, _)) => {
                        let pos = entries.first().map_or(pos, |(k, _)| k.pos.min(pos));
                        Node { value: Value::Map(entries), pos }
                    }
                    None => return,
                };
                self.remember(anchor, &node);
                self.push_value(node);
            }
            Event::DocumentEnd => {
                if self.root.is_some() {
                    self.done = true;
                }
            }
            Event::Nothing | Event::StreamStart | Event::StreamEnd | Event::DocumentStart => {}
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn positions_are_one_based_and_point_at_values() {
        let root = parse("domain: x\nseeds:\n  - id: é1\n    tags: [a, b]\n").unwrap().unwrap();
        assert_eq!(root.pos, Pos { line: 1, column: 1 });
        let seeds = root.get("seeds").unwrap();
        let Value::List(items) = &seeds.value else { panic!("not a list") };
        assert_eq!(items[0].pos, Pos { line: 3, column: 5 });
        assert_eq!(items[0].get("id").unwrap().pos, Pos { line: 3, column: 9 });
        assert_eq!(items[0].get("tags").unwrap().kind(), "a list");
    }

    #[test]
    fn scalars_stay_text_and_nulls_are_null() {
        let root = parse("a: 42\nb: yes\nc:\nd: ~\ne: 'null'\n").unwrap().unwrap();
        assert_eq!(root.get("a").unwrap().as_text(), Some("42"));
        assert_eq!(root.get("b").unwrap().as_text(), Some("yes"));
        assert!(root.get("c").unwrap().is_null());
        assert!(root.get("d").unwrap().is_null());
        assert_eq!(root.get("e").unwrap().as_text(), Some("null"));
    }

    #[test]
    fn aliases_resolve() {
        let root = parse("a: &x [1, 2]\nb: *x\n").unwrap().unwrap();
        assert_eq!(root.get("b").unwrap().kind(), "a list");
    }

    /// Nine levels of ten aliases each: 10⁹ values from a few hundred bytes (also the config
    /// tests' input).
    pub(crate) fn laughs() -> String {
        let mut text =
            String::from("a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n");
        for (i, c) in "bcdefghi".chars().enumerate() {
            let prev = (b'a' + i as u8) as char;
            text.push_str(&format!("{c}: &{c} [{}]\n", vec![format!("*{prev}"); 10].join(",")));
        }
        text
    }

    #[test]
    fn alias_expansion_is_bounded_with_the_line_named() {
        let text = laughs();
        let err = parse(&text).unwrap_err();
        assert!(err.message.contains("billion laughs"), "{err}");
        assert!(err.pos.line >= 2, "{err}");
        #[derive(serde::Deserialize)]
        struct Any {
            #[allow(dead_code)]
            a: serde_yaml::Value,
        }
        let err = from_str::<Any>(&text).err().expect("refused");
        assert!(err.message.contains("billion laughs"), "{err}");
        // Modest aliasing still reads.
        assert!(parse("a: &x [1, 2]\nb: [*x, *x, *x]\n").is_ok());
        // Few values, long text: a 100 KB string through four levels of ten aliases is 1 GB.
        let mut text = format!("a: &a \"{}\"\n", "x".repeat(100_000));
        for (i, c) in "bcde".chars().enumerate() {
            let prev = (b'a' + i as u8) as char;
            text.push_str(&format!("{c}: &{c} [{}]\n", vec![format!("*{prev}"); 10].join(",")));
        }
        let err = parse(&text).unwrap_err();
        assert!(err.message.contains("billion laughs"), "{err}");
        assert!(from_str::<Any>(&text).is_err());
        // The same string used ten times is fine.
        assert!(parse(&text[..text.find("c:").unwrap()]).is_ok());
    }

    #[test]
    fn syntax_errors_carry_a_position() {
        let err = parse("a: b\n  c: d\n").unwrap_err();
        assert_eq!(err.pos, Pos { line: 2, column: 4 });
    }

    #[test]
    fn empty_text_has_no_document() {
        assert_eq!(parse("# only a comment\n").unwrap(), None);
    }
}

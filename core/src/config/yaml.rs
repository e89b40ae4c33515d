//! A YAML document as a tree of nodes that remember where they are.
//!
//! serde stops at the first error and forgets positions; `projector check`
//! must report every error at once with `file:line:column`. So the config is
//! read in two steps: this module turns the text into [`Node`]s with their
//! positions (duplicate keys kept, so they can be reported), and
//! [`super::decode`] reads the nodes into the config model, collecting errors.

use saphyr_parser::{Event, Parser, ScalarStyle, Span};

/// A position in the config file: 1-based line and column.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Pos {
    /// Line, from 1.
    pub line: usize,
    /// Column, from 1.
    pub column: usize,
}

impl Pos {
    /// The position `chars` characters to the right (for offsets inside a
    /// one-line scalar).
    pub fn shifted(self, chars: usize) -> Pos {
        Pos { line: self.line, column: self.column + chars }
    }
}

/// A node of the YAML tree.
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    /// Where the node starts.
    pub pos: Pos,
    /// What it holds.
    pub kind: NodeKind,
}

/// The content of a node.
#[derive(Clone, Debug, PartialEq)]
pub enum NodeKind {
    /// A scalar: its text and how it was written.
    Scalar {
        /// The scalar's value, quotes and escapes resolved.
        text: String,
        /// Plain (unquoted) scalars can be numbers, booleans or null.
        style: ScalarKind,
    },
    /// A sequence.
    Seq(Vec<Node>),
    /// A mapping, entries in document order, duplicates kept.
    Map(Vec<(Node, Node)>),
}

/// How a scalar was written, which decides whether `7` is a number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScalarKind {
    /// Unquoted, on one line: characters map one to one to columns.
    Plain,
    /// In single quotes (one column of quote before the text; `''` is a
    /// quote).
    SingleQuoted,
    /// In double quotes (one column of quote before the text; `\` escapes).
    DoubleQuoted,
    /// A block scalar (`|` or `>`).
    Block,
}

impl Node {
    /// A short name of the node's YAML type, for messages.
    pub fn type_name(&self) -> &'static str {
        match &self.kind {
            NodeKind::Scalar { .. } if self.is_null() => "null",
            NodeKind::Scalar { .. } => "scalar",
            NodeKind::Seq(_) => "list",
            NodeKind::Map(_) => "mapping",
        }
    }

    /// `~`, `null` or nothing, unquoted.
    pub fn is_null(&self) -> bool {
        matches!(&self.kind, NodeKind::Scalar { text, style: ScalarKind::Plain } if matches!(text.as_str(), "" | "~" | "null" | "Null" | "NULL"))
    }

    /// The scalar's text, if the node is a scalar.
    pub fn as_scalar(&self) -> Option<&str> {
        match &self.kind {
            NodeKind::Scalar { text, .. } => Some(text),
            _ => None,
        }
    }

    /// The position of the character `offset` characters into a scalar's
    /// text, as exact as the scalar's style allows.
    pub fn pos_in_scalar(&self, offset: usize) -> Pos {
        match &self.kind {
            NodeKind::Scalar { text, style: ScalarKind::Plain } if !text.contains('\n') => self.pos.shifted(offset),
            NodeKind::Scalar { text, style: ScalarKind::SingleQuoted } if !text.contains(['\n', '\'']) => {
                self.pos.shifted(offset + 1)
            }
            NodeKind::Scalar { text, style: ScalarKind::DoubleQuoted } if !text.contains(['\n', '\\', '"']) => {
                self.pos.shifted(offset + 1)
            }
            _ => self.pos,
        }
    }
}

/// A YAML syntax error.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct YamlError {
    /// Where the parser stopped.
    pub pos: Pos,
    /// What the parser said.
    pub message: String,
}

fn pos_of(span: &Span) -> Pos {
    Pos { line: span.start.line(), column: span.start.col() + 1 }
}

/// Parses one YAML document into a node tree. An empty document is `None`.
pub fn parse(text: &str) -> Result<Option<Node>, YamlError> {
    // Anchors are resolved by copying the anchored node at each alias.
    let mut anchors: Vec<(usize, Node)> = Vec::new();
    // Open collections: the node being built and the anchor id it carries.
    let mut stack: Vec<(Node, usize)> = Vec::new();
    let mut root: Option<Node> = None;
    let mut documents = 0;
    for item in Parser::new_from_str(text) {
        let (event, span) = item.map_err(|error| YamlError {
            pos: Pos { line: error.marker().line(), column: error.marker().col() + 1 },
            message: error.info().to_string(),
        })?;
        let pos = pos_of(&span);
        let finished = match event {
            Event::DocumentStart(_) => {
                documents += 1;
                if documents > 1 {
                    return Err(YamlError {
                        pos,
                        message: "only one YAML document is allowed in a config file".into(),
                    });
                }
                None
            }
            Event::Scalar(value, style, anchor, _tag) => {
                let style = match style {
                    ScalarStyle::Plain => ScalarKind::Plain,
                    ScalarStyle::SingleQuoted => ScalarKind::SingleQuoted,
                    ScalarStyle::DoubleQuoted => ScalarKind::DoubleQuoted,
                    _ => ScalarKind::Block,
                };
                let node = Node { pos, kind: NodeKind::Scalar { text: value.into_owned(), style } };
                if anchor > 0 {
                    anchors.push((anchor, node.clone()));
                }
                Some(node)
            }
            Event::SequenceStart(anchor, _) => {
                stack.push((Node { pos, kind: NodeKind::Seq(Vec::new()) }, anchor));
                None
            }
            Event::MappingStart(anchor, _) => {
                stack.push((Node { pos, kind: NodeKind::Map(Vec::new()) }, anchor));
                None
            }
            Event::SequenceEnd | Event::MappingEnd => match stack.pop() {
                Some((node, anchor)) => {
                    if anchor > 0 {
                        anchors.push((anchor, node.clone()));
                    }
                    Some(node)
                }
                None => None,
            },
            Event::Alias(id) => match anchors.iter().rev().find(|(anchor, _)| *anchor == id) {
                Some((_, node)) => Some(Node { pos, kind: node.kind.clone() }),
                None => return Err(YamlError { pos, message: "alias to an unknown anchor".into() }),
            },
            Event::StreamStart | Event::StreamEnd | Event::DocumentEnd | Event::Nothing => None,
        };
        if let Some(node) = finished {
            attach(&mut stack, &mut root, node);
        }
    }
    Ok(root)
}

/// Adds a finished node to the collection being built, or makes it the root.
fn attach(stack: &mut [(Node, usize)], root: &mut Option<Node>, node: Node) {
    match stack.last_mut() {
        Some((Node { kind: NodeKind::Seq(items), .. }, _)) => items.push(node),
        Some((Node { kind: NodeKind::Map(entries), .. }, _)) => {
            // A mapping receives key and value alternately; a pending key is
            // stored with a placeholder value until its value arrives.
            match entries.last_mut() {
                Some((_, value)) if value.pos == PENDING => *value = node,
                _ => entries.push((node, Node { pos: PENDING, kind: NodeKind::Seq(Vec::new()) })),
            }
        }
        Some(_) | None => *root = Some(node),
    }
}

/// Replaces `${NAME}` and `${NAME:-default}` in every scalar with the value
/// of the environment variable `NAME` (as `lookup` gives it), so secrets and
/// addresses need not be written into the file; `$${` stays `${`. Returns
/// the variables that are unset and have no default, with their places.
pub fn expand_env(node: &mut Node, lookup: &dyn Fn(&str) -> Option<String>) -> Vec<(Pos, String)> {
    let mut missing = Vec::new();
    expand_node(node, lookup, &mut missing);
    missing
}

fn expand_node(node: &mut Node, lookup: &dyn Fn(&str) -> Option<String>, missing: &mut Vec<(Pos, String)>) {
    match &mut node.kind {
        NodeKind::Scalar { text, style } => {
            if text.contains("${") {
                let (expanded, unset) = expand_text(text, lookup);
                for name in unset {
                    missing.push((node.pos, name));
                }
                if expanded != *text {
                    *text = expanded;
                    // Offsets into the text no longer map to columns.
                    *style = ScalarKind::Block;
                }
            }
        }
        NodeKind::Seq(items) => items.iter_mut().for_each(|item| expand_node(item, lookup, missing)),
        NodeKind::Map(entries) => entries.iter_mut().for_each(|(_, value)| expand_node(value, lookup, missing)),
    }
}

fn expand_text(text: &str, lookup: &dyn Fn(&str) -> Option<String>) -> (String, Vec<String>) {
    let mut out = String::with_capacity(text.len());
    let mut unset = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        if rest[..start].ends_with('$') {
            out.push_str(&rest[..start - 1]);
            out.push_str("${");
            rest = &rest[start + 2..];
            continue;
        }
        out.push_str(&rest[..start]);
        let Some(end) = rest[start..].find('}') else {
            out.push_str(&rest[start..]);
            rest = "";
            break;
        };
        let inner = &rest[start + 2..start + end];
        let (name, default) = match inner.split_once(":-") {
            Some((name, default)) => (name, Some(default)),
            None => (inner, None),
        };
        match (lookup(name).filter(|v| !v.is_empty()), default) {
            (Some(value), _) => out.push_str(&value),
            (None, Some(default)) => out.push_str(default),
            (None, None) => unset.push(name.to_string()),
        }
        rest = &rest[start + end + 1..];
    }
    out.push_str(rest);
    (out, unset)
}

/// Marks a mapping key whose value has not been parsed yet.
const PENDING: Pos = Pos { line: 0, column: 0 };

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_positions_and_duplicates() {
        let root = parse("a: 1\nb:\n  - x\n  - 'y'\na: 2\n").unwrap().unwrap();
        let NodeKind::Map(entries) = &root.kind else { panic!("not a map") };
        assert_eq!(entries.len(), 3);
        assert_eq!(entries[2].0.pos, Pos { line: 5, column: 1 });
        assert_eq!(entries[2].1.pos, Pos { line: 5, column: 4 });
        let NodeKind::Seq(items) = &entries[1].1.kind else { panic!("not a seq") };
        assert_eq!(items[1].pos, Pos { line: 4, column: 5 });
        assert_eq!(items[1].kind, NodeKind::Scalar { text: "y".into(), style: ScalarKind::SingleQuoted });
    }

    #[test]
    fn expands_environment_variables() {
        let lookup = |name: &str| (name == "BROKERS").then(|| "10.0.0.1:9092".to_string());
        let mut root = parse("a: ${BROKERS}\nb: x-${MISSING:-dflt}-y\nc: $${BROKERS}\nd: ${NOPE}\n").unwrap().unwrap();
        let missing = expand_env(&mut root, &lookup);
        let NodeKind::Map(entries) = &root.kind else { panic!("not a map") };
        let texts: Vec<&str> = entries.iter().map(|(_, v)| v.as_scalar().unwrap()).collect();
        assert_eq!(texts, ["10.0.0.1:9092", "x-dflt-y", "${BROKERS}", ""]);
        assert_eq!(missing, [(Pos { line: 4, column: 4 }, "NOPE".to_string())]);
    }

    #[test]
    fn reports_syntax_errors_with_position() {
        let error = parse("a: [1, 2\nb: 3\n").unwrap_err();
        assert!(error.pos.line >= 1, "{error:?}");
    }

    #[test]
    fn resolves_aliases_and_empty_documents() {
        let root = parse("base: &b {x: 1}\nother: *b\n").unwrap().unwrap();
        let NodeKind::Map(entries) = &root.kind else { panic!("not a map") };
        assert_eq!(entries[0].1.kind, entries[1].1.kind);
        assert_eq!(parse("").unwrap(), None);
        assert_eq!(parse("# only a comment\n").unwrap(), None);
    }
}

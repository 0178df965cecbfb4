//! Reading a seed file: bytes → UTF-8 → YAML tree → [`SeedFile`], collecting every problem.

use std::collections::HashMap;
use std::path::Path;

use super::file::{PromptOverrides, Seed, SeedFile};
use super::problem::did_you_mean;
use super::problem::Problem;
use super::validate::{validate, Limits, Spans};
use crate::yaml::{self, Node, Pos, Value};

const TOP_KEYS: [&str; 4] = ["domain", "description", "prompts", "seeds"];
const SEED_KEYS: [&str; 6] = ["id", "task", "tags", "instruction", "input", "output"];

/// A file that was read: what could be understood of it, and everything wrong with it.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub file: SeedFile,
    pub problems: Vec<Problem>,
}

impl Loaded {
    /// False when saving `file` back would drop something the source holds (see
    /// [`Problem::lossy`]).
    pub fn is_lossless(&self) -> bool {
        !self.problems.iter().any(|p| p.lossy)
    }

    /// Whether nothing but warnings was found.
    pub fn is_valid(&self) -> bool {
        self.errors() == 0
    }

    /// Problems that are not warnings.
    pub fn errors(&self) -> usize {
        self.problems.iter().filter(|p| !p.warning).count()
    }
}

/// Reads and checks `path`. Only an unreadable file is an `Err`; everything else, a syntax error
/// included, comes back as problems (with an empty [`SeedFile`] when nothing could be read).
pub fn load(path: &Path, limits: &Limits) -> std::io::Result<Loaded> {
    let bytes = crate::fsutil::read_regular(path)?;
    let mut loaded = load_bytes(&bytes, limits);
    for p in &mut loaded.problems {
        p.file = Some(path.to_path_buf());
    }
    Ok(loaded)
}

/// [`load`] on text already in memory; problems name no file.
pub fn load_str(text: &str, limits: &Limits) -> Loaded {
    load_bytes(text.as_bytes(), limits)
}

fn load_bytes(bytes: &[u8], limits: &Limits) -> Loaded {
    let text = match std::str::from_utf8(bytes) {
        Ok(t) => t,
        Err(e) => return fatal(utf8_pos(bytes, e.valid_up_to()), not_utf8_message(bytes, e.valid_up_to())),
    };
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    // YAML allows no NUL (nor most control characters); a parser stops or drops text at one.
    if let Some(at) = text.find(|c: char| c == '\0' || (c.is_control() && !matches!(c, '\n' | '\r' | '\t' | '\u{85}')))
    {
        let c = text[at..].chars().next().unwrap_or('\0');
        return fatal(
            utf8_pos(text.as_bytes(), at),
            format!(
                "a control character (U+{:04X}) that YAML does not allow; remove it (write \"\\0\" or \"\\x{:02X}\" inside a double-quoted string to mean it)",
                c as u32,
                c as u32
            ),
        );
    }
    let root = match yaml::parse(text) {
        Ok(Some(root)) => root,
        Ok(None) => {
            return fatal(
                Pos { line: 1, column: 1 },
                "the file is empty; a seed file needs `domain:` and `seeds:`".into(),
            )
        }
        Err(e) => return fatal(e.pos, format!("YAML syntax error: {}; fix the YAML at this position", e.message)),
    };
    let mut reader = Reader::default();
    let file = reader.file(&root);
    let mut problems = reader.problems;
    // A value that could not be read is reported once, as what it is, not again as missing.
    let content = validate(&file, limits, Some(&reader.spans));
    // By lookup, not by scanning every problem for every problem: a file of 100,000 bad seeds
    // is read in a fraction of a second.
    let read_fields: std::collections::HashSet<(Option<usize>, &str)> =
        problems.iter().map(|l| (l.seed, l.field.as_str())).collect();
    let shadowed =
        |p: &Problem| read_fields.contains(&(p.seed, p.field.as_str())) || read_fields.contains(&(p.seed, ""));
    let content: Vec<Problem> = content.into_iter().filter(|p| !shadowed(p)).collect();
    problems.extend(content);
    problems.sort_by_key(|p| p.pos);
    Loaded { file, problems }
}

fn fatal(pos: Pos, message: String) -> Loaded {
    Loaded {
        file: SeedFile::default(),
        problems: vec![Problem {
            file: None,
            pos: Some(pos),
            seed: None,
            seed_id: None,
            field: String::new(),
            message,
            lossy: true,
            warning: false,
        }],
    }
}

fn not_utf8_message(bytes: &[u8], at: usize) -> String {
    format!(
        "is not valid UTF-8 (byte 0x{:02x} at offset {at}); re-save the file as UTF-8",
        bytes.get(at).copied().unwrap_or(0)
    )
}

/// Line and column (in characters) of byte `at`, counting only the valid prefix.
fn utf8_pos(bytes: &[u8], at: usize) -> Pos {
    let prefix = std::str::from_utf8(&bytes[..at]).unwrap_or("");
    let line = prefix.matches('\n').count() + 1;
    let column = prefix.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    Pos { line, column }
}

/// Where a problem with a value points: the value, or its key when the value is empty (an empty
/// value's own position is wherever the next line starts).
fn value_pos(key: Pos, value: &Node) -> Pos {
    if value.is_null() {
        key
    } else {
        value.pos
    }
}

#[derive(Default)]
struct Reader {
    problems: Vec<Problem>,
    spans: Spans,
}

impl Reader {
    fn lossy(&mut self, pos: Pos, seed: Option<(usize, &str)>, field: &str, message: String) {
        self.problems.push(Problem {
            file: None,
            pos: Some(pos),
            seed: seed.map(|(i, _)| i),
            seed_id: seed.map(|(_, id)| id.to_string()).filter(|s| !s.is_empty()),
            field: field.to_string(),
            message,
            lossy: true,
            warning: false,
        });
    }

    /// The entries of a mapping with duplicate and unknown keys reported; `None` (reported) when
    /// `node` is not a mapping.
    fn mapping<'a>(
        &mut self,
        node: &'a Node,
        known: &[&str],
        seed: Option<(usize, &str)>,
        what: &str,
    ) -> Option<HashMap<&'a str, (Pos, &'a Node)>> {
        let Some(entries) = node.entries() else {
            let field = if seed.is_some() { "" } else { what };
            self.lossy(
                node.pos,
                seed,
                field,
                format!("must be a mapping with {}; found {}", known.join(", "), node.kind()),
            );
            return None;
        };
        let mut map = HashMap::new();
        for (key, value) in entries {
            let Some(name) = key.as_text() else {
                self.lossy(key.pos, seed, "", format!("keys must be plain names; found {}", key.kind()));
                continue;
            };
            if !known.contains(&name) {
                let hint = did_you_mean(name, known).map(|s| format!(" (did you mean \"{s}\"?)")).unwrap_or_default();
                self.lossy(key.pos, seed, name, format!("unknown key{hint}; expected one of {}", known.join(", ")));
            } else if map.insert(name, (key.pos, value)).is_some() {
                self.lossy(key.pos, seed, name, "appears twice in this mapping; keep one".into());
            }
        }
        Some(map)
    }

    /// Text under `key`; empty when absent or null; reported and empty when of another type.
    fn text(&mut self, map: &HashMap<&str, (Pos, &Node)>, key: &str, seed: Option<(usize, &str)>) -> String {
        match map.get(key) {
            None => String::new(),
            Some((_, node)) => match &node.value {
                Value::Text(s) => s.clone(),
                Value::Null => String::new(),
                _ => {
                    self.lossy(
                        node.pos,
                        seed,
                        key,
                        format!("must be text, found {}; quote it or use a `|` block", node.kind()),
                    );
                    String::new()
                }
            },
        }
    }

    fn file(&mut self, root: &Node) -> SeedFile {
        let mut file = SeedFile::default();
        let Some(map) = self.mapping(root, &TOP_KEYS, None, "") else {
            return file;
        };
        self.spans.root = Some(root.pos);
        for (key, (key_pos, node)) in &map {
            self.spans.top.insert(key.to_string(), value_pos(*key_pos, node));
        }
        file.domain = self.text(&map, "domain", None);
        file.description = self.text(&map, "description", None);
        if let Some((_, node)) = map.get("prompts").filter(|(_, n)| !n.is_null()) {
            file.prompts = self.prompts(node);
        }
        match map.get("seeds").map(|(_, n)| (&n.value, *n)) {
            None | Some((Value::Null, _)) => {}
            Some((Value::List(items), _)) => {
                for (i, item) in items.iter().enumerate() {
                    let seed = self.seed(i, item);
                    file.seeds.push(seed);
                }
            }
            Some((_, node)) => self.lossy(
                node.pos,
                None,
                "seeds",
                format!("must be a list of seeds (`- id: …`), found {}", node.kind()),
            ),
        }
        file
    }

    fn prompts(&mut self, node: &Node) -> PromptOverrides {
        let Some(map) = self.mapping(node, &PromptOverrides::KEYS, None, "prompts") else {
            return PromptOverrides::default();
        };
        let mut get = |key: &str| Some(self.text(&map, key, None)).filter(|_| map.contains_key(key));
        PromptOverrides {
            instruction_generation: get("instruction_generation"),
            response_generation: get("response_generation"),
        }
    }

    fn seed(&mut self, index: usize, node: &Node) -> Seed {
        let id = node.get("id").and_then(Node::as_text).unwrap_or("").to_string();
        let here = Some((index, id.as_str()));
        let mut fields = HashMap::new();
        let mut seed = Seed {
            id: id.clone(),
            task: String::new(),
            tags: Vec::new(),
            instruction: String::new(),
            input: String::new(),
            output: String::new(),
        };
        if let Some(map) = self.mapping(node, &SEED_KEYS, here, "") {
            for (key, (key_pos, value)) in &map {
                fields.insert(key.to_string(), value_pos(*key_pos, value));
            }
            seed.id = self.text(&map, "id", here);
            seed.task = self.text(&map, "task", here);
            seed.instruction = self.text(&map, "instruction", here);
            seed.input = self.text(&map, "input", here);
            seed.output = self.text(&map, "output", here);
            seed.tags = self.tags(map.get("tags").map(|(_, n)| *n), here);
        }
        self.spans.seeds.push((node.pos, fields));
        seed
    }

    fn tags(&mut self, node: Option<&Node>, here: Option<(usize, &str)>) -> Vec<String> {
        let Some(node) = node else { return Vec::new() };
        match &node.value {
            Value::Null => Vec::new(),
            // A single tag written without brackets.
            Value::Text(s) => vec![s.clone()],
            Value::List(items) => {
                let mut tags = Vec::new();
                for item in items {
                    match item.as_text() {
                        Some(t) => tags.push(t.to_string()),
                        None => {
                            self.lossy(item.pos, here, "tags", format!("each tag must be text, found {}", item.kind()))
                        }
                    }
                }
                tags
            }
            Value::Map(_) => {
                self.lossy(
                    node.pos,
                    here,
                    "tags",
                    "must be a list such as `[factoid, passage]`, found a mapping".into(),
                );
                Vec::new()
            }
        }
    }
}

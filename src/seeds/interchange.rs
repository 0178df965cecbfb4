//! Seeds in other tools' formats: imports from Alpaca/BoX JSONL, self-instruct's
//! `seed_tasks.jsonl` and InstructLab's `qna.yaml`; export to JSONL.
//!
//! An import reports every bad record with its file and line, and produces nothing unless asked
//! to skip them.

use std::path::Path;

use serde::Serialize;
use serde_json::Value as Json;

use super::file::{Seed, SeedFile, Task};
use super::problem::{Problem, Problems};
use crate::yaml::{self, Node, Pos, Value};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// One JSON object a line: {instruction, input?, output} (Alpaca, BoX); optional id, task, tags.
    AlpacaJsonl,
    /// self-instruct's seed_tasks.jsonl: {id, name, instruction, instances: [{input, output}], is_classification}.
    SelfInstruct,
    /// InstructLab qna.yaml: seed_examples of {context?, question, answer}, or (version 3)
    /// {context, questions_and_answers: [{question, answer}]}.
    Instructlab,
}

pub struct ImportOptions {
    /// The domain name, over the file's own (InstructLab has one).
    pub domain: Option<String>,
    /// The domain when neither names one (the output file's stem, say).
    pub default_domain: String,
    /// Task for every seed, instead of the format's own hint.
    pub task: Option<Task>,
    /// Import the good records and report the bad ones, instead of importing nothing.
    pub skip_invalid: bool,
}

/// What an import made, and the records it skipped (only with `skip_invalid`).
pub struct Imported {
    pub file: SeedFile,
    pub skipped: Vec<Problem>,
}

pub fn import(format: Format, path: &Path, opts: &ImportOptions) -> anyhow::Result<Imported> {
    let bytes = std::fs::read(path).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
    let text = String::from_utf8(bytes).map_err(|e| {
        problems(
            path,
            vec![issue(
                None,
                "",
                format!("is not valid UTF-8 (at byte {}); re-save it as UTF-8", e.utf8_error().valid_up_to()),
            )],
        )
    })?;
    let Partial(mut file, mut bad) = match format {
        Format::AlpacaJsonl => from_records(&text, alpaca_record),
        Format::SelfInstruct => from_records(&text, self_instruct_record),
        Format::Instructlab => instructlab(&text),
    };
    for p in &mut bad {
        p.file = Some(path.to_path_buf());
    }
    if !bad.is_empty() && !opts.skip_invalid {
        return Err(Problems(bad).into());
    }
    if let Some(domain) = &opts.domain {
        file.domain = domain.clone();
    } else if file.domain.trim().is_empty() {
        file.domain = opts.default_domain.clone();
    }
    let mut numbered =
        SeedFile { domain: file.domain.clone(), description: file.description.clone(), ..Default::default() };
    let prefix = numbered.id_prefix();
    for mut seed in std::mem::take(&mut file.seeds) {
        if seed.id.is_empty() || numbered.seeds.iter().any(|s| s.id == seed.id) {
            seed.id = numbered.fresh_id(&prefix);
        }
        if let Some(task) = opts.task {
            seed.task = task.to_string();
        }
        numbered.seeds.push(seed);
    }
    Ok(Imported { file: numbered, skipped: bad })
}

fn problems(path: &Path, mut list: Vec<Problem>) -> Problems {
    for p in &mut list {
        p.file = Some(path.to_path_buf());
    }
    Problems(list)
}

fn issue(pos: Option<Pos>, field: &str, message: String) -> Problem {
    Problem { file: None, pos, seed: None, seed_id: None, field: field.into(), message, lossy: true, warning: false }
}

/// Seeds read so far and the records that could not be read.
struct Partial(SeedFile, Vec<Problem>);

// A bad record is reported once per line, so the Problem's size does not matter here.
#[allow(clippy::result_large_err)]
type RecordFn = fn(&serde_json::Map<String, Json>, Pos) -> Result<Vec<Seed>, Problem>;

fn from_records(text: &str, read: RecordFn) -> Partial {
    let mut file = SeedFile::default();
    let mut bad = Vec::new();
    for item in crate::lines::Lines::of(text.as_bytes(), 0).all() {
        let (line, bytes) = match item {
            Ok(l) => l,
            Err(e) => {
                bad.push(issue(Some(Pos { line: e.line(), column: 1 }), "", e.to_string()));
                break;
            }
        };
        let pos = Pos { line, column: 1 };
        match serde_json::from_slice::<Json>(&bytes) {
            Err(e) => {
                // serde_json ends its message with the position, which the problem carries.
                let message = e.to_string();
                let message = message.split(" at line ").next().unwrap_or(&message);
                bad.push(issue(Some(Pos { line, column: e.column() }), "", format!("not valid JSON: {message}")))
            }
            Ok(Json::Object(map)) => match read(&map, pos) {
                Ok(seeds) => file.seeds.extend(seeds),
                Err(p) => bad.push(p),
            },
            Ok(_) => bad.push(issue(Some(pos), "", "each line must be one JSON object".into())),
        }
    }
    if file.seeds.is_empty() && bad.is_empty() {
        bad.push(issue(Some(Pos { line: 1, column: 1 }), "", "holds no records".into()));
    }
    Partial(file, bad)
}

#[allow(clippy::result_large_err)]
fn json_text(map: &serde_json::Map<String, Json>, key: &str, pos: Pos, required: bool) -> Result<String, Problem> {
    match map.get(key) {
        Some(Json::String(s)) if !(required && s.trim().is_empty()) => Ok(s.clone()),
        Some(Json::String(_)) => Err(issue(Some(pos), key, "is empty".into())),
        Some(Json::Null) | None if !required => Ok(String::new()),
        None | Some(Json::Null) => Err(issue(Some(pos), key, "is missing".into())),
        Some(other) => Err(issue(Some(pos), key, format!("must be a string, found {}", json_kind(other)))),
    }
}

fn json_kind(v: &Json) -> &'static str {
    match v {
        Json::Null => "null",
        Json::Bool(_) => "a boolean",
        Json::Number(_) => "a number",
        Json::String(_) => "a string",
        Json::Array(_) => "an array",
        Json::Object(_) => "an object",
    }
}

#[allow(clippy::result_large_err)]
fn alpaca_record(map: &serde_json::Map<String, Json>, pos: Pos) -> Result<Vec<Seed>, Problem> {
    let task = match map.get("task") {
        Some(Json::String(t)) => t.parse::<Task>().map_err(|_| {
            issue(Some(pos), "task", format!("\"{t}\" is not a task; use one of qa, ner, re, sa, cls, sum, gen, other"))
        })?,
        _ => Task::Other,
    };
    let tags = match map.get("tags") {
        Some(Json::Array(items)) => items.iter().filter_map(|t| t.as_str().map(str::to_string)).collect(),
        _ => Vec::new(),
    };
    Ok(vec![Seed {
        id: json_text(map, "id", pos, false)?,
        task: task.to_string(),
        tags,
        instruction: json_text(map, "instruction", pos, true)?,
        input: json_text(map, "input", pos, false)?,
        output: json_text(map, "output", pos, true)?,
    }])
}

#[allow(clippy::result_large_err)]
fn self_instruct_record(map: &serde_json::Map<String, Json>, pos: Pos) -> Result<Vec<Seed>, Problem> {
    let id = sanitize_id(&json_text(map, "id", pos, false)?);
    let name = json_text(map, "name", pos, false)?;
    let instruction = json_text(map, "instruction", pos, true)?;
    let task = match map.get("is_classification") {
        Some(Json::Bool(true)) => Task::Cls,
        _ => Task::Other,
    };
    let Some(Json::Array(instances)) = map.get("instances") else {
        return Err(issue(Some(pos), "instances", "must be a list of {input, output}".into()));
    };
    if instances.is_empty() {
        return Err(issue(Some(pos), "instances", "is empty; a seed task needs at least one instance".into()));
    }
    let mut seeds = Vec::new();
    for (k, inst) in instances.iter().enumerate() {
        let Json::Object(inst) = inst else {
            return Err(issue(
                Some(pos),
                "instances",
                format!("instance {} must be an object {{input, output}}", k + 1),
            ));
        };
        let seed_id = match (id.is_empty(), instances.len()) {
            (true, _) => String::new(),
            (false, 1) => id.clone(),
            (false, _) => format!("{id}-{}", k + 1),
        };
        seeds.push(Seed {
            id: seed_id,
            task: task.to_string(),
            tags: if name.is_empty() { vec![] } else { vec![name.clone()] },
            instruction: instruction.clone(),
            input: json_text(inst, "input", pos, false)?,
            output: json_text(inst, "output", pos, true)?,
        });
    }
    Ok(seeds)
}

/// Ids keep letters, digits, '-', '_' and '.'; anything else becomes '-'.
fn sanitize_id(id: &str) -> String {
    id.trim().chars().map(|c| if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') { c } else { '-' }).collect()
}

fn instructlab(text: &str) -> Partial {
    let fail =
        |pos: Pos, field: &str, message: String| Partial(SeedFile::default(), vec![issue(Some(pos), field, message)]);
    let root = match yaml::parse(text) {
        Ok(Some(root)) => root,
        Ok(None) => return fail(Pos { line: 1, column: 1 }, "", "the file is empty".into()),
        Err(e) => return fail(e.pos, "", format!("YAML syntax error: {}", e.message)),
    };
    if root.entries().is_none() {
        return fail(root.pos, "", format!("must be a mapping with seed_examples, found {}", root.kind()));
    }
    let mut file = SeedFile {
        domain: root.get("domain").and_then(Node::as_text).unwrap_or("").to_string(),
        description: root
            .get("task_description")
            .or_else(|| root.get("document_outline"))
            .and_then(Node::as_text)
            .unwrap_or("")
            .trim()
            .to_string(),
        ..Default::default()
    };
    let mut bad = Vec::new();
    let examples = match root.get("seed_examples").map(|n| (&n.value, n.pos)) {
        Some((Value::List(items), _)) => items,
        Some((_, pos)) => return fail(pos, "seed_examples", "must be a list".into()),
        None => {
            return fail(
                root.pos,
                "seed_examples",
                "is missing; an InstructLab qna.yaml lists its examples there".into(),
            )
        }
    };
    for example in examples {
        if example.entries().is_none() {
            bad.push(issue(
                Some(example.pos),
                "seed_examples",
                format!("each example must be a mapping, found {}", example.kind()),
            ));
            continue;
        }
        let context = match example.get("context") {
            None => String::new(),
            Some(n) if n.is_null() => String::new(),
            Some(n) => match n.as_text() {
                Some(t) => t.trim_end().to_string(),
                None => {
                    bad.push(issue(Some(n.pos), "context", format!("must be text, found {}", n.kind())));
                    continue;
                }
            },
        };
        // Version 3 (knowledge) nests several question/answer pairs under one context.
        let pairs: Vec<&Node> = match example.get("questions_and_answers") {
            Some(Node { value: Value::List(items), .. }) => items.iter().collect(),
            Some(n) => {
                bad.push(issue(Some(n.pos), "questions_and_answers", "must be a list of {question, answer}".into()));
                continue;
            }
            None => vec![example],
        };
        for pair in pairs {
            let text_of = |key: &str, bad: &mut Vec<Problem>| match pair.get(key) {
                Some(n) => match n.as_text().map(str::trim_end) {
                    Some(t) if !t.trim().is_empty() => Some(t.to_string()),
                    Some(_) => {
                        bad.push(issue(Some(n.pos), key, "is empty".into()));
                        None
                    }
                    None => {
                        bad.push(issue(Some(n.pos), key, format!("must be text, found {}", n.kind())));
                        None
                    }
                },
                None => {
                    bad.push(issue(Some(pair.pos), key, "is missing".into()));
                    None
                }
            };
            let (question, answer) = (text_of("question", &mut bad), text_of("answer", &mut bad));
            if let (Some(instruction), Some(output)) = (question, answer) {
                let task = if context.is_empty() { Task::Other } else { Task::Qa };
                file.seeds.push(Seed {
                    id: String::new(),
                    task: task.to_string(),
                    tags: vec![],
                    instruction,
                    input: context.clone(),
                    output,
                });
            }
        }
    }
    Partial(file, bad)
}

#[derive(Serialize)]
struct Exported<'a> {
    id: &'a str,
    instruction: &'a str,
    input: &'a str,
    output: &'a str,
    task: &'a str,
    tags: &'a [String],
}

/// One JSON object a line in Alpaca's field names, plus id, task and tags; `import --from
/// alpaca-jsonl` reads it back unchanged.
pub fn export_jsonl(file: &SeedFile) -> String {
    let mut out = String::new();
    for s in &file.seeds {
        let record = Exported {
            id: &s.id,
            instruction: &s.instruction,
            input: &s.input,
            output: &s.output,
            task: &s.task,
            tags: &s.tags,
        };
        // Serialising plain strings into JSON cannot fail.
        out.push_str(&serde_json::to_string(&record).unwrap_or_default());
        out.push('\n');
    }
    out
}

//! Content checks on an in-memory seed file. They need no source text, so the TUI runs them on
//! every keystroke; the loader runs them too and adds positions from its [`Spans`].

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::file::{is_valid_id, SeedFile, Task};
use super::problem::did_you_mean;
use super::problem::Problem;
use crate::yaml::Pos;

/// Longest accepted field, in characters. Configurable under `seeds.limits` in config.yaml.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    pub instruction: usize,
    pub input: usize,
    pub output: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { instruction: 1000, input: 8000, output: 8000 }
    }
}

/// Where each value of a loaded file starts, so problems can point at it.
#[derive(Debug, Default, Clone)]
pub struct Spans {
    /// Where the document starts: the place for a missing top-level key.
    pub root: Option<Pos>,
    pub top: HashMap<String, Pos>,
    /// Per seed: where its mapping starts, and where each of its values starts.
    pub seeds: Vec<(Pos, HashMap<String, Pos>)>,
}

impl Spans {
    /// The value's position, else its seed's, else nothing.
    pub fn locate(&self, seed: Option<usize>, field: &str) -> Option<Pos> {
        match seed {
            None => self.top.get(field).copied().or(self.root),
            Some(i) => {
                let (item, fields) = self.seeds.get(i)?;
                Some(fields.get(field).copied().unwrap_or(*item))
            }
        }
    }
}

const TASK_NAMES: [&str; 8] = ["qa", "ner", "re", "sa", "cls", "sum", "gen", "other"];

/// Every content problem in `file`: empty or over-long fields, duplicate ids and instructions,
/// unknown tasks. With `spans`, each problem carries the position of the value it is about.
pub fn validate(file: &SeedFile, limits: &Limits, spans: Option<&Spans>) -> Vec<Problem> {
    let mut out = Vec::new();
    let mut push = |seed: Option<usize>, field: &str, message: String, warning: bool| {
        let seed_id = seed.and_then(|i| file.seeds.get(i)).map(|s| s.id.clone());
        out.push(Problem {
            file: None,
            pos: spans.and_then(|s| s.locate(seed, field)),
            seed,
            seed_id,
            field: field.to_string(),
            message,
            lossy: false,
            warning,
        });
    };
    let mut add = |seed: Option<usize>, field: &str, message: String| push(seed, field, message, false);
    let line_of = |i: usize| -> String {
        match spans.and_then(|s| s.locate(Some(i), "")) {
            Some(pos) => format!("seeds[{i}] (line {})", pos.line),
            None => format!("seeds[{i}]"),
        }
    };

    if file.domain.trim().is_empty() {
        add(None, "domain", "is missing or empty; name the domain, e.g. `domain: biomedical`".into());
    }
    if file.seeds.is_empty() {
        add(None, "seeds", "the file has no seeds; add at least one under `seeds:`".into());
    }

    let mut ids: HashMap<&str, usize> = HashMap::new();
    let mut instructions: HashMap<String, usize> = HashMap::new();
    let mut pairs: HashMap<(String, String), usize> = HashMap::new();
    // Repeated instructions with other inputs are warnings, said after the errors' pass.
    let mut repeated: Vec<(usize, usize)> = Vec::new();
    for (i, seed) in file.seeds.iter().enumerate() {
        let id = seed.id.trim();
        if id.is_empty() {
            add(Some(i), "id", "is missing or empty; give every seed a unique id such as bio-001".into());
        } else if !is_valid_id(&seed.id) {
            add(Some(i), "id", format!("\"{}\" may only hold letters, digits, '-', '_' and '.'", seed.id));
        } else if let Some(&first) = ids.get(id) {
            add(Some(i), "id", format!("\"{id}\" is already the id of {}; ids must be unique", line_of(first)));
        } else {
            ids.insert(id, i);
        }

        for (field, message) in task_problems(seed) {
            add(Some(i), field, message);
        }

        if seed.instruction.trim().is_empty() {
            add(Some(i), "instruction", "is missing or empty; write the task this seed demonstrates".into());
        } else {
            let key = normalize(&seed.instruction);
            let pair = (key.clone(), normalize(&seed.input));
            match (pairs.get(&pair), instructions.get(&key)) {
                (Some(&first), _) => add(
                    Some(i),
                    "instruction",
                    format!(
                        "repeats the instruction and input of {}; each seed should teach something new",
                        line_of(first)
                    ),
                ),
                (None, Some(&first)) => {
                    pairs.insert(pair, i);
                    repeated.push((i, first));
                }
                (None, None) => {
                    pairs.insert(pair, i);
                    instructions.insert(key, i);
                }
            }
        }
        for (field, message) in content_problems(seed, limits) {
            add(Some(i), field, message);
        }
    }
    for (i, first) in repeated {
        push(
            Some(i),
            "instruction",
            format!(
                "repeats the instruction of {} with another input (fine for classification seeds; distinct instructions teach more)",
                line_of(first)
            ),
            true,
        );
    }
    out
}

/// A seed's task and tags: the task known, no tag empty.
fn task_problems(seed: &super::file::Seed) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    match seed.task.trim() {
        "" => out.push(("task", format!("is missing; use one of {}", TASK_NAMES.join(", ")))),
        t if t.parse::<Task>().is_err() => {
            let hint = did_you_mean(t, &TASK_NAMES).map(|s| format!(" (did you mean \"{s}\"?)")).unwrap_or_default();
            out.push(("task", format!("\"{t}\" is not a task{hint}; use one of {}", TASK_NAMES.join(", "))));
        }
        _ => {}
    }
    for (k, tag) in seed.tags.iter().enumerate() {
        if tag.trim().is_empty() {
            out.push(("tags", format!("tag {} is empty; remove it or name it", k + 1)));
        }
    }
    out
}

/// A seed's output present and every text within its limit.
fn content_problems(seed: &super::file::Seed, limits: &Limits) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    if seed.output.trim().is_empty() {
        out.push(("output", "is missing or empty; write the response an expert would give".into()));
    }
    for (field, text, max) in [
        ("instruction", &seed.instruction, limits.instruction),
        ("input", &seed.input, limits.input),
        ("output", &seed.output, limits.output),
    ] {
        let n = text.chars().count();
        if n > max {
            out.push((
                field,
                format!("is {n} characters long, over the limit of {max}; shorten it or raise seeds.limits.{field} in config.yaml"),
            ));
        }
    }
    out
}

/// Instructions that differ only in case and spacing count as the same.
fn normalize(s: &str) -> String {
    s.split_whitespace().map(str::to_lowercase).collect::<Vec<_>>().join(" ")
}

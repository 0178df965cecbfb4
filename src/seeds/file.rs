//! The seed file's types: a domain's [`SeedFile`], its [`Seed`] triplets, their [`Task`]
//! families and the prompt overrides a domain may carry.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The task family a seed demonstrates. The names are the short ones the paper's benchmarks use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Task {
    /// Question answering (factoid, list, yes/no, long-form).
    Qa,
    /// Named-entity recognition.
    Ner,
    /// Relation extraction (e.g. drug–drug interaction).
    Re,
    /// Sentiment analysis.
    Sa,
    /// Classification.
    Cls,
    /// Summarisation.
    Sum,
    /// Open generation.
    Gen,
    Other,
}

impl Task {
    pub const ALL: [Task; 8] = [Task::Qa, Task::Ner, Task::Re, Task::Sa, Task::Cls, Task::Sum, Task::Gen, Task::Other];

    pub fn as_str(self) -> &'static str {
        match self {
            Task::Qa => "qa",
            Task::Ner => "ner",
            Task::Re => "re",
            Task::Sa => "sa",
            Task::Cls => "cls",
            Task::Sum => "sum",
            Task::Gen => "gen",
            Task::Other => "other",
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Task::Qa => "question answering",
            Task::Ner => "named-entity recognition",
            Task::Re => "relation extraction",
            Task::Sa => "sentiment analysis",
            Task::Cls => "classification",
            Task::Sum => "summarisation",
            Task::Gen => "open generation",
            Task::Other => "other",
        }
    }

    /// The task after this one, wrapping: the TUI cycles through them.
    pub fn next(self) -> Task {
        let i = Task::ALL.iter().position(|t| *t == self).unwrap_or(0);
        Task::ALL[(i + 1) % Task::ALL.len()]
    }

    pub fn prev(self) -> Task {
        let i = Task::ALL.iter().position(|t| *t == self).unwrap_or(0);
        Task::ALL[(i + Task::ALL.len() - 1) % Task::ALL.len()]
    }
}

impl fmt::Display for Task {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Task {
    type Err = ();
    fn from_str(s: &str) -> Result<Task, ()> {
        Task::ALL.into_iter().find(|t| t.as_str() == s).ok_or(())
    }
}

/// One seed triplet. `task` is kept as written so that a file with a misspelt task still loads,
/// shows the problem, and saves back unchanged; [`Seed::task`] reads it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seed {
    pub id: String,
    pub task: String,
    #[serde(default)]
    pub tags: Vec<String>,
    pub instruction: String,
    #[serde(default)]
    pub input: String,
    pub output: String,
}

impl Seed {
    pub fn task(&self) -> Option<Task> {
        self.task.parse().ok()
    }
}

/// Per-domain replacements for the prompt templates in assets/prompts/.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PromptOverrides {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instruction_generation: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_generation: Option<String>,
}

impl PromptOverrides {
    pub const KEYS: [&'static str; 2] = ["instruction_generation", "response_generation"];

    pub fn is_empty(&self) -> bool {
        self.instruction_generation.is_none() && self.response_generation.is_none()
    }
}

/// A domain's seed file.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct SeedFile {
    pub domain: String,
    #[serde(default)]
    pub description: String,
    #[serde(default, skip_serializing_if = "PromptOverrides::is_empty")]
    pub prompts: PromptOverrides,
    pub seeds: Vec<Seed>,
}

impl SeedFile {
    /// An id not used yet in this file, `<prefix>-NNN` with the smallest free number above the
    /// highest one used.
    pub fn fresh_id(&self, prefix: &str) -> String {
        let highest = self
            .seeds
            .iter()
            .filter_map(|s| s.id.strip_prefix(prefix)?.strip_prefix('-')?.parse::<u32>().ok())
            .max()
            .unwrap_or(0);
        let mut n = highest + 1;
        loop {
            let id = format!("{prefix}-{n:03}");
            if !self.seeds.iter().any(|s| s.id == id) {
                return id;
            }
            n += 1;
        }
    }

    /// The prefix new ids use: the one most seeds share, else the domain's first word.
    pub fn id_prefix(&self) -> String {
        let mut counts: Vec<(&str, usize)> = Vec::new();
        for seed in &self.seeds {
            if let Some((prefix, n)) = seed.id.rsplit_once('-') {
                if !prefix.is_empty() && n.chars().all(|c| c.is_ascii_digit()) {
                    match counts.iter_mut().find(|(p, _)| *p == prefix) {
                        Some((_, c)) => *c += 1,
                        None => counts.push((prefix, 1)),
                    }
                }
            }
        }
        if let Some((p, _)) = counts.iter().max_by_key(|(_, c)| *c) {
            return p.to_string();
        }
        let word: String =
            self.domain.chars().take_while(|c| c.is_ascii_alphanumeric()).collect::<String>().to_lowercase();
        if word.is_empty() {
            "seed".into()
        } else {
            word
        }
    }
}

/// Id characters: letters, digits, `-`, `_`, `.` (ids appear in file names and provenance).
pub fn is_valid_id(id: &str) -> bool {
    !id.is_empty() && id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seed(id: &str) -> Seed {
        Seed {
            id: id.into(),
            task: "qa".into(),
            tags: vec![],
            instruction: "i".into(),
            input: String::new(),
            output: "o".into(),
        }
    }

    #[test]
    fn fresh_ids_follow_the_highest() {
        let file =
            SeedFile { domain: "Bio".into(), seeds: vec![seed("bio-001"), seed("bio-007")], ..Default::default() };
        assert_eq!(file.id_prefix(), "bio");
        assert_eq!(file.fresh_id("bio"), "bio-008");
        let empty = SeedFile { domain: "Finance news".into(), ..Default::default() };
        assert_eq!(empty.id_prefix(), "finance");
        assert_eq!(empty.fresh_id("finance"), "finance-001");
    }

    #[test]
    fn tasks_parse_and_cycle() {
        assert_eq!("ner".parse::<Task>(), Ok(Task::Ner));
        assert!("NER".parse::<Task>().is_err());
        assert_eq!(Task::Other.next(), Task::Qa);
        assert_eq!(Task::Qa.prev(), Task::Other);
    }
}

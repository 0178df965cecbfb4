use std::fmt;
use std::path::PathBuf;

use crate::yaml::Pos;

/// One thing wrong with a seed file, said so a user can find and fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The file, when the seeds came from one.
    pub file: Option<PathBuf>,
    pub pos: Option<Pos>,
    /// Index of the seed the problem is in, if any.
    pub seed: Option<usize>,
    /// That seed's id, when it has one, so the message names it.
    pub seed_id: Option<String>,
    /// The key the problem is about (`instruction`, `domain`, an unknown key); empty for the
    /// file as a whole.
    pub field: String,
    pub message: String,
    /// Saving the loaded [`super::SeedFile`] back would lose what this problem is about (a key it
    /// does not know, a value of the wrong type, text that is not YAML): such a file is read-only
    /// in the TUI until fixed by hand.
    pub lossy: bool,
    /// Worth knowing but not wrong: the file is still valid (an instruction repeated with another
    /// input, as classification seeds do).
    pub warning: bool,
}

impl Problem {
    /// Where in the document: `domain`, `seeds[3].instruction`, `seeds[3]`.
    pub fn path(&self) -> String {
        match (self.seed, self.field.is_empty()) {
            (Some(i), true) => format!("seeds[{i}]"),
            (Some(i), false) => format!("seeds[{i}].{}", self.field),
            (None, _) => self.field.clone(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(file) = &self.file {
            write!(f, "{}:", file.display())?;
        }
        if let Some(pos) = self.pos {
            write!(f, "{pos}:")?;
        }
        if self.file.is_some() || self.pos.is_some() {
            f.write_str(" ")?;
        }
        if self.warning {
            f.write_str("warning: ")?;
        }
        let path = self.path();
        if !path.is_empty() {
            f.write_str(&path)?;
            if let Some(id) = self.seed_id.as_deref().filter(|id| !id.is_empty()) {
                write!(f, " (id {id})")?;
            }
            f.write_str(": ")?;
        }
        f.write_str(&self.message)
    }
}

/// Every problem found in one file: the error a load returns when nothing usable was read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problems(pub Vec<Problem>);

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Problems {}

/// The closest of `candidates` to `word` when it is near enough to be a likely typo.
pub(crate) fn did_you_mean<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    let word = word.to_lowercase();
    if let Some(exact) = candidates.iter().find(|c| **c == word) {
        // Only the case differs.
        return Some(exact);
    }
    if let Some(prefix) = candidates.iter().find(|c| c.len() >= 2 && word.starts_with(**c)) {
        // An abbreviation's long form: "summary" for "sum".
        return Some(prefix);
    }
    candidates
        .iter()
        .map(|c| (edit_distance(&word, c), *c))
        .filter(|(d, c)| *d <= 2.max(c.len() / 4))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = if ca == *cb { prev } else { 1 + prev.min(row[j]).min(row[j + 1]) };
            prev = cur;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggestions() {
        assert_eq!(did_you_mean("instrucion", &["instruction", "input"]), Some("instruction"));
        assert_eq!(did_you_mean("NER", &["qa", "ner"]), Some("ner"));
        assert_eq!(did_you_mean("banana", &["qa", "ner"]), None);
        assert_eq!(did_you_mean("summary", &["qa", "sum"]), Some("sum"));
    }
}

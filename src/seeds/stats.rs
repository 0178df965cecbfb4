//! Counts per task and length statistics of a seed file (`selfspec seeds stats`).

use std::collections::BTreeMap;
use std::fmt::Write;

use serde::Serialize;

use super::file::{Seed, SeedFile};

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Lengths {
    pub min: usize,
    pub mean: f64,
    pub median: f64,
    pub max: usize,
}

impl Lengths {
    fn of(mut values: Vec<usize>) -> Lengths {
        if values.is_empty() {
            return Lengths { min: 0, mean: 0.0, median: 0.0, max: 0 };
        }
        values.sort_unstable();
        let n = values.len();
        let median = if n % 2 == 1 { values[n / 2] as f64 } else { (values[n / 2 - 1] + values[n / 2]) as f64 / 2.0 };
        Lengths { min: values[0], mean: values.iter().sum::<usize>() as f64 / n as f64, median, max: values[n - 1] }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FieldStats {
    pub words: Lengths,
    pub chars: Lengths,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Stats {
    pub domain: String,
    pub seeds: usize,
    /// Seeds per task as written (an unknown task counts under its own name).
    pub tasks: BTreeMap<String, usize>,
    pub with_input: usize,
    pub instruction: FieldStats,
    pub input: FieldStats,
    pub output: FieldStats,
    /// Tags used, with how many seeds carry each.
    pub tags: BTreeMap<String, usize>,
}

pub fn stats(file: &SeedFile) -> Stats {
    let field = |get: &dyn Fn(&Seed) -> &str, skip_empty: bool| {
        let texts: Vec<&str> = file.seeds.iter().map(get).filter(|t| !skip_empty || !t.trim().is_empty()).collect();
        FieldStats {
            words: Lengths::of(texts.iter().map(|t| t.split_whitespace().count()).collect()),
            chars: Lengths::of(texts.iter().map(|t| t.chars().count()).collect()),
        }
    };
    let mut tasks = BTreeMap::new();
    let mut tags = BTreeMap::new();
    for seed in &file.seeds {
        *tasks.entry(seed.task.clone()).or_insert(0) += 1;
        for tag in &seed.tags {
            *tags.entry(tag.clone()).or_insert(0) += 1;
        }
    }
    Stats {
        domain: file.domain.clone(),
        seeds: file.seeds.len(),
        tasks,
        with_input: file.seeds.iter().filter(|s| !s.input.trim().is_empty()).count(),
        instruction: field(&|s| &s.instruction, false),
        // Input lengths are over the seeds that have one: an empty input is a choice, not a length.
        input: field(&|s| &s.input, true),
        output: field(&|s| &s.output, false),
        tags,
    }
}

impl Stats {
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "domain: {}\nseeds: {} ({} with input)\n", self.domain, self.seeds, self.with_input);
        let _ = writeln!(out, "task    seeds   share");
        for (task, n) in &self.tasks {
            let share = 100.0 * *n as f64 / self.seeds.max(1) as f64;
            let _ = writeln!(out, "{task:<7} {n:>5}  {share:>5.1}%");
        }
        let _ = writeln!(out, "\nlength (words)   min    mean  median    max");
        for (name, f) in [("instruction", &self.instruction), ("input", &self.input), ("output", &self.output)] {
            let w = &f.words;
            let _ = writeln!(out, "{name:<14} {:>5} {:>7.1} {:>7.1} {:>6}", w.min, w.mean, w.median, w.max);
        }
        let _ = writeln!(out, "\nlength (chars)   min    mean  median    max");
        for (name, f) in [("instruction", &self.instruction), ("input", &self.input), ("output", &self.output)] {
            let c = &f.chars;
            let _ = writeln!(out, "{name:<14} {:>5} {:>7.1} {:>7.1} {:>6}", c.min, c.mean, c.median, c.max);
        }
        if !self.tags.is_empty() {
            let mut tags: Vec<_> = self.tags.iter().collect();
            tags.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
            let list: Vec<String> = tags.iter().take(12).map(|(t, n)| format!("{t} ({n})")).collect();
            let _ = writeln!(out, "\ntags: {}{}", list.join(", "), if tags.len() > 12 { ", …" } else { "" });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seeds::Seed;

    #[test]
    fn counts_and_medians() {
        let seed = |task: &str, instruction: &str, input: &str| Seed {
            id: instruction.into(),
            task: task.into(),
            tags: vec!["x".into()],
            instruction: instruction.into(),
            input: input.into(),
            output: "one two".into(),
        };
        let file = SeedFile {
            domain: "d".into(),
            seeds: vec![seed("qa", "a b c", ""), seed("qa", "a", "x y"), seed("ner", "a b", "")],
            ..Default::default()
        };
        let s = stats(&file);
        assert_eq!(s.tasks["qa"], 2);
        assert_eq!(s.with_input, 1);
        assert_eq!(s.instruction.words, Lengths { min: 1, mean: 2.0, median: 2.0, max: 3 });
        assert_eq!(s.input.words.max, 2);
        assert_eq!(s.tags["x"], 3);
    }
}

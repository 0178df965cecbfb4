//! The filters a generated instruction must pass to be kept (self-instruct's, as the paper uses
//! them). Each rejection says which filter and why, so it can be recorded on the sample.

use serde::{Deserialize, Serialize};

use crate::eval::metrics::{rouge_l_tokens, rouge_tokens};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Filters {
    /// Drop an instruction whose ROUGE-L (no stemming) with any seed or kept instruction is above
    /// this.
    pub rouge_l_max: f64,
    /// Word bounds (words split on whitespace).
    pub min_words: usize,
    pub max_words: usize,
    /// Whole words (case-insensitive) that mark tasks a text-only model cannot do.
    pub blacklist: Vec<String>,
}

impl Default for Filters {
    fn default() -> Self {
        Filters {
            rouge_l_max: 0.7,
            min_words: 3,
            max_words: 150,
            blacklist: [
                "image",
                "images",
                "graph",
                "graphs",
                "picture",
                "pictures",
                "file",
                "files",
                "map",
                "maps",
                "draw",
                "plot",
                "go to",
                "video",
                "audio",
                "music",
                "flowchart",
                "diagram",
            ]
            .map(String::from)
            .to_vec(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "filter", rename_all = "snake_case")]
pub enum Rejection {
    TooShort { words: usize },
    TooLong { words: usize },
    Blacklisted { word: String },
    StartsWithPunctuation,
    StartsNonAscii,
    TooSimilar { to: usize, rouge_l: f64 },
}

/// What the filters found: the rejection, if any, and the most similar instruction of the pool
/// (index, ROUGE-L F-measure) — recorded on kept samples too.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Verdict {
    pub rejected: Option<Rejection>,
    pub most_similar: Option<(usize, f64)>,
}

/// The instructions new ones are compared with (seeds, then every kept instruction), kept
/// tokenized so each comparison is one LCS.
#[derive(Debug, Default, Clone)]
pub struct Pool {
    tokens: Vec<Vec<String>>,
}

impl Pool {
    pub fn add(&mut self, instruction: &str) {
        self.tokens.push(rouge_tokens(instruction));
    }

    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }
}

fn contains_word(text: &str, word: &str) -> bool {
    let text = text.to_lowercase();
    let word = word.to_lowercase();
    let is_word = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c == '_');
    let mut from = 0;
    while let Some(at) = text[from..].find(&word) {
        let start = from + at;
        let end = start + word.len();
        if !is_word(text[..start].chars().next_back()) && !is_word(text[end..].chars().next()) {
            return true;
        }
        from = start + word.len().max(1);
    }
    false
}

impl Filters {
    /// Checks `instruction` against the filters and the pool (cheap checks first).
    pub fn check(&self, instruction: &str, pool: &Pool) -> Verdict {
        let text = instruction.trim();
        let words = text.split_whitespace().count();
        let cheap = if words < self.min_words {
            Some(Rejection::TooShort { words })
        } else if words > self.max_words {
            Some(Rejection::TooLong { words })
        } else if let Some(w) = self.blacklist.iter().find(|w| contains_word(text, w)) {
            Some(Rejection::Blacklisted { word: w.clone() })
        } else if text.chars().next().is_some_and(|c| c.is_ascii_punctuation()) {
            Some(Rejection::StartsWithPunctuation)
        } else if text.chars().next().is_some_and(|c| !c.is_ascii()) {
            Some(Rejection::StartsNonAscii)
        } else {
            None
        };
        if cheap.is_some() {
            return Verdict { rejected: cheap, most_similar: None };
        }
        let tokens = rouge_tokens(text);
        let most_similar = pool
            .tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (i, rouge_l_tokens(t, &tokens).fmeasure))
            .max_by(|a, b| a.1.total_cmp(&b.1));
        let rejected = most_similar
            .filter(|(_, f)| *f > self.rouge_l_max)
            .map(|(to, rouge_l)| Rejection::TooSimilar { to, rouge_l });
        Verdict { rejected, most_similar }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(items: &[&str]) -> Pool {
        let mut p = Pool::default();
        items.iter().for_each(|i| p.add(i));
        p
    }

    #[test]
    fn each_filter_names_itself() {
        let f = Filters::default();
        let p = pool(&[
            "Name the enzyme whose deficiency causes phenylketonuria.",
            "List the adverse events in the passage.",
        ]);
        let r = |s: &str| f.check(s, &p).rejected;
        assert_eq!(r("Summarise."), Some(Rejection::TooShort { words: 1 }));
        assert_eq!(r(&"word ".repeat(151)), Some(Rejection::TooLong { words: 151 }));
        assert_eq!(r("Draw the structure of the molecule"), Some(Rejection::Blacklisted { word: "draw".into() }));
        assert_eq!(
            r("Please go to the website and summarise it"),
            Some(Rejection::Blacklisted { word: "go to".into() })
        );
        // Whole words only: "profile" does not contain the word "file".
        assert_eq!(r("Describe the risk profile of this bond"), None);
        assert_eq!(r("\"Quoted\" instructions are dropped too"), Some(Rejection::StartsWithPunctuation));
        assert_eq!(r("Élaborez une réponse détaillée ici"), Some(Rejection::StartsNonAscii));
        match r("Name the enzyme whose deficiency causes the disease phenylketonuria.") {
            Some(Rejection::TooSimilar { to: 0, rouge_l }) => assert!(rouge_l > 0.7),
            other => panic!("{other:?}"),
        }
        let kept = f.check("Explain how statins lower LDL cholesterol in the blood", &p);
        assert_eq!(kept.rejected, None);
        assert!(kept.most_similar.is_some_and(|(_, s)| s < 0.7));
    }
}

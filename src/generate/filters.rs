//! The filters a generated instruction must pass to be kept (self-instruct's, as the paper uses
//! them). Each rejection says which filter and why, so it can be recorded on the sample.

use serde::{Deserialize, Serialize};

use crate::metrics::{rouge_l_tokens, rouge_tokens};

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
    /// Drop a task whose input restates its instruction: ROUGE-L F of the two above this
    /// (null: off).
    pub input_restates_instruction: Option<f64>,
    /// Drop a sample whose response copies its input: ROUGE-L recall of the input in the
    /// response above this (null: off).
    pub response_copies_input: Option<f64>,
    /// Drop a sample whose response restates its instruction: ROUGE-L F above this (null: off).
    pub response_restates_instruction: Option<f64>,
    /// Drop a sample whose response has fewer words than this (1: only empty ones).
    pub min_response_words: usize,
    /// A judge pass (null: off): the model scores each sample that passed the other filters
    /// from 1 to 5 on a rubric prompt, and samples under `min_score` are dropped.
    pub judge: Option<Judge>,
}

/// The judge pass: the rubric prompt and the lowest score kept.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Judge {
    pub min_score: u8,
    /// The rubric ({{domain}}, {{instruction}}, {{input}}, {{output}}); the model's first digit
    /// from 1 to 5 is its score.
    pub rubric: String,
}

impl Default for Judge {
    fn default() -> Self {
        Judge {
            min_score: 3,
            rubric: "You are checking training examples for an assistant in {{domain}}. Rate how well the response \
                     carries out the task on its input: 1 = wrong, empty or off-topic; 2 = mostly wrong; 3 = \
                     partly right; 4 = right with small flaws; 5 = right, complete and clear. Reply with the \
                     number only.\n\nTask:\n{{instruction}}\n\nInput:\n{{input}}\n\nResponse:\n{{output}}\n\nScore (1-5):"
                .into(),
        }
    }
}

impl Judge {
    /// The score in a judge's answer: its first digit from 1 to 5.
    pub fn score(answer: &str) -> Option<u8> {
        answer
            .chars()
            .find(|c| c.is_ascii_digit())
            .and_then(|c| c.to_digit(10))
            .filter(|d| (1..=5).contains(d))
            .map(|d| d as u8)
    }
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
            input_restates_instruction: Some(0.8),
            response_copies_input: Some(0.8),
            response_restates_instruction: Some(0.8),
            min_response_words: 1,
            judge: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "filter", rename_all = "snake_case")]
pub enum Rejection {
    TooShort {
        words: usize,
    },
    TooLong {
        words: usize,
    },
    Blacklisted {
        word: String,
    },
    StartsWithPunctuation,
    StartsNonAscii,
    TooSimilar {
        to: usize,
        rouge_l: f64,
    },
    InputRestatesInstruction {
        rouge_l: f64,
    },
    /// What a response can be dropped for.
    EmptyResponse,
    LoopingResponse,
    ResponseTooShort {
        words: usize,
    },
    ResponseCopiesInput {
        rouge_l: f64,
    },
    ResponseRestatesInstruction {
        rouge_l: f64,
    },
    /// The judge scored the sample under the threshold, or gave no score from 1 to 5.
    JudgedLow {
        score: Option<u8>,
    },
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
    pub fn check(&self, instruction: &str, input: &str, pool: &Pool) -> Verdict {
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
        if let Some(max) = self.input_restates_instruction {
            let input = rouge_tokens(input);
            let f = rouge_l_tokens(&tokens, &input).fmeasure;
            if !input.is_empty() && f > max {
                return Verdict {
                    rejected: Some(Rejection::InputRestatesInstruction { rouge_l: f }),
                    most_similar: None,
                };
            }
        }
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

impl Filters {
    /// Checks a response to `instruction` on `input`: why it is dropped, if it is.
    pub fn check_response(&self, instruction: &str, input: &str, response: &str) -> Option<Rejection> {
        let words = response.split_whitespace().count();
        if words == 0 {
            return Some(Rejection::EmptyResponse);
        }
        if words < self.min_response_words {
            return Some(Rejection::ResponseTooShort { words });
        }
        let out = rouge_tokens(response);
        if let Some(max) = self.response_copies_input {
            let input = rouge_tokens(input);
            // Recall: how much of the input the response reproduces, in order.
            let r = rouge_l_tokens(&input, &out).recall;
            if !input.is_empty() && r > max {
                return Some(Rejection::ResponseCopiesInput { rouge_l: r });
            }
        }
        if let Some(max) = self.response_restates_instruction {
            let f = rouge_l_tokens(&rouge_tokens(instruction), &out).fmeasure;
            if f > max {
                return Some(Rejection::ResponseRestatesInstruction { rouge_l: f });
            }
        }
        None
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
        let r = |s: &str| f.check(s, "", &p).rejected;
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
        let kept = f.check("Explain how statins lower LDL cholesterol in the blood", "", &p);
        assert_eq!(kept.rejected, None);
        assert!(kept.most_similar.is_some_and(|(_, s)| s < 0.7));
    }

    #[test]
    fn copies_and_restatements_are_dropped_by_name_and_can_be_switched_off() {
        let f = Filters::default();
        let instruction = "Classify the sentiment of the clinical note";
        let input = "The patient reports that the new inhaler has eased her breathing at night.";
        // The task's input says again what the instruction says.
        let restated = f.check(instruction, "Classify the sentiment of this clinical note", &Pool::default());
        assert!(matches!(restated.rejected, Some(Rejection::InputRestatesInstruction { rouge_l }) if rouge_l > 0.8));
        assert_eq!(f.check(instruction, input, &Pool::default()).rejected, None);
        let r = |out: &str| f.check_response(instruction, input, out);
        assert_eq!(r("  "), Some(Rejection::EmptyResponse));
        assert!(matches!(r(&format!("Answer: {input}")), Some(Rejection::ResponseCopiesInput { .. })));
        assert!(matches!(
            r("Classify the sentiment of the clinical note."),
            Some(Rejection::ResponseRestatesInstruction { .. })
        ));
        assert_eq!(r("Positive"), None, "a one-word label is an answer");
        let strict = Filters { min_response_words: 3, ..Filters::default() };
        assert_eq!(
            strict.check_response(instruction, input, "Positive"),
            Some(Rejection::ResponseTooShort { words: 1 })
        );
        let off = Filters {
            input_restates_instruction: None,
            response_copies_input: None,
            response_restates_instruction: None,
            ..Filters::default()
        };
        assert_eq!(off.check_response(instruction, input, input), None);
        assert_eq!(
            off.check(instruction, "Classify the sentiment of this clinical note", &Pool::default()).rejected,
            None
        );
    }

    #[test]
    fn a_judges_score_is_its_first_digit_from_one_to_five() {
        assert_eq!(Judge::score("4"), Some(4));
        assert_eq!(Judge::score(" Score: 5/5"), Some(5));
        assert_eq!(Judge::score("0"), None);
        assert_eq!(Judge::score("7 out of 10"), None);
        assert_eq!(Judge::score("good"), None);
        // The default rubric fills every variable it names.
        let text = crate::prompts::render(
            "judge",
            &Judge::default().rubric,
            &[("domain", "d"), ("instruction", "i"), ("input", "x"), ("output", "o")],
        )
        .unwrap();
        assert!(text.ends_with("Score (1-5):") && text.contains("Task:\ni"), "{text}");
    }
}

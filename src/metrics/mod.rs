//! Text metrics as pure functions, defined exactly as the reference implementations.
//!
//! F1 is the SQuAD (v1.1) token F1 the BoX/self-specialization line of work reports: lowercase,
//! drop ASCII punctuation, drop the articles a/an/the, split on whitespace, bag-of-tokens overlap;
//! the best over the references. (Not lm-eval's classification F1.)
//!
//! ROUGE-L is google's `rouge-score` (`rouge_scorer.RougeScorer(["rougeL"])`): lowercase, every
//! run of characters outside `[a-z0-9]` becomes a space, split on whitespace, longest common
//! subsequence, F-measure. Without stemming it is what self-instruct (and the paper) use to drop
//! near-duplicate instructions. tests/metrics.rs checks it against rouge-score's own outputs.
//!
//! A leaf: generation's near-duplicate filter and evaluation both use it; it uses nothing of
//! selfspec's.

pub mod porter;

/// rouge-score's tokenizer without stemming.
pub fn rouge_tokens(text: &str) -> Vec<String> {
    let lower = text.to_lowercase();
    let mut tokens = Vec::new();
    let mut current = String::new();
    for c in lower.chars() {
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            current.push(c);
        } else if !current.is_empty() {
            tokens.push(std::mem::take(&mut current));
        }
    }
    if !current.is_empty() {
        tokens.push(current);
    }
    tokens
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Score {
    pub precision: f64,
    pub recall: f64,
    pub fmeasure: f64,
}

/// Length of the longest common subsequence of two token lists.
pub fn lcs_len<T: PartialEq>(a: &[T], b: &[T]) -> usize {
    if a.is_empty() || b.is_empty() {
        return 0;
    }
    let mut prev = vec![0usize; b.len() + 1];
    let mut row = vec![0usize; b.len() + 1];
    for x in a {
        for (j, y) in b.iter().enumerate() {
            row[j + 1] = if x == y { prev[j] + 1 } else { row[j].max(prev[j + 1]) };
        }
        std::mem::swap(&mut prev, &mut row);
    }
    prev[b.len()]
}

/// ROUGE-L of tokenized texts, as rouge-score's `_score_lcs(target, prediction)`.
pub fn rouge_l_tokens<T: PartialEq>(target: &[T], prediction: &[T]) -> Score {
    if target.is_empty() || prediction.is_empty() {
        return Score { precision: 0.0, recall: 0.0, fmeasure: 0.0 };
    }
    let lcs = lcs_len(target, prediction) as f64;
    let precision = lcs / prediction.len() as f64;
    let recall = lcs / target.len() as f64;
    let fmeasure = if precision + recall > 0.0 { 2.0 * precision * recall / (precision + recall) } else { 0.0 };
    Score { precision, recall, fmeasure }
}

/// ROUGE-L (no stemming) of `prediction` against `target`.
pub fn rouge_l(target: &str, prediction: &str) -> Score {
    rouge_l_tokens(&rouge_tokens(target), &rouge_tokens(prediction))
}

/// rouge-score's tokenizer with stemming (`use_stemmer=True`): tokens longer than 3 characters
/// stemmed by NLTK's Porter stemmer.
pub fn rouge_tokens_stemmed(text: &str) -> Vec<String> {
    let mut tokens = rouge_tokens(text);
    for t in &mut tokens {
        if t.len() > 3 {
            *t = porter::stem(t);
        }
    }
    tokens
}

/// The ROUGE-L F-measure the evaluation reports: rouge-score's `RougeScorer(["rougeL"],
/// use_stemmer=True)`, the best over `references` (0 when there are none).
pub fn rouge_l_best(prediction: &str, references: &[&str]) -> f64 {
    let p = rouge_tokens_stemmed(prediction);
    references.iter().map(|r| rouge_l_tokens(&rouge_tokens_stemmed(r), &p).fmeasure).fold(0.0, f64::max)
}

/// SQuAD's `normalize_answer`: lowercase, ASCII punctuation removed, the articles a/an/the
/// removed as whole words, whitespace collapsed; returned as tokens.
pub fn squad_tokens(text: &str) -> Vec<String> {
    let lower = text.to_lowercase();
    let no_punct: String = lower.chars().filter(|c| !c.is_ascii_punctuation()).collect();
    // Python's `\b(a|an|the)\b` → " ", with Unicode word characters; then split().
    let words_re = articles();
    let spaced = words_re.replace_all(&no_punct, " ");
    // Python's str.split() also splits on the separators U+001C..U+001F.
    spaced
        .split(|c: char| c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c))
        .filter(|t| !t.is_empty())
        .map(str::to_string)
        .collect()
}

fn articles() -> &'static regex::Regex {
    static RE: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
    RE.get_or_init(|| regex::Regex::new(r"\b(a|an|the)\b").expect("valid regex"))
}

/// SQuAD v1.1 token F1 of two token lists (0 when nothing is shared, so also when either is
/// empty).
pub fn f1_tokens(prediction: &[String], reference: &[String]) -> f64 {
    let mut counts: std::collections::HashMap<&str, (usize, usize)> = std::collections::HashMap::new();
    for t in prediction {
        counts.entry(t).or_default().0 += 1;
    }
    for t in reference {
        counts.entry(t).or_default().1 += 1;
    }
    let same: usize = counts.values().map(|(a, b)| a.min(b)).copied().sum();
    if same == 0 {
        return 0.0;
    }
    let precision = same as f64 / prediction.len() as f64;
    let recall = same as f64 / reference.len() as f64;
    2.0 * precision * recall / (precision + recall)
}

/// SQuAD F1, the best over `references` (0 when there are none).
pub fn f1_best(prediction: &str, references: &[&str]) -> f64 {
    let p = squad_tokens(prediction);
    references.iter().map(|r| f1_tokens(&p, &squad_tokens(r))).fold(0.0, f64::max)
}

/// F1 and stemmed ROUGE-L of many pairs, with stems remembered across calls (the same words come
/// back again and again in an evaluation set).
#[derive(Default)]
pub struct Scorer {
    stems: std::collections::HashMap<String, String>,
}

impl Scorer {
    fn rouge_tokens(&mut self, text: &str) -> Vec<String> {
        let mut tokens = rouge_tokens(text);
        for t in &mut tokens {
            if t.len() > 3 {
                if let Some(s) = self.stems.get(t.as_str()) {
                    t.clone_from(s);
                } else {
                    let s = porter::stem(t);
                    self.stems.insert(std::mem::replace(t, s.clone()), s);
                }
            }
        }
        tokens
    }

    /// (F1, ROUGE-L F-measure) of `prediction`, each the best over `references`, on 0–1.
    pub fn score(&mut self, prediction: &str, references: &[&str]) -> (f64, f64) {
        let p_squad = squad_tokens(prediction);
        let p_rouge = self.rouge_tokens(prediction);
        let mut best = (0.0f64, 0.0f64);
        for r in references {
            best.0 = best.0.max(f1_tokens(&p_squad, &squad_tokens(r)));
            let r_tokens = self.rouge_tokens(r);
            best.1 = best.1.max(rouge_l_tokens(&r_tokens, &p_rouge).fmeasure);
        }
        best
    }
}

/// The BoX habit (off by default): a gold string "a, b, c" counts as the references a, b and c.
pub fn split_references<'a>(references: &[&'a str]) -> Vec<&'a str> {
    references.iter().flat_map(|r| r.split(", ")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_and_lcs() {
        assert_eq!(rouge_tokens("Héllo, WORLD-42!"), ["h", "llo", "world", "42"]);
        assert_eq!(lcs_len(&["a", "b", "c", "d"], &["b", "d", "a"]), 2);
        let s = rouge_l("the cat sat", "the cat");
        assert_eq!((s.precision, s.recall), (1.0, 2.0 / 3.0));
        assert_eq!(rouge_l("", "x").fmeasure, 0.0);
    }

    #[test]
    fn squad_f1() {
        assert_eq!(squad_tokens("The Cat, a hat; AN apple!"), ["cat", "hat", "apple"]);
        assert_eq!(f1_best("the cat sat", &["a cat sat down"]), 2.0 * 1.0 * (2.0 / 3.0) / (1.0 + 2.0 / 3.0));
        assert_eq!(f1_best("", &[""]), 0.0);
        assert_eq!(f1_best("yes", &["no", "Yes."]), 1.0);
        assert_eq!(split_references(&["a, b", "c"]), ["a", "b", "c"]);
    }
}

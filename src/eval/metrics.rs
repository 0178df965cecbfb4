//! Text metrics as pure functions, defined exactly as the reference implementations.
//!
//! ROUGE-L is google's `rouge-score` (`rouge_scorer.RougeScorer(["rougeL"])`): lowercase, every
//! run of characters outside `[a-z0-9]` becomes a space, split on whitespace, longest common
//! subsequence, F-measure. Without stemming it is what self-instruct (and the paper) use to drop
//! near-duplicate instructions. tests/metrics.rs checks it against rouge-score's own outputs.

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
}

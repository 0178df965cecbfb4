//! The Porter stemmer exactly as NLTK's `PorterStemmer()` in its default mode
//! (NLTK_EXTENSIONS), which is what rouge-score stems with. The rules and their order follow
//! Porter's paper ("An algorithm for suffix stripping", 1980) with NLTK's departures marked.
//!
//! Words are ASCII (rouge-score's tokens are `[a-z0-9]+`); other text is returned unchanged.
//! A rule list is applied as NLTK applies it: the first rule whose suffix matches decides, and if
//! its condition fails the word is left as it is (later rules are not tried).

/// NLTK's irregular forms, looked up before any rule.
const IRREGULAR: [(&str, &str); 16] = [
    ("sky", "sky"),
    ("skies", "sky"),
    ("dying", "die"),
    ("lying", "lie"),
    ("tying", "tie"),
    ("news", "news"),
    ("innings", "inning"),
    ("inning", "inning"),
    ("outings", "outing"),
    ("outing", "outing"),
    ("cannings", "canning"),
    ("canning", "canning"),
    ("howe", "howe"),
    ("proceed", "proceed"),
    ("exceed", "exceed"),
    ("succeed", "succeed"),
];

fn is_vowel(c: u8) -> bool {
    matches!(c, b'a' | b'e' | b'i' | b'o' | b'u')
}

/// Consonant flags of every letter: `y` is a consonant at the start or after a vowel.
fn consonants(w: &[u8]) -> Vec<bool> {
    let mut flags: Vec<bool> = Vec::with_capacity(w.len());
    for (i, &c) in w.iter().enumerate() {
        let f = if is_vowel(c) {
            false
        } else if c == b'y' {
            i == 0 || !flags[i - 1]
        } else {
            true
        };
        flags.push(f);
    }
    flags
}

fn is_consonant(w: &[u8], i: usize) -> bool {
    consonants(&w[..=i])[i]
}

/// m in [C](VC){m}[V].
fn measure(w: &[u8]) -> usize {
    let f = consonants(w);
    f.windows(2).filter(|p| !p[0] && p[1]).count()
}

fn contains_vowel(w: &[u8]) -> bool {
    consonants(w).iter().any(|c| !c)
}

/// *d: ends with a double consonant.
fn ends_double_consonant(w: &[u8]) -> bool {
    let n = w.len();
    n >= 2 && w[n - 1] == w[n - 2] && is_consonant(w, n - 1)
}

/// *o: ends consonant-vowel-consonant, the last not w, x or y (NLTK: also a two-letter
/// vowel-consonant word).
fn ends_cvc(w: &[u8]) -> bool {
    let n = w.len();
    (n >= 3
        && is_consonant(w, n - 3)
        && !is_consonant(w, n - 2)
        && is_consonant(w, n - 1)
        && !matches!(w[n - 1], b'w' | b'x' | b'y'))
        || (n == 2 && !is_consonant(w, 0) && is_consonant(w, 1))
}

type Cond<'a> = &'a dyn Fn(&[u8]) -> bool;

/// Applies the first rule whose suffix `word` ends with; `*d` matches a double consonant.
fn apply(word: &[u8], rules: &[(&str, &str, Option<Cond>)]) -> Vec<u8> {
    for (suffix, replacement, cond) in rules {
        let cut = if *suffix == "*d" {
            if !ends_double_consonant(word) {
                continue;
            }
            2
        } else if word.ends_with(suffix.as_bytes()) {
            suffix.len()
        } else {
            continue;
        };
        let stem = &word[..word.len() - cut];
        return if cond.is_none_or(|c| c(stem)) {
            let mut out = stem.to_vec();
            out.extend_from_slice(replacement.as_bytes());
            out
        } else {
            word.to_vec()
        };
    }
    word.to_vec()
}

fn m_gt0(stem: &[u8]) -> bool {
    measure(stem) > 0
}

fn m_gt1(stem: &[u8]) -> bool {
    measure(stem) > 1
}

fn replace_end(word: &[u8], cut: usize, with: &str) -> Vec<u8> {
    let mut out = word[..word.len() - cut].to_vec();
    out.extend_from_slice(with.as_bytes());
    out
}

fn step1a(w: &[u8]) -> Vec<u8> {
    // NLTK: "ties" → "tie", not "ti".
    if w.ends_with(b"ies") && w.len() == 4 {
        return replace_end(w, 3, "ie");
    }
    apply(w, &[("sses", "ss", None), ("ies", "i", None), ("ss", "ss", None), ("s", "", None)])
}

fn step1b(w: &[u8]) -> Vec<u8> {
    // NLTK: "died" → "die", "cried" → "cri".
    if w.ends_with(b"ied") {
        return replace_end(w, 3, if w.len() == 4 { "ie" } else { "i" });
    }
    if w.ends_with(b"eed") {
        let stem = &w[..w.len() - 3];
        return if measure(stem) > 0 { replace_end(w, 1, "") } else { w.to_vec() };
    }
    let mut stem = None;
    for suffix in [&b"ed"[..], b"ing"] {
        if w.ends_with(suffix) {
            let s = &w[..w.len() - suffix.len()];
            if contains_vowel(s) {
                stem = Some(s);
                break;
            }
        }
    }
    let Some(s) = stem else { return w.to_vec() };
    let last = s.last().copied().unwrap_or(b' ');
    let last_str = [last];
    let last_str = std::str::from_utf8(&last_str).unwrap_or("");
    let not_lsz = |_: &[u8]| !matches!(last, b'l' | b's' | b'z');
    let add_e = |stem: &[u8]| measure(stem) == 1 && ends_cvc(stem);
    apply(
        s,
        &[
            ("at", "ate", None),
            ("bl", "ble", None),
            ("iz", "ize", None),
            ("*d", last_str, Some(&not_lsz)),
            ("", "e", Some(&add_e)),
        ],
    )
}

fn step1c(w: &[u8]) -> Vec<u8> {
    // NLTK: y → i only after a consonant that is not the whole stem.
    let cond = |stem: &[u8]| stem.len() > 1 && is_consonant(stem, stem.len() - 1);
    apply(w, &[("y", "i", Some(&cond))])
}

fn step2(w: &[u8]) -> Vec<u8> {
    // NLTK: "alli" → "al", then step 2 again.
    if w.ends_with(b"alli") && m_gt0(&w[..w.len() - 4]) {
        return step2(&replace_end(w, 4, "al"));
    }
    let logi = |_: &[u8]| m_gt0(&w[..w.len() - 3]);
    let m: Option<Cond> = Some(&m_gt0);
    apply(
        w,
        &[
            ("ational", "ate", m),
            ("tional", "tion", m),
            ("enci", "ence", m),
            ("anci", "ance", m),
            ("izer", "ize", m),
            ("bli", "ble", m),
            ("alli", "al", m),
            ("entli", "ent", m),
            ("eli", "e", m),
            ("ousli", "ous", m),
            ("ization", "ize", m),
            ("ation", "ate", m),
            ("ator", "ate", m),
            ("alism", "al", m),
            ("iveness", "ive", m),
            ("fulness", "ful", m),
            ("ousness", "ous", m),
            ("aliti", "al", m),
            ("iviti", "ive", m),
            ("biliti", "ble", m),
            ("fulli", "ful", m),
            ("logi", "log", Some(&logi)),
        ],
    )
}

fn step3(w: &[u8]) -> Vec<u8> {
    let m: Option<Cond> = Some(&m_gt0);
    apply(
        w,
        &[
            ("icate", "ic", m),
            ("ative", "", m),
            ("alize", "al", m),
            ("iciti", "ic", m),
            ("ical", "ic", m),
            ("ful", "", m),
            ("ness", "", m),
        ],
    )
}

fn step4(w: &[u8]) -> Vec<u8> {
    let m: Option<Cond> = Some(&m_gt1);
    let ion = |stem: &[u8]| m_gt1(stem) && matches!(stem.last(), Some(b's' | b't'));
    apply(
        w,
        &[
            ("al", "", m),
            ("ance", "", m),
            ("ence", "", m),
            ("er", "", m),
            ("ic", "", m),
            ("able", "", m),
            ("ible", "", m),
            ("ant", "", m),
            ("ement", "", m),
            ("ment", "", m),
            ("ent", "", m),
            ("ion", "", Some(&ion)),
            ("ou", "", m),
            ("ism", "", m),
            ("ate", "", m),
            ("iti", "", m),
            ("ous", "", m),
            ("ive", "", m),
            ("ize", "", m),
        ],
    )
}

fn step5a(w: &[u8]) -> Vec<u8> {
    if let Some(stem) = w.strip_suffix(b"e") {
        let m = measure(stem);
        if m > 1 || (m == 1 && !ends_cvc(stem)) {
            return stem.to_vec();
        }
    }
    w.to_vec()
}

fn step5b(w: &[u8]) -> Vec<u8> {
    if w.ends_with(b"ll") && measure(&w[..w.len() - 1]) > 1 {
        return w[..w.len() - 1].to_vec();
    }
    w.to_vec()
}

/// The stem of a lowercase ASCII word, as NLTK's `PorterStemmer().stem(word)`.
pub fn stem(word: &str) -> String {
    if !word.is_ascii() {
        return word.to_string();
    }
    let lower = word.to_ascii_lowercase();
    if let Some((_, s)) = IRREGULAR.iter().find(|(w, _)| *w == lower) {
        return s.to_string();
    }
    if lower.len() <= 2 {
        return lower;
    }
    let mut w = step1a(lower.as_bytes());
    for step in [step1b, step1c, step2, step3, step4, step5a, step5b] {
        w = step(&w);
    }
    String::from_utf8(w).unwrap_or(lower)
}

#[cfg(test)]
mod tests {
    use super::stem;

    #[test]
    fn the_papers_examples_and_nltks_changes() {
        for (word, want) in [
            ("caresses", "caress"),
            ("ponies", "poni"),
            ("ties", "tie"),
            ("cats", "cat"),
            ("agreed", "agre"),
            ("plastered", "plaster"),
            ("motoring", "motor"),
            ("conflated", "conflat"),
            ("hopping", "hop"),
            ("filing", "file"),
            ("happy", "happi"),
            ("enjoy", "enjoy"),
            ("relational", "relat"),
            ("generalization", "gener"),
            ("dying", "die"),
            ("controlling", "control"),
            ("skies", "sky"),
        ] {
            assert_eq!(stem(word), want, "{word}");
        }
    }
}

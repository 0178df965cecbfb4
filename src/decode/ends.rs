//! When a text being generated ends early: a stop string completed, or a repetition loop.

/// The shortest period of a repetition loop at the end of `tokens`, either
/// - the last `p` tokens (p ≤ 32) repeated back to back at least 4 times and over at least 48
///   tokens: "The answer is: The answer is: …", a list item written again and again; or
/// - a stretch of [`LOOP_STRETCH`] to [`LOOP_STRETCH_MAX`] tokens, not itself a repeat of a
///   shorter one, written twice back to back: a sentence or paragraph said again word for word,
///   which models this small go on repeating (docs/PERFORMANCE.md, "Answers said twice": the
///   kept answers this rule would have stopped ran on to the token limit).
///
/// A list whose items only share a layout is not a loop: its items differ.
pub fn looping(tokens: &[u32]) -> Option<usize> {
    let short = (1..=32usize).find(|&p| {
        if tokens.len() < 2 * p {
            return false;
        }
        let tail = &tokens[tokens.len() - p..];
        let mut reps = 1;
        while (reps + 1) * p <= tokens.len() && &tokens[tokens.len() - (reps + 1) * p..tokens.len() - reps * p] == tail
        {
            reps += 1;
        }
        reps >= 4 && reps * p >= 48
    });
    short.or_else(|| {
        // The shortest stretch that ends the text twice over; one shorter than LOOP_STRETCH is
        // a short phrase (the rule above judges those).
        let n = tokens.len();
        let last = *tokens.last()?;
        let p = (1..=LOOP_STRETCH_MAX.min(n / 2))
            .find(|&p| tokens[n - 1 - p] == last && tokens[n - 2 * p..n - p] == tokens[n - p..])?;
        (p >= LOOP_STRETCH).then_some(p)
    })
}

/// The shortest stretch of tokens [`looping`] calls a loop when it is written twice in a row.
pub const LOOP_STRETCH: usize = 10;
/// The longest such stretch it looks for.
pub const LOOP_STRETCH_MAX: usize = 256;

/// Lines [`looping_lines`] compares at most: 4 repeats of a block of up to 4 lines.
const LOOP_LINES: usize = 16;

/// Whether `text` ends in a block of 1 to 4 lines written at least 4 times over, the item
/// numbers aside: "123. Determine which disease is linked …", then 124, 125; or "Task 17" /
/// "Instruction: X", then "Task 18" / the same X. Numbering changes the tokens of each item, so
/// [`looping`] does not see these; a list ran to its token limit this way. Blank lines are
/// skipped, and so is the line still being written; a block needs at least 8 letters (a column of bare numbers is not a loop). Only
/// an item's leading number is set aside: rows of a table whose figures differ are not a loop.
pub fn looping_lines(text: &str) -> bool {
    // Complete lines only: the one being written is compared once it ends.
    let Some(end) = text.rfind('\n') else { return false };
    let mut lines: Vec<&str> =
        text[..end].rsplit('\n').map(str::trim).filter(|l| !l.is_empty()).take(LOOP_LINES).map(unnumbered).collect();
    lines.reverse();
    (1..=4usize).any(|p| {
        let n = lines.len();
        if n < 4 * p {
            return false;
        }
        let block = &lines[n - p..];
        let letters: usize = block.iter().map(|l| l.chars().filter(|c| c.is_alphabetic()).count()).sum();
        letters >= 8 && (2..=4).all(|r| &lines[n - r * p..n - (r - 1) * p] == block)
    })
}

/// A line without its leading item number: "12. X", "12) X", "Task 12: X", "Task 12" → the
/// rest ("Task" kept, so that "Task 12" and "Task 13" compare equal).
fn unnumbered(line: &str) -> &str {
    let word = line.find(|c: char| !c.is_alphabetic()).unwrap_or(line.len());
    let after_word = line[word..].trim_start();
    let digits = after_word.find(|c: char| !c.is_ascii_digit()).unwrap_or(after_word.len());
    if digits == 0 || (word > 0 && after_word.len() == line[word..].len()) {
        // No number, or a word run into its digits ("COVID19").
        return line;
    }
    let rest = after_word[digits..].trim_start_matches(['.', ')', ':', '-']).trim_start();
    if word == 0 {
        rest
    } else if rest.is_empty() {
        &line[..word]
    } else {
        // "Task 12: X" compares as "X"; the word before a number is the item's label.
        rest
    }
}

/// The first stop string in `text` that ends after byte `from` (so it was completed by the
/// newest text), with where it starts.
pub fn find_stop(text: &str, stops: &[String], from: usize) -> Option<(usize, String)> {
    stops
        .iter()
        .filter(|s| !s.is_empty())
        .filter_map(|s| {
            let search_from = from.saturating_sub(s.len() - 1);
            let start = (search_from..=from).find(|&i| text.is_char_boundary(i))?;
            text[start..].find(s.as_str()).map(|at| (start + at, s.clone()))
        })
        .min_by_key(|(at, _)| *at)
}

#[cfg(test)]
mod tests {
    use super::{looping, looping_lines};

    #[test]
    fn numbered_items_written_again_are_a_loop() {
        let items: String =
            (120..126).map(|i| format!("{i}. Determine which disease is linked to the findings.\n")).collect();
        assert!(looping_lines(&items));
        assert!(looping_lines(&format!("{items}127. Determine which")), "a line being written is not compared");
        let tasks: String =
            (5..10).map(|i| format!("Task {i}\nInstructions: This is a study of a new drug.\n\n")).collect();
        assert!(looping_lines(&tasks));
        // Three times is not yet a loop; items that differ never are.
        let three: String = (1..4).map(|i| format!("{i}) Name the drug.\n")).collect();
        assert!(!looping_lines(&three));
        let list: String = (1..30).map(|i| format!("{i}. Name drug number {}.\n", i * 7)).collect();
        assert!(!looping_lines(&list));
        // A table whose figures differ, and a column of bare numbers.
        let table: String = (2019..2025).map(|y| format!("Year {y}: revenue {} million\n", y - 1000)).collect();
        assert!(!looping_lines(&table));
        let column: String = (1..20).map(|i| format!("{i}. 1\n")).collect();
        assert!(!looping_lines(&column));
        assert!(!looping_lines(""));
        // A word run into digits is not an item number.
        let same: String = (0..5).map(|_| "COVID19 spreads by air.\n").collect();
        assert!(looping_lines(&same));
        let variants: String = (15..20).map(|i| format!("COVID{i} spreads by air.\n")).collect();
        assert!(!looping_lines(&variants));
    }

    #[test]
    fn a_loop_is_a_short_stretch_repeated_and_a_list_is_not() {
        // "The answer is:" as 4 tokens, 12 times.
        let phrase = [10, 11, 12, 13];
        let tokens: Vec<u32> = (0..12).flat_map(|_| phrase).collect();
        assert_eq!(looping(&tokens), Some(4));
        // Only 8 repeats of 4 tokens: 32 < 48, not yet.
        assert_eq!(looping(&tokens[..32]), None);
        // A sentence of 12 tokens said twice is a loop at once; once, or with a word changed,
        // is not; a stretch of 9 tokens said twice is not either.
        let sentence: Vec<u32> = (50..62).collect();
        let twice: Vec<u32> = [&[1, 2, 3][..], &sentence, &sentence].concat();
        assert_eq!(looping(&twice), Some(12));
        assert_eq!(looping(&twice[..twice.len() - 1]), None);
        let mut changed = twice.clone();
        changed[10] = 99;
        assert_eq!(looping(&changed), None);
        let nine = [&sentence[..9], &sentence[..9]].concat();
        assert_eq!(looping(&nine), None);
        // A numbered list shares its layout, but its items differ.
        let list: Vec<u32> = (0..40).flat_map(|i| [1, 2, 100 + i, 3, 4, 200 + i]).collect();
        assert_eq!(looping(&list), None);
        // One token repeated.
        assert_eq!(looping(&[7; 60]), Some(1));
    }
}

//! A small multi-line text editor with soft word wrap, for the seed fields.
//!
//! The text is kept as logical lines and a cursor (line, char index). Wrapping is computed on
//! demand for a given width; [`wrap`] is the one place that decides where visual lines break, so
//! the cursor drawn and the cursor moved by ↑/↓ always agree with the text shown.

use unicode_width::UnicodeWidthChar;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextEditor {
    lines: Vec<String>,
    row: usize,
    /// Cursor position in chars within `lines[row]`.
    col: usize,
    multiline: bool,
}

/// One visual line: logical line `row`, chars `start..end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    pub row: usize,
    pub start: usize,
    pub end: usize,
}

fn char_width(c: char) -> usize {
    c.width().unwrap_or(0)
}

/// Breaks `line` into char ranges no wider than `width` columns, at the last space where one
/// exists (the space stays on the line it ends), else mid-word.
pub fn wrap_line(line: &str, width: usize) -> Vec<(usize, usize)> {
    let width = width.max(1);
    let chars: Vec<char> = line.chars().collect();
    let mut out = Vec::new();
    let mut start = 0;
    while start < chars.len() {
        let mut w = 0;
        let mut end = start;
        let mut last_space = None;
        while end < chars.len() {
            let cw = char_width(chars[end]);
            if w + cw > width && end > start {
                break;
            }
            if chars[end] == ' ' {
                last_space = Some(end);
            }
            w += cw;
            end += 1;
        }
        if end < chars.len() {
            // Keep spaces that follow the break point on this line: they are invisible.
            if chars[end] == ' ' {
                while end < chars.len() && chars[end] == ' ' {
                    end += 1;
                }
            } else if let Some(space) = last_space.filter(|s| *s > start) {
                end = space + 1;
            }
        }
        out.push((start, end));
        start = end;
    }
    if out.is_empty() {
        out.push((0, 0));
    }
    out
}

/// The visual lines of `lines` at `width`.
pub fn wrap<S: AsRef<str>>(lines: &[S], width: usize) -> Vec<Segment> {
    let mut out = Vec::new();
    for (row, line) in lines.iter().enumerate() {
        for (start, end) in wrap_line(line.as_ref(), width) {
            out.push(Segment { row, start, end });
        }
    }
    out
}

impl TextEditor {
    /// An editor over `text` with the cursor at its end. A single-line editor turns newlines
    /// into spaces.
    pub fn new(text: &str, multiline: bool) -> TextEditor {
        let lines: Vec<String> =
            if multiline { text.split('\n').map(str::to_string).collect() } else { vec![text.replace('\n', " ")] };
        let row = lines.len() - 1;
        let col = lines[row].chars().count();
        TextEditor { lines, row, col, multiline }
    }

    pub fn text(&self) -> String {
        self.lines.join("\n")
    }

    pub fn lines(&self) -> &[String] {
        &self.lines
    }

    pub fn cursor(&self) -> (usize, usize) {
        (self.row, self.col)
    }

    fn line_len(&self, row: usize) -> usize {
        self.lines[row].chars().count()
    }

    fn byte_at(&self, row: usize, col: usize) -> usize {
        self.lines[row].char_indices().nth(col).map_or(self.lines[row].len(), |(i, _)| i)
    }

    pub fn insert_char(&mut self, c: char) {
        if c == '\n' {
            self.newline();
            return;
        }
        let at = self.byte_at(self.row, self.col);
        self.lines[self.row].insert(at, c);
        self.col += 1;
    }

    pub fn insert_str(&mut self, s: &str) {
        let s = s.replace("\r\n", "\n").replace('\r', "\n");
        for c in s.chars() {
            if (c == '\n' && !self.multiline) || c == '\t' {
                self.insert_char(' ');
            } else if !c.is_control() || c == '\n' {
                self.insert_char(c);
            }
        }
    }

    /// Splits the line at the cursor; a single-line editor ignores it.
    pub fn newline(&mut self) {
        if !self.multiline {
            return;
        }
        let at = self.byte_at(self.row, self.col);
        let rest = self.lines[self.row].split_off(at);
        self.lines.insert(self.row + 1, rest);
        self.row += 1;
        self.col = 0;
    }

    pub fn backspace(&mut self) {
        if self.col > 0 {
            let at = self.byte_at(self.row, self.col - 1);
            self.lines[self.row].remove(at);
            self.col -= 1;
        } else if self.row > 0 {
            let line = self.lines.remove(self.row);
            self.row -= 1;
            self.col = self.line_len(self.row);
            self.lines[self.row].push_str(&line);
        }
    }

    pub fn delete(&mut self) {
        if self.col < self.line_len(self.row) {
            let at = self.byte_at(self.row, self.col);
            self.lines[self.row].remove(at);
        } else if self.row + 1 < self.lines.len() {
            let next = self.lines.remove(self.row + 1);
            self.lines[self.row].push_str(&next);
        }
    }

    /// Deletes the word before the cursor (Ctrl-W).
    pub fn delete_word_back(&mut self) {
        if self.col == 0 {
            // At a line start: join with the line above, as Backspace does.
            self.backspace();
            return;
        }
        let start = self.word_start();
        while self.col > start {
            self.backspace();
        }
    }

    /// Deletes from the line start to the cursor (Ctrl-U).
    pub fn delete_to_line_start(&mut self) {
        let at = self.byte_at(self.row, self.col);
        self.lines[self.row].replace_range(..at, "");
        self.col = 0;
    }

    fn word_start(&self) -> usize {
        let chars: Vec<char> = self.lines[self.row].chars().collect();
        let mut i = self.col;
        while i > 0 && chars[i - 1].is_whitespace() {
            i -= 1;
        }
        while i > 0 && !chars[i - 1].is_whitespace() {
            i -= 1;
        }
        i
    }

    pub fn left(&mut self) {
        if self.col > 0 {
            self.col -= 1;
        } else if self.row > 0 {
            self.row -= 1;
            self.col = self.line_len(self.row);
        }
    }

    pub fn right(&mut self) {
        if self.col < self.line_len(self.row) {
            self.col += 1;
        } else if self.row + 1 < self.lines.len() {
            self.row += 1;
            self.col = 0;
        }
    }

    pub fn word_left(&mut self) {
        if self.col == 0 {
            self.left();
            return;
        }
        self.col = self.word_start();
    }

    pub fn word_right(&mut self) {
        let chars: Vec<char> = self.lines[self.row].chars().collect();
        if self.col >= chars.len() {
            self.right();
            return;
        }
        let mut i = self.col;
        while i < chars.len() && !chars[i].is_whitespace() {
            i += 1;
        }
        while i < chars.len() && chars[i].is_whitespace() {
            i += 1;
        }
        self.col = i;
    }

    pub fn home(&mut self) {
        self.col = 0;
    }

    pub fn end(&mut self) {
        self.col = self.line_len(self.row);
    }

    /// The visual line index and column of the cursor at `width`.
    pub fn visual_cursor(&self, width: usize) -> (usize, usize) {
        let segments = wrap(&self.lines, width);
        let index = self.segment_of_cursor(&segments);
        let seg = segments[index];
        let x: usize = self.lines[self.row].chars().skip(seg.start).take(self.col - seg.start).map(char_width).sum();
        (index, x)
    }

    fn segment_of_cursor(&self, segments: &[Segment]) -> usize {
        let mut found = 0;
        for (i, s) in segments.iter().enumerate() {
            if s.row == self.row && s.start <= self.col {
                found = i;
                // The cursor at a break belongs to the next visual line, except at the line end.
                if self.col < s.end {
                    break;
                }
            }
        }
        found
    }

    /// Moves to the visual line above (`delta` −1) or below (+1), keeping the column.
    pub fn vertical(&mut self, delta: isize, width: usize) {
        let segments = wrap(&self.lines, width);
        let (index, x) = self.visual_cursor(width);
        let target = index as isize + delta;
        if target < 0 || target as usize >= segments.len() {
            if delta < 0 {
                self.col = 0;
                self.row = 0;
            } else {
                self.row = self.lines.len() - 1;
                self.col = self.line_len(self.row);
            }
            return;
        }
        let seg = segments[target as usize];
        let chars: Vec<char> = self.lines[seg.row].chars().collect();
        let last_of_line = segments.get(target as usize + 1).is_none_or(|n| n.row != seg.row);
        let limit = if last_of_line { seg.end } else { seg.end.saturating_sub(1).max(seg.start) };
        let mut col = seg.start;
        let mut w = 0;
        while col < limit && w + char_width(chars[col]) <= x {
            w += char_width(chars[col]);
            col += 1;
        }
        self.row = seg.row;
        self.col = col;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wraps_at_spaces_and_mid_word_when_it_must() {
        assert_eq!(wrap_line("hello world foo", 11), vec![(0, 12), (12, 15)]);
        assert_eq!(wrap_line("abcdefgh", 3), vec![(0, 3), (3, 6), (6, 8)]);
        assert_eq!(wrap_line("", 5), vec![(0, 0)]);
        assert_eq!(wrap_line("日本語テキスト", 4), vec![(0, 2), (2, 4), (4, 6), (6, 7)]);
    }

    #[test]
    fn edits_across_lines() {
        let mut e = TextEditor::new("ab", true);
        e.newline();
        e.insert_str("cd\r\nef");
        assert_eq!(e.text(), "ab\ncd\nef");
        e.home();
        e.backspace();
        assert_eq!(e.text(), "ab\ncdef");
        e.delete_word_back();
        assert_eq!(e.text(), "ab\nef");
        e.delete_word_back();
        assert_eq!(e.text(), "abef");
        let mut single = TextEditor::new("x", false);
        single.insert_str("y\nz");
        single.newline();
        assert_eq!(single.text(), "xy z");
    }

    #[test]
    fn multibyte_text_keeps_char_boundaries() {
        let mut e = TextEditor::new("é😀", false);
        e.left();
        e.insert_char('x');
        e.backspace();
        e.backspace();
        assert_eq!(e.text(), "😀");
    }

    #[test]
    fn vertical_moves_follow_the_wrap() {
        // "aaaa bbbb cccc" at width 5 shows three visual lines.
        let mut e = TextEditor::new("aaaa bbbb cccc", true);
        assert_eq!(e.visual_cursor(5), (2, 4));
        e.vertical(-1, 5);
        assert_eq!(e.cursor(), (0, 9));
        e.vertical(-1, 5);
        assert_eq!(e.cursor(), (0, 4));
        e.vertical(1, 5);
        e.vertical(1, 5);
        assert_eq!(e.cursor(), (0, 14));
    }
}

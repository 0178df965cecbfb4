//! Drawing the Seeds screen: the seed list (search line, per-task counts, rows) and the detail
//! panel (fields, inline problems). Layout functions are shared with mouse hit-testing.

use ratatui::layout::{Position, Rect};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Paragraph, Wrap};
use ratatui::Frame;
use unicode_width::UnicodeWidthStr;

use super::editor::{wrap, Segment};
use super::seeds::{Field, Focus, SeedsScreen};
use super::shared::truncate;
use super::theme::Theme;
use crate::seeds::{Seed, Task};

const LABEL_WIDTH: u16 = 6;
const MAX_PROBLEM_LINES: usize = 3;

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or("")
}

/// Per-task counts of the visible seeds, packed into lines of `width`.
fn count_lines<'a>(screen: &SeedsScreen, visible: &[usize], width: usize, theme: &Theme) -> Vec<Line<'a>> {
    let mut counts: Vec<(String, usize)> = Vec::new();
    for &i in visible {
        let task = screen.doc.seeds[i].task.clone();
        match counts.iter_mut().find(|(t, _)| *t == task) {
            Some((_, n)) => *n += 1,
            None => counts.push((task, 1)),
        }
    }
    let order = |t: &str| t.parse::<Task>().map_or(usize::MAX, |t| t as usize);
    counts.sort_by_key(|(t, _)| (order(t), t.clone()));
    let mut lines = Vec::new();
    let mut spans: Vec<Span> = Vec::new();
    let mut used = 0;
    for (task, n) in counts {
        let token_width = task.width() + 1 + n.to_string().len();
        if used > 0 && used + 2 + token_width > width {
            lines.push(Line::from(std::mem::take(&mut spans)));
            used = 0;
        }
        if used > 0 {
            spans.push(Span::raw("  "));
            used += 2;
        }
        let style = if task.parse::<Task>().is_ok() { theme.key } else { theme.error };
        spans.push(Span::styled(task, style));
        spans.push(Span::styled(format!(" {n}"), theme.base));
        used += token_width;
    }
    if !spans.is_empty() {
        lines.push(Line::from(spans));
    }
    lines
}

/// The list panel's parts: header lines (search, counts) and the rows below them.
pub struct ListLayout<'a> {
    pub header: Vec<Line<'a>>,
    pub rows: Rect,
}

pub fn list_layout<'a>(screen: &SeedsScreen, area: Rect, theme: &Theme) -> ListLayout<'a> {
    let inner = Block::default().borders(Borders::ALL).inner(area);
    let visible = screen.visible();
    let mut header = Vec::new();
    if screen.searching || !screen.filter.is_empty() {
        let mut spans = vec![Span::styled("/", theme.accent), Span::styled(screen.filter.clone(), theme.search_match)];
        if !screen.searching {
            spans.push(Span::styled("  Esc clears", theme.muted));
        }
        header.push(Line::from(spans));
    }
    header.extend(count_lines(screen, &visible, inner.width as usize, theme));
    let used = (header.len() as u16).min(inner.height);
    let rows = Rect { y: inner.y + used, height: inner.height - used, ..inner };
    ListLayout { header, rows }
}

pub fn render_list(frame: &mut Frame, screen: &SeedsScreen, area: Rect, theme: &Theme) {
    let visible = screen.visible();
    let focused = screen.focus == Focus::List;
    let title = if screen.filter.is_empty() {
        format!(" {} · {} seeds ", screen.file_name(), screen.doc.seeds.len())
    } else {
        format!(" {}/{} match · {} ", visible.len(), screen.doc.seeds.len(), screen.file_name())
    };
    let block = Block::default()
        .borders(Borders::ALL)
        .border_style(if focused { theme.border_focus } else { theme.border })
        .title(Span::styled(truncate(&title, area.width.saturating_sub(2) as usize), theme.title));
    frame.render_widget(block, area);
    let layout = list_layout(screen, area, theme);
    let inner = Block::default().borders(Borders::ALL).inner(area);
    let header_area = Rect { height: layout.rows.y - inner.y, ..inner };
    frame.render_widget(Paragraph::new(layout.header).style(theme.base), header_area);
    if screen.searching {
        let x = inner.x + 1 + screen.filter.width() as u16;
        if x < inner.right() {
            frame.set_cursor_position(Position { x, y: inner.y });
        }
    }

    let rows = layout.rows;
    if rows.height == 0 {
        return;
    }
    if visible.is_empty() {
        let text = if screen.doc.seeds.is_empty() {
            "No seeds yet: press a to add one."
        } else {
            "No seed matches; Esc clears the search."
        };
        frame.render_widget(Paragraph::new(text).style(theme.muted).wrap(Wrap { trim: true }), rows);
        return;
    }
    let height = rows.height as usize;
    let pos = visible.iter().position(|&i| i == screen.selected).unwrap_or(0);
    let mut offset = screen.list_offset.get().min(visible.len().saturating_sub(1));
    if pos < offset {
        offset = pos;
    } else if pos >= offset + height {
        offset = pos + 1 - height;
    }
    screen.list_offset.set(offset);

    let id_width = visible.iter().map(|&i| screen.doc.seeds[i].id.width()).max().unwrap_or(0).min(10);
    let width = rows.width as usize;
    let lines: Vec<Line> = visible
        .iter()
        .skip(offset)
        .take(height)
        .map(|&i| {
            let seed = &screen.doc.seeds[i];
            let has_problem = screen.seed_problems(i).next().is_some();
            let marker = if has_problem { Span::styled("!", theme.error) } else { Span::raw(" ") };
            let id = format!("{:<id_width$} ", truncate(&seed.id, id_width));
            let task = format!("{:<5} ", truncate(&seed.task, 5));
            let rest = width.saturating_sub(1 + id.width() + task.width());
            let instruction = truncate(first_line(&seed.instruction), rest);
            let selected = i == screen.selected;
            let style = match (selected, focused) {
                (true, true) => theme.selection,
                (true, false) => theme.selection_unfocused,
                _ => theme.base,
            };
            let mut line = Line::from(vec![
                marker,
                Span::styled(id, if selected { style } else { theme.accent }),
                Span::styled(task, if selected { style } else { theme.muted }),
                Span::styled(instruction, style),
            ]);
            if selected {
                line = line.style(style);
            }
            line
        })
        .collect();
    frame.render_widget(Paragraph::new(lines).style(theme.base), rows);
}

/// Where one field is drawn: its label and its text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FieldArea {
    pub field: Field,
    pub label: Rect,
    pub body: Rect,
}

/// The detail panel's field areas for the current seed, and the area left for problems.
pub fn detail_layout(screen: &SeedsScreen, area: Rect) -> (Vec<FieldArea>, Rect) {
    let inner = Block::default().borders(Borders::ALL).inner(area);
    let Some(seed) = screen.current() else { return (Vec::new(), inner) };
    let width = inner.width;
    let problems = screen.seed_problems(screen.selected).count().min(MAX_PROBLEM_LINES) as u16;
    let mut out = Vec::new();
    let mut y = inner.y;
    let bottom = inner.bottom();
    for field in [Field::Id, Field::Task, Field::Tags] {
        if y >= bottom {
            break;
        }
        let label = Rect { x: inner.x, y, width: LABEL_WIDTH.min(width), height: 1 };
        let body = Rect { x: inner.x + label.width, y, width: width - label.width, height: 1 };
        out.push(FieldArea { field, label, body });
        y += 1;
    }
    // The three long fields share what is left: each gets a header line and one text line, then
    // the focused field, instruction, output and input grow in that order as far as they want.
    let big = [Field::Instruction, Field::Input, Field::Output];
    let available = bottom.saturating_sub(y).saturating_sub(problems) as usize;
    let text_width = width as usize;
    let wants: Vec<usize> = big
        .iter()
        .map(|f| {
            let text = match &screen.editing {
                Some(e) if e.field == *f => e.editor.text(),
                _ => f.text(seed),
            };
            let lines: Vec<&str> = text.split('\n').collect();
            wrap(&lines, text_width).len().max(1)
        })
        .collect();
    let mut heights = [0usize; 3];
    let mut left = available;
    for h in heights.iter_mut() {
        let give = left.min(2);
        *h = give;
        left -= give;
    }
    let focused = match screen.focus {
        Focus::Detail(f) => big.iter().position(|b| *b == f),
        Focus::List => None,
    };
    let mut order: Vec<usize> = focused.into_iter().collect();
    for i in [0, 2, 1] {
        if !order.contains(&i) {
            order.push(i);
        }
    }
    for i in order {
        let more = (wants[i] + 1).saturating_sub(heights[i]).min(left);
        heights[i] += more;
        left -= more;
    }
    for (i, field) in big.into_iter().enumerate() {
        let h = heights[i] as u16;
        if h == 0 {
            continue;
        }
        let label = Rect { x: inner.x, y, width, height: 1 };
        let body = Rect { x: inner.x, y: y + 1, width, height: h - 1 };
        out.push(FieldArea { field, label, body });
        y += h;
    }
    let problems_area =
        Rect { x: inner.x, y: bottom.saturating_sub(problems), width, height: problems.min(inner.height) };
    (out, problems_area)
}

/// The field under a screen position, for mouse clicks.
pub fn field_at(screen: &SeedsScreen, area: Rect, pos: Position) -> Option<Field> {
    let (fields, _) = detail_layout(screen, area);
    fields.into_iter().find(|f| f.label.contains(pos) || f.body.contains(pos)).map(|f| f.field)
}

pub fn render_detail(frame: &mut Frame, screen: &SeedsScreen, area: Rect, theme: &Theme) {
    let focused = matches!(screen.focus, Focus::Detail(_));
    let title = match screen.current() {
        _ if screen.read_only() => " read-only ".to_string(),
        Some(seed) => format!(" {} ", if seed.id.is_empty() { "(no id)" } else { &seed.id }),
        None => " seed ".to_string(),
    };
    let block = Block::default()
        .borders(Borders::ALL)
        .border_style(if focused { theme.border_focus } else { theme.border })
        .title(Span::styled(truncate(&title, area.width.saturating_sub(2) as usize), theme.title));
    let inner = block.inner(area);
    frame.render_widget(block, area);

    if screen.read_only() {
        let mut lines = vec![
            Line::styled(
                "Saving this file would lose what these problems are about, so it opens read-only. \
                 Fix them in a text editor, then press R to reload.",
                theme.warning,
            ),
            Line::raw(""),
        ];
        for p in &screen.load_problems {
            let at = p.pos.map(|p| format!("{}:{} ", p.line, p.column)).unwrap_or_default();
            let path = p.path();
            let sep = if path.is_empty() { "" } else { ": " };
            lines.push(Line::styled(format!("{at}{path}{sep}{}", p.message), theme.error));
        }
        frame.render_widget(Paragraph::new(lines).style(theme.base).wrap(Wrap { trim: false }), inner);
        return;
    }
    let Some(seed) = screen.current() else {
        let text = "This file has no seeds yet. Press a to add the first one.";
        frame.render_widget(Paragraph::new(text).style(theme.muted).wrap(Wrap { trim: true }), inner);
        return;
    };

    let (fields, problems_area) = detail_layout(screen, area);
    for fa in &fields {
        render_field(frame, screen, seed, fa, theme);
    }

    let problems: Vec<Line> = screen
        .seed_problems(screen.selected)
        .take(MAX_PROBLEM_LINES)
        .map(|p| {
            Line::styled(truncate(&format!("✗ {}: {}", p.field, p.message), problems_area.width as usize), theme.error)
        })
        .collect();
    frame.render_widget(Paragraph::new(problems).style(theme.base), problems_area);
}

fn render_field(frame: &mut Frame, screen: &SeedsScreen, seed: &Seed, fa: &FieldArea, theme: &Theme) {
    let field = fa.field;
    let is_focused = screen.focus == Focus::Detail(field);
    let editing = screen.editing.as_ref().filter(|e| e.field == field);
    let has_problem = screen.seed_problems(screen.selected).any(|p| p.field == field.label());
    let label_style = if is_focused { theme.field_label_focus } else { theme.field_label };

    if field.multiline() {
        let text = editing.map(|e| e.editor.text()).unwrap_or_else(|| field.text(seed));
        let count = format!("{} chars", text.chars().count());
        let name = format!(" {} ", field.label());
        let mark = if has_problem { " ✗" } else { "" };
        let hint = match (editing.is_some(), is_focused) {
            (true, _) => "  Esc done · Tab next",
            (false, true) => "  Enter edits",
            _ => "",
        };
        // One blank column at the right edge, like the labels' leading space.
        let fill =
            (fa.label.width as usize).saturating_sub(name.width() + mark.width() + hint.width() + count.width() + 1);
        let label = Line::from(vec![
            Span::styled(name, label_style),
            Span::styled(mark, theme.error),
            Span::styled(hint, theme.muted),
            Span::raw(" ".repeat(fill)),
            Span::styled(count, theme.muted),
        ]);
        frame.render_widget(Paragraph::new(label).style(theme.base), fa.label);
    } else {
        let label = format!("{:<w$}", field.label(), w = LABEL_WIDTH as usize);
        frame.render_widget(Paragraph::new(Span::styled(label, label_style)), fa.label);
    }

    let body = fa.body;
    if body.height == 0 || body.width == 0 {
        return;
    }
    if field == Field::Task {
        let line = match seed.task() {
            Some(t) => Line::from(vec![
                Span::styled(t.as_str(), theme.key),
                Span::styled(format!(" · {}", t.describe()), theme.muted),
                Span::styled(if is_focused { "  ←/→ changes" } else { "" }, theme.muted),
            ]),
            None => Line::styled(format!("{} (unknown task; t cycles)", seed.task), theme.error),
        };
        frame.render_widget(Paragraph::new(line).style(theme.base), body);
        return;
    }

    let width = body.width as usize;
    screen.text_width.set(width);
    let (lines, segments, cursor) = match editing {
        Some(e) => {
            let lines = e.editor.lines().to_vec();
            let segments = wrap(&lines, width);
            (lines, segments, Some(e.editor.visual_cursor(width)))
        }
        None => {
            let text = field.text(seed);
            let lines: Vec<String> = text.split('\n').map(str::to_string).collect();
            let segments = wrap(&lines, width);
            (lines, segments, None)
        }
    };
    let height = body.height as usize;
    let mut scroll = 0;
    if let (Some(e), Some((row, _))) = (editing, cursor) {
        scroll = e.scroll.get();
        if row < scroll {
            scroll = row;
        } else if row >= scroll + height {
            scroll = row + 1 - height;
        }
        e.scroll.set(scroll);
    }
    let segment_text = |s: &Segment| -> String { lines[s.row].chars().skip(s.start).take(s.end - s.start).collect() };
    let empty = lines.len() == 1 && lines[0].is_empty();
    let mut shown: Vec<Line> = if empty && editing.is_none() {
        let placeholder = match field {
            Field::Input => "(no input: the instruction stands alone)",
            Field::Tags => "(no tags)",
            _ => "(empty)",
        };
        vec![Line::styled(placeholder, if has_problem { theme.error } else { theme.muted })]
    } else {
        segments.iter().skip(scroll).take(height).map(|s| Line::styled(segment_text(s), theme.base)).collect()
    };
    let hidden = segments.len().saturating_sub(scroll + height);
    if editing.is_none() && hidden > 0 && !shown.is_empty() {
        let last = shown.len() - 1;
        shown[last] = Line::styled(format!("… {} more line(s)", hidden + 1), theme.muted);
    }
    frame.render_widget(Paragraph::new(shown).style(theme.base), body);
    if let Some((row, x)) = cursor {
        let y = body.y + (row - scroll) as u16;
        let x = body.x + (x as u16).min(body.width.saturating_sub(1));
        frame.set_cursor_position(Position { x, y });
    }
}

//! The `?` overlay: every key, by where it works. README's key table is this list.

use ratatui::layout::Rect;
use ratatui::text::{Line, Span};
use ratatui::widgets::Paragraph;
use ratatui::Frame;

use super::editor::wrap_line;
use super::theme::Theme;

pub const KEYS: &[(&str, &[(&str, &str)])] = &[
    (
        "Everywhere",
        &[
            ("?", "this help (j/k scroll, Esc closes)"),
            ("q, Ctrl-c", "quit, saving first"),
            ("Ctrl-s", "save now"),
            ("o", "open or create a seed file"),
            ("T", "next theme"),
            ("1 2 3 4 5 6 7 8", "the Seeds, Generate, Review, Train, Eval, Compare, Sweeps, Corpus tab (or click the tab)"),
            ("mouse", "click a seed or a field; click a focused field to edit; wheel scrolls"),
        ],
    ),
    (
        "Seed list",
        &[
            ("j k, ↓ ↑", "next, previous seed"),
            ("g G, Home End", "first, last seed"),
            ("Ctrl-d Ctrl-u, PgDn PgUp", "ten seeds down, up"),
            ("Enter, l, →, Tab", "go to the seed's fields"),
            ("/", "search all fields (Enter keeps the filter)"),
            ("Esc", "clear the filter"),
        ],
    ),
    (
        "Seeds (list or fields)",
        &[
            ("a", "add a seed after this one"),
            ("y", "duplicate this seed"),
            ("d, Delete", "delete this seed"),
            ("u, Ctrl-r", "undo, redo"),
            ("t", "next task"),
            ("[ ]", "previous, next seed"),
            ("R", "reload the file from disk"),
            ("W", "overwrite a file that changed on disk"),
        ],
    ),
    (
        "Fields",
        &[
            ("j k, ↓ ↑, Tab Shift-Tab", "next, previous field"),
            ("Enter, i, e", "edit the field"),
            ("h l, ← →, Space", "on task: previous, next task"),
            ("Esc, h, ←", "back to the list"),
        ],
    ),
    (
        "Editing a field",
        &[
            ("typing, paste", "changes the seed; saved after a short pause"),
            ("Enter", "new line (in id and tags: done)"),
            ("Esc", "done"),
            ("Tab, Shift-Tab", "done, then edit the next, previous field"),
            ("arrows, Home End", "move the cursor"),
            ("Ctrl-← Ctrl-→", "word left, right"),
            ("Ctrl-a Ctrl-e", "line start, end"),
            ("Ctrl-w Ctrl-u", "delete word, delete to line start"),
        ],
    ),
    (
        "Search (/)",
        &[
            ("typing", "filter seeds"),
            ("↓ ↑", "move in the results"),
            ("Enter", "keep the filter"),
            ("Esc", "clear it"),
        ],
    ),
    (
        "Generate (2)",
        &[
            ("j k, ↓ ↑, Tab", "next, previous setting"),
            ("h l, ← →", "change seeds, adapter (a trained one, plain or contrastive), corpus or mode"),
            ("h l, ← → on Model", "the fetchable models in turn (SmolLM2-135M-Instruct, Gemma 3 270M base)"),
            ("Enter, e", "type the model folder or N (Enter keeps, Esc cancels)"),
            ("s", "start, or continue a stopped run with the same settings"),
            ("x", "stop after the current token (the run can be continued), or cancel a fetch"),
            ("q", "leave the workbench; a run goes on (detached): `selfspec attach RUN` follows it"),
            ("F", "fetch the model chosen on Model (else the default, SmolLM2-135M-Instruct), and use it"),
        ],
    ),
    (
        "Review (3)",
        &[
            ("j k, ↓ ↑, g G", "next, previous, first, last sample"),
            ("a", "accept, then the next sample"),
            ("r", "reject, then the next sample"),
            ("e", "edit the response (Esc saves it as edited, Ctrl-c discards)"),
            ("s", "skip to the next sample"),
            ("u", "undo the last decision"),
            ("f", "filter: all, pending, accepted, rejected, edited"),
            ("[ ]", "previous, next run"),
            ("x", "export accepted and edited samples as Alpaca JSONL"),
            ("t", "trace the sample: its tokens coloured by the document that drove each, ←/→ move, the token's per-document probabilities and top tokens below; t or Esc closes"),
            ("p", "make the sample (as edited) a seed: ←/→ choose its task, Enter adds it to the run's seed file, Esc cancels"),
            ("c", "the sample's retrieval in the Corpus tab: the documents its run's index gives it, their eq. 2 weights and the weights the run recorded"),
        ],
    ),
    (
        "Train (4)",
        &[
            ("j k, ↓ ↑", "choose a run"),
            ("s", "a new run on the accepted samples of the Review tab's run, with the Generate tab's model: its settings, schedule, estimated memory and time, and warnings first"),
            ("b a e l", "(settings) micro-batch, accumulation, epochs, max_seq_length: next value"),
            ("w c", "(settings) warm-up as steps or a tenth of the run; gradient checkpointing on or off"),
            ("p", "(settings) the frozen base: as the file stores it (a quantized file: QLoRA over its blocks), f32 copies, or QLoRA in q4_0, q4k, q8_0"),
            ("Enter Esc", "(settings) start the run; cancel"),
            ("x", "stop the run (it writes a checkpoint)"),
            ("w", "loss chart: recent steps or the whole run"),
            ("R", "look for new runs"),
        ],
    ),
    (
        "Eval (5)",
        &[
            ("d", "next evaluation set (the workspace's eval/ folders)"),
            ("t", "all datasets of the set, or one"),
            ("a", "adapters to compare with the base: all, or one"),
            ("n", "shots: 0,1,5 or one k"),
            ("s", "evaluate (detached) with the Generate tab's model; with the same settings, continue a stopped run"),
            ("x", "stop the evaluation (the answers scored so far are kept)"),
            ("h j k l, arrows", "move in the table (the chart follows the dataset)"),
            ("Enter", "the prediction/reference pairs of the cell (Esc closes)"),
        ],
    ),
    (
        "Compare (6)",
        &[
            ("e, Enter", "type the prompt (Enter keeps, Esc cancels)"),
            ("p", "take the next prompt from the workspace's evaluation sets"),
            ("g", "greedy or sampled (temperature 0.7, top-p 0.9, seeded)"),
            ("s", "answer with the base model and every trained adapter, side by side"),
            ("x", "stop the answers"),
        ],
    ),
    (
        "Sweeps (7)",
        &[
            ("j k, ↓ ↑", "choose a sweep"),
            ("a", "the chart's axis: seed count or sample count (a Seeded LoRA sweep: the next point's LMC curves)"),
            ("n", "new: choose a sweep file in sweeps/ and see its plan; s starts it, Esc closes"),
            ("s", "continue the chosen sweep (stopped, interrupted or failed)"),
            ("x", "stop the sweep (its current stage saves its work)"),
            ("R", "look for new sweeps"),
        ],
    ),
    (
        "Corpus (8)",
        &[
            ("j k, ↓ ↑", "choose a corpus of the workspace's corpora/ folder (its documents, their lengths, its index)"),
            ("/", "search as you type: BM25 scores, eq. 2 weights of the best k, the query's words marked (Enter keeps, Esc clears)"),
            ("[ ]", "previous, next seed of the corpus's domain: the documents retrieval gives it and their eq. 2 weights"),
            ("b", "build the index, or rebuild it (the old one stays until the new one is complete)"),
            ("J K, PgDn PgUp", "scroll the hits"),
            ("Esc", "clear the query"),
            ("R", "look for new corpora"),
        ],
    ),
    ("Files (o)", &[("j k, ↓ ↑", "choose"), ("Enter", "open"), ("n", "new seed file"), ("Esc", "close")]),
];

/// The help text at `width` columns: keys in a column, descriptions wrapped beside them.
fn lines(theme: &Theme, width: usize) -> Vec<Line<'static>> {
    let key_width = KEYS.iter().flat_map(|(_, ks)| ks.iter().map(|(k, _)| k.chars().count())).max().unwrap_or(0);
    let text_width = width.saturating_sub(key_width + 4).max(10);
    let mut out = Vec::new();
    for (i, (section, keys)) in KEYS.iter().enumerate() {
        if i > 0 {
            out.push(Line::raw(""));
        }
        out.push(Line::styled(*section, theme.title));
        for (k, what) in keys.iter() {
            for (j, (start, end)) in wrap_line(what, text_width).into_iter().enumerate() {
                let part: String = what.chars().skip(start).take(end - start).collect();
                let key = if j == 0 { *k } else { "" };
                out.push(Line::from(vec![
                    Span::styled(format!("  {key:<key_width$}  "), theme.key),
                    Span::styled(part, theme.base),
                ]));
            }
        }
    }
    out
}

/// Draws the help scrolled by `scroll` lines; returns how far it can scroll at this size.
pub fn render(frame: &mut Frame, area: Rect, scroll: usize, theme: &Theme) -> usize {
    let inner = super::shared::overlay_box(
        frame,
        area,
        area.width.saturating_sub(4).min(78),
        area.height.saturating_sub(2),
        " keys · j/k scroll · Esc closes ",
        theme,
    );
    let text = lines(theme, inner.width as usize);
    let max_scroll = text.len().saturating_sub(inner.height as usize);
    let scroll = scroll.min(max_scroll);
    frame.render_widget(Paragraph::new(text).style(theme.base).scroll((scroll as u16, 0)), inner);
    max_scroll
}

//! Prompt templates (assets/prompts/, editable copies may replace them) and reading the task
//! lists a model writes back.
//!
//! A template is text with `{{name}}` variables; rendering names any variable the template uses
//! but the caller does not provide, with its line, rather than leaving it in the prompt.

use regex::Regex;
use serde::Serialize;

use crate::seeds::Seed;

/// The bundled templates: (name, text).
pub const BUNDLED: [(&str, &str); 5] = [
    ("instruction_generation", include_str!("../assets/prompts/instruction_generation.txt")),
    ("response_generation", include_str!("../assets/prompts/response_generation.txt")),
    ("response_generation_no_document", include_str!("../assets/prompts/response_generation_no_document.txt")),
    ("alpaca", include_str!("../assets/prompts/alpaca.txt")),
    ("alpaca_no_input", include_str!("../assets/prompts/alpaca_no_input.txt")),
];

pub fn bundled(name: &str) -> &'static str {
    BUNDLED.iter().find(|(n, _)| *n == name).map(|(_, t)| *t).unwrap_or("")
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("template {template}, line {line}: {message}")]
pub struct TemplateError {
    pub template: String,
    pub line: usize,
    pub message: String,
}

/// Fills `{{name}}` from `vars`. `template_name` names the template in errors.
pub fn render(template_name: &str, template: &str, vars: &[(&str, &str)]) -> Result<String, TemplateError> {
    let mut out = String::with_capacity(template.len() * 2);
    let mut rest = template;
    let line_of = |at: usize| template[..at].matches('\n').count() + 1;
    while let Some(open) = rest.find("{{") {
        let offset = template.len() - rest.len() + open;
        out.push_str(&rest[..open]);
        let after = &rest[open + 2..];
        let Some(close) = after.find("}}") else {
            return Err(TemplateError {
                template: template_name.into(),
                line: line_of(offset),
                message: "`{{` is never closed".into(),
            });
        };
        let name = after[..close].trim();
        match vars.iter().find(|(k, _)| *k == name) {
            Some((_, v)) => out.push_str(v),
            None => {
                let known: Vec<&str> = vars.iter().map(|(k, _)| *k).collect();
                return Err(TemplateError {
                    template: template_name.into(),
                    line: line_of(offset),
                    message: format!("unknown variable {{{{{name}}}}}; this template can use {}", known.join(", ")),
                });
            }
        }
        rest = &after[close + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

/// The templates a generation run uses: the seed file's own, else the workspace's editable copy
/// (`<workspace>/prompts/NAME.txt`), else the bundled one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Templates {
    pub instruction: String,
    pub response: String,
    pub response_no_document: String,
}

impl Templates {
    pub fn load(
        dir: Option<&std::path::Path>,
        overrides: &crate::seeds::PromptOverrides,
    ) -> std::io::Result<Templates> {
        let read = |name: &str| -> std::io::Result<String> {
            if let Some(path) = dir.map(|d| d.join(format!("{name}.txt"))).filter(|p| p.exists()) {
                return std::fs::read_to_string(&path)
                    .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", path.display())));
            }
            Ok(bundled(name).to_string())
        };
        Ok(Templates {
            instruction: match &overrides.instruction_generation {
                Some(t) => t.clone(),
                None => read("instruction_generation")?,
            },
            response: match &overrides.response_generation {
                Some(t) => t.clone(),
                None => read("response_generation")?,
            },
            response_no_document: read("response_generation_no_document")?,
        })
    }
}

/// The response-generation prompt for one task, with or without a retrieved document. Blank
/// lines an empty variable leaves behind are collapsed, and the prompt ends where the answer
/// starts.
pub fn response_prompt(
    templates: &Templates,
    domain: &str,
    document: Option<&str>,
    instruction: &str,
    input: &str,
) -> Result<String, TemplateError> {
    let (name, template) = match document {
        Some(_) => ("response_generation", &templates.response),
        None => ("response_generation_no_document", &templates.response_no_document),
    };
    let vars = [
        ("domain", domain),
        ("document", document.unwrap_or("").trim()),
        ("instruction", instruction.trim()),
        ("input", input.trim()),
    ];
    let text = render(name, template, &vars)?;
    let mut out = String::with_capacity(text.len());
    let mut newlines = 0;
    for c in text.chars() {
        newlines = if c == '\n' { newlines + 1 } else { 0 };
        if newlines <= 2 {
            out.push(c);
        }
    }
    Ok(out.trim_end().to_string())
}

/// One seed as a numbered example task, in the layout [`parse_tasks`] reads.
fn example(number: usize, seed: &Seed) -> String {
    let input = if seed.input.trim().is_empty() { "<noinput>" } else { seed.input.trim() };
    format!("Task {number}\nInstruction: {}\nInput: {input}\n", seed.instruction.trim())
}

/// The instruction-generation prompt: the demos as tasks 1..=n, then the first line of the next
/// task, which the model continues. Returns the prompt and that primer (to put back in front of
/// the model's text before parsing).
pub fn instruction_prompt(
    template: &str,
    domain: &str,
    description: &str,
    demos: &[&Seed],
    count: usize,
) -> Result<(String, String), TemplateError> {
    let mut examples: String = demos.iter().enumerate().map(|(i, s)| example(i + 1, s) + "\n").collect();
    let primer = format!("Task {}\nInstruction:", demos.len() + 1);
    examples.push_str(&primer);
    let count = count.to_string();
    let description = if description.trim().is_empty() { "(no description given)" } else { description.trim() };
    let prompt = render(
        "instruction_generation",
        template,
        &[("domain", domain), ("description", description), ("count", &count), ("examples", &examples)],
    )?;
    // The model continues the primer itself, so nothing may follow it.
    Ok((prompt.trim_end().to_string(), primer))
}

/// A task the model wrote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Task {
    pub instruction: String,
    pub input: String,
}

/// Why an item of the model's list was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Unparsed {
    EmptyInstruction,
    NoInput,
    EmptyInput,
    /// The last item, cut off by the token limit.
    Truncated,
    /// The last item, caught in a repetition loop (the list was stopped there).
    Loop,
}

fn header_line() -> &'static Regex {
    static RE: std::sync::OnceLock<Regex> = std::sync::OnceLock::new();
    RE.get_or_init(|| Regex::new(r"(?i)^\s*(?:task\s*#?\s*\d+|\d+\s*[.):])\s*[.:)-]?\s*$").expect("valid regex"))
}

fn marker(word: &str) -> Regex {
    Regex::new(&format!(r"(?mi)^[ \t]*(?:(?:task[ \t]*#?[ \t]*)?\d+[ \t]*[.):-]?[ \t]*)?{word}s?[ \t]*:[ \t]*"))
        .expect("valid regex")
}

/// Reads the numbered tasks in `text` (the primer and the model's continuation). Tolerates
/// `Task N` headers or `N.` numbering, plural markers (`Instructions:`, `Inputs:`), CRLF, extra
/// `Output:` sections and blank lines; `<noinput>` means an empty input. With `truncated`, the last item is dropped: the token
/// limit cut it.
pub fn parse_tasks(text: &str, truncated: bool) -> (Vec<Task>, Vec<Unparsed>) {
    let items = items(text);
    let count = items.len();
    let mut tasks = Vec::new();
    let mut failures = Vec::new();
    for (i, (instruction, input)) in items.into_iter().enumerate() {
        if truncated && i + 1 == count {
            failures.push(Unparsed::Truncated);
            break;
        }
        if instruction.is_empty() {
            failures.push(Unparsed::EmptyInstruction);
            continue;
        }
        let Some(input) = input else {
            failures.push(Unparsed::NoInput);
            continue;
        };
        let lowered = input.to_lowercase();
        let input = if lowered == "<noinput>" || lowered == "<no input>" {
            String::new()
        } else if input.is_empty() {
            failures.push(Unparsed::EmptyInput);
            continue;
        } else {
            input
        };
        tasks.push(Task { instruction, input });
    }
    (tasks, failures)
}

/// The items of a task list, in order: each one's instruction and its input (none without an
/// `Input:` marker), both trimmed of a trailing `Task N` header, an `Output:` section dropped.
/// An item begins at each `Instruction:` marker.
fn items(text: &str) -> Vec<(String, Option<String>)> {
    static MARKERS: std::sync::OnceLock<(Regex, Regex, Regex)> = std::sync::OnceLock::new();
    let (instruction_re, input_re, output_re) =
        MARKERS.get_or_init(|| (marker("instruction"), marker("input"), marker("output")));
    let text = text.replace("\r\n", "\n");
    let starts: Vec<(usize, usize)> = instruction_re.find_iter(&text).map(|m| (m.start(), m.end())).collect();
    starts
        .iter()
        .enumerate()
        .map(|(i, &(_, body_start))| {
            let end = starts.get(i + 1).map_or(text.len(), |(s, _)| *s);
            let item = &text[body_start..end];
            // A model that also writes the answer: keep only instruction and input.
            let item = output_re.find(item).map_or(item, |m| &item[..m.start()]);
            match input_re.find(item) {
                Some(m) => (strip_trailing_header(&item[..m.start()]), Some(strip_trailing_header(&item[m.end()..]))),
                None => (strip_trailing_header(item), None),
            }
        })
        .collect()
}

/// Items in a row that must be unusable for [`list_gone_bad`] to end a list.
pub const BAD_ITEMS_IN_A_ROW: usize = 2;

/// Whether a task list being written has stopped giving usable tasks: its last
/// [`BAD_ITEMS_IN_A_ROW`] finished items (an item is finished once the next one begins) each
/// lack an instruction or an input, or repeat an earlier item's instruction (ROUGE-L F above
/// 0.7). `text` is the model's continuation of the primer, which opens the first item. Replayed
/// on 303 lists of the default model, it ended 45 of them early, saved 17 % of their tokens and
/// lost none of the tasks that passed the filters (docs/PERFORMANCE.md).
pub fn list_gone_bad(text: &str) -> bool {
    let mut items = items(&format!("Instruction:{text}"));
    // Finished items only: the last one is still being written.
    items.pop();
    if items.len() < BAD_ITEMS_IN_A_ROW {
        return false;
    }
    let mut seen: Vec<Vec<String>> = Vec::new();
    let mut bad_run = 0;
    for (instruction, input) in &items {
        let tokens = crate::metrics::rouge_tokens(instruction);
        let repeats = seen.iter().any(|t| crate::metrics::rouge_l_tokens(t, &tokens).fmeasure > 0.7);
        let usable = !instruction.is_empty() && input.as_ref().is_some_and(|i| !i.is_empty()) && !repeats;
        seen.push(tokens);
        bad_run = if usable { 0 } else { bad_run + 1 };
    }
    bad_run >= BAD_ITEMS_IN_A_ROW
}

/// Trims, and drops a `Task N` / `N.` header line at the end (it starts the next item).
fn strip_trailing_header(s: &str) -> String {
    let mut lines: Vec<&str> = s.trim().lines().collect();
    while lines.last().is_some_and(|l| l.trim().is_empty() || header_line().is_match(l)) {
        lines.pop();
    }
    lines.join("\n").trim().to_string()
}

/// How a stage's prompt reaches the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum PromptFormat {
    /// Chat when the model has a chat template, else plain (resolved when a run starts; a run
    /// recorded as `auto` was started before formats existed and runs plain).
    #[default]
    Auto,
    /// The paper's text prompts, continued by the model.
    Plain,
    /// Each prompt as one user message in the model's chat template, the assistant's turn opened
    /// (and, for task lists, begun with the next task's header so the list goes on).
    Chat,
}

impl PromptFormat {
    /// `auto` resolved for a model with (or without) a chat template; plain and chat stay.
    pub fn resolve(self, chat_template: bool) -> PromptFormat {
        match self {
            PromptFormat::Auto if chat_template => PromptFormat::Chat,
            PromptFormat::Auto => PromptFormat::Plain,
            f => f,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            PromptFormat::Auto => "auto",
            PromptFormat::Plain => "plain",
            PromptFormat::Chat => "chat",
        }
    }
}

/// The user's message of an instruction and its input in the chat format: the instruction, then
/// the input after a blank line.
pub fn chat_user(instruction: &str, input: &str) -> String {
    if input.trim().is_empty() {
        instruction.trim().to_string()
    } else {
        format!("{}\n\n{}", instruction.trim(), input.trim())
    }
}

/// The Alpaca prompt of an instruction and its input (the template with or without input): the
/// training template, and the evaluation's k-shot prompts.
pub fn alpaca(instruction: &str, input: &str) -> String {
    if input.trim().is_empty() {
        render("alpaca_no_input", bundled("alpaca_no_input"), &[("instruction", instruction.trim())])
    } else {
        render("alpaca", bundled("alpaca"), &[("instruction", instruction.trim()), ("input", input.trim())])
    }
    .expect("the bundled Alpaca templates use only these variables")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_fills_and_names_unknown_variables() {
        assert_eq!(render("t", "a {{x}} b {{ y }}", &[("x", "1"), ("y", "2")]).unwrap(), "a 1 b 2");
        let e = render("t", "line\n{{nope}}", &[("x", "1")]).unwrap_err();
        assert_eq!(e.to_string(), "template t, line 2: unknown variable {{nope}}; this template can use x");
        assert!(render("t", "{{x", &[("x", "1")]).unwrap_err().message.contains("never closed"));
    }

    #[test]
    fn bundled_templates_render_with_their_variables() {
        let seed = Seed {
            id: "a".into(),
            task: "qa".into(),
            tags: vec![],
            instruction: "Name the enzyme.".into(),
            input: "".into(),
            output: "x".into(),
        };
        let (prompt, primer) =
            instruction_prompt(bundled("instruction_generation"), "biomedical", "", &[&seed], 20).unwrap();
        assert!(prompt.contains("Write 20 new tasks") && prompt.ends_with("Task 2\nInstruction:"));
        assert!(prompt.contains("Task 1\nInstruction: Name the enzyme.\nInput: <noinput>\n"));
        assert_eq!(primer, "Task 2\nInstruction:");
        let vars = [("domain", "d"), ("document", "doc"), ("instruction", "i"), ("input", "in")];
        assert!(render("response_generation", bundled("response_generation"), &vars).is_ok());
        assert!(render("alpaca", bundled("alpaca"), &vars[2..]).unwrap().ends_with("### Response:\n"));
        assert!(render("alpaca_no_input", bundled("alpaca_no_input"), &vars[2..3]).is_ok());
    }

    #[test]
    fn parses_the_layouts_models_write() {
        let text =
            "Task 4\nInstruction: Classify the headline's sentiment.\nInput: Shares slump after profit warning.\n\n\
                    Task 5\r\nInstruction: Summarise the passage\r\nin two sentences.\r\nInput: <noinput>\r\n\
                    6. Instruction: Extract the KPIs.\n6. Input: Churn fell to 2.1%.\n6. Output: Churn: 2.1%\n\
                    Task 7\nInstruction: A task without input\n\
                    Task 8\nInstruction: \nInput: something\n\
                    Task 9\nInstruction: Cut off by the tok";
        let (tasks, failures) = parse_tasks(text, true);
        assert_eq!(
            tasks,
            vec![
                Task {
                    instruction: "Classify the headline's sentiment.".into(),
                    input: "Shares slump after profit warning.".into()
                },
                Task { instruction: "Summarise the passage\nin two sentences.".into(), input: String::new() },
                Task { instruction: "Extract the KPIs.".into(), input: "Churn fell to 2.1%.".into() },
            ]
        );
        assert_eq!(failures, vec![Unparsed::NoInput, Unparsed::EmptyInstruction, Unparsed::Truncated]);
        // Not truncated: the last item counts.
        let (tasks, _) =
            parse_tasks("Task 4\nInstruction: Explain deuce.\nInput: In tennis, forty-all is deuce.", false);
        assert_eq!(tasks.len(), 1);
        // Small models write the markers in the plural (seen from SmolLM2-135M): a task each, not
        // one task swallowing the next.
        let (tasks, failures) = parse_tasks(
            "Task 4\nInstruction: Use the feedback.\nInput: Too slow.\n\nTask 5\nInstructions: Reply to the user.\nInputs: Thanks!",
            false,
        );
        assert_eq!(failures, vec![]);
        assert_eq!(tasks[0].input, "Too slow.");
        assert_eq!(tasks[1], Task { instruction: "Reply to the user.".into(), input: "Thanks!".into() });
    }

    /// A list ends once two finished items in a row are unusable (no input, or a repeat of an
    /// earlier instruction); one bad item, or two with a good one between, let it go on; the
    /// item still being written never counts.
    #[test]
    fn a_list_is_given_up_after_two_unusable_items_in_a_row() {
        let good = " Name the gene.\nInput: BRCA1 mutations raise the risk of breast cancer.\n\nTask 5\n";
        let second =
            "Instruction: Classify the study design.\nInput: Patients were randomised to two arms.\n\nTask 6\n";
        let no_input = "Instruction: Summarise the findings of the trial in one line.\n\nTask 7\n";
        let repeat = "Instruction: Classify the study's design.\nInput: A cohort of nurses was followed.\n\nTask 8\n";
        let open = "Instruction: Extract the drug names.\nInput:";
        assert!(!list_gone_bad(&format!("{good}{second}{open}")));
        assert!(!list_gone_bad(&format!("{good}{no_input}{open}")));
        assert!(list_gone_bad(&format!("{good}{second}{no_input}{repeat}{open}")));
        assert!(!list_gone_bad(&format!("{good}{no_input}{second}{repeat}{open}")));
        // The second bad item is not finished until the next one begins.
        assert!(!list_gone_bad(&format!("{good}{second}{no_input}Instruction: Classify the study's design.\n")));
        // The first item has no marker of its own: the primer wrote it.
        assert!(list_gone_bad(
            " Name the gene.\n\nTask 5\nInstruction: Name the gene.\nInput: x\n\nTask 6\nInstruction:"
        ));
    }
}

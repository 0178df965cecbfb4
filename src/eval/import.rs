//! `selfspec eval import`: benchmarks as users download them — Hugging Face datasets files
//! (parquet, JSON, JSON lines) or a release's own JSON or TSV — turned into an evaluation
//! dataset (`NAME.jsonl`, and `NAME.train.jsonl` for the demonstrations) by a field map: where
//! the records are, which of them to keep, the instruction (fixed text or a field), the input
//! (a template over fields), the answer (a field, several references when it is a list) and a
//! label mapping. Ready maps for the paper's benchmarks are built in ([`PRESETS`]).
//!
//! Every record is read on its own (parquet row by row, JSON lines line by line); a malformed
//! record is an error naming the file and its line or row and what the map expected.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Deserialize;
use serde_json::Value;

/// A field map, as a preset or a `--map` YAML file gives it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mapping {
    /// What the preset is (printed by `--list`).
    #[serde(default)]
    pub about: String,
    /// The dataset's task: qa, ner, re, sa, cls, sum, gen or other.
    pub task: String,
    /// Where the records are in a JSON document: a dotted path to a list (`questions`), or
    /// `values` for an object whose values are the records (keyed by id). None: the document is
    /// a list of records (or one record per line, or per parquet row).
    #[serde(default)]
    pub records: Option<String>,
    /// Column names of a TSV file without a header line (none: its first line names them).
    #[serde(default)]
    pub columns: Vec<String>,
    /// Keep only the records whose field has one of these values (text): `{type: [factoid]}`.
    #[serde(default, rename = "where")]
    pub keep: BTreeMap<String, Vec<String>>,
    /// The instruction: fixed text…
    #[serde(default)]
    pub instruction: Option<String>,
    /// …or a template over the record's fields (`{question}`).
    #[serde(default)]
    pub instruction_template: Option<String>,
    /// The input: a template over the record's fields, `{path}` for a field (dotted for nested
    /// ones; a list's items joined by a space, or `{path|SEP}` joined by SEP); empty for none.
    #[serde(default)]
    pub input: String,
    /// The answer's field (dotted path). A list gives several references, any one of which is
    /// right (nested lists are flattened), unless `join` is set.
    pub output: String,
    /// Join a list answer into one reference with this separator (a list of entities, say).
    #[serde(default)]
    pub join: Option<String>,
    /// Answers as the dataset writes them → the label text a model should answer (class ids,
    /// tags); an answer missing from a non-empty map is an error.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// A numeric answer → a label by thresholds: the first bin whose `below` exceeds the value
    /// (the last bin, without `below`, takes the rest).
    #[serde(default)]
    pub bins: Vec<Bin>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bin {
    #[serde(default)]
    pub below: Option<f64>,
    pub label: String,
}

/// One evaluation line.
#[derive(Debug, Clone, PartialEq)]
pub struct Line {
    pub instruction: String,
    pub input: String,
    pub references: Vec<String>,
}

/// The built-in maps: (name, YAML).
pub const PRESETS: [(&str, &str); 12] = [
    ("pubmedqa", include_str!("../../assets/benchmarks/pubmedqa.yaml")),
    ("pubmedqa-hf", include_str!("../../assets/benchmarks/pubmedqa-hf.yaml")),
    ("bioasq", include_str!("../../assets/benchmarks/bioasq.yaml")),
    ("chemprot", include_str!("../../assets/benchmarks/chemprot.yaml")),
    ("ddi", include_str!("../../assets/benchmarks/ddi.yaml")),
    ("hoc", include_str!("../../assets/benchmarks/hoc.yaml")),
    ("fiqa-sa", include_str!("../../assets/benchmarks/fiqa-sa.yaml")),
    ("financial-phrasebank", include_str!("../../assets/benchmarks/financial-phrasebank.yaml")),
    ("headline", include_str!("../../assets/benchmarks/headline.yaml")),
    ("convfinqa", include_str!("../../assets/benchmarks/convfinqa.yaml")),
    ("convfinqa-flare", include_str!("../../assets/benchmarks/convfinqa-flare.yaml")),
    ("finner", include_str!("../../assets/benchmarks/finner.yaml")),
];

const TASKS: [&str; 8] = ["qa", "ner", "re", "sa", "cls", "sum", "gen", "other"];

impl Mapping {
    /// A built-in map by name.
    pub fn preset(name: &str) -> anyhow::Result<Mapping> {
        let (_, text) = PRESETS.iter().find(|(n, _)| *n == name).with_context(|| {
            format!(
                "no preset {name:?}; the presets are {} (or give your own with --map FILE.yaml)",
                PRESETS.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
            )
        })?;
        Self::parse(text, &format!("preset {name}"))
    }

    /// A map from a YAML file.
    pub fn load(path: &Path) -> anyhow::Result<Mapping> {
        let text = crate::lines::read_text(path)?;
        Self::parse(&text, &path.display().to_string())
    }

    fn parse(text: &str, origin: &str) -> anyhow::Result<Mapping> {
        let m: Mapping =
            crate::yaml::from_str(text).map_err(|e| anyhow::anyhow!("{origin}:{}: {}", e.pos, e.message))?;
        m.check().map_err(|e| anyhow::anyhow!("{origin}: {e}"))?;
        Ok(m)
    }

    fn check(&self) -> anyhow::Result<()> {
        anyhow::ensure!(TASKS.contains(&self.task.as_str()), "task {:?}: use one of {}", self.task, TASKS.join(", "));
        anyhow::ensure!(
            self.instruction.is_some() != self.instruction_template.is_some(),
            "give either instruction (fixed text) or instruction_template (from fields), not both or neither"
        );
        anyhow::ensure!(!self.output.trim().is_empty(), "output names no field");
        anyhow::ensure!(self.labels.is_empty() || self.bins.is_empty(), "give labels or bins, not both");
        for (i, b) in self.bins.iter().enumerate() {
            let last = i + 1 == self.bins.len();
            anyhow::ensure!(b.below.is_some() != last, "bins: every bin but the last has `below`, the last has none");
            if let Some(t) = b.below {
                anyhow::ensure!(t.is_finite(), "bins[{i}].below: {t} is not a finite number");
                let before = self.bins[..i].iter().filter_map(|b| b.below).next_back();
                anyhow::ensure!(
                    before.is_none_or(|p| p < t),
                    "bins[{i}].below: {t} is not above the bin before it ({}); list the bins in increasing order",
                    before.unwrap_or(f64::NAN)
                );
            }
        }
        Ok(())
    }

    /// The evaluation line of one record; `at` names it in errors.
    pub fn line(&self, record: &Value, at: &str) -> anyhow::Result<Option<Line>> {
        for (field, values) in &self.keep {
            let v = lookup(record, field).with_context(|| missing(record, field, at))?;
            if !values.contains(&text(&v, " ")) {
                return Ok(None);
            }
        }
        let instruction = match (&self.instruction, &self.instruction_template) {
            (Some(t), _) => t.clone(),
            (None, Some(t)) => fill(t, record, at)?,
            (None, None) => unreachable!("checked: one of the two"),
        };
        let input = fill(&self.input, record, at)?;
        let answer = lookup(record, &self.output).with_context(|| missing(record, &self.output, at))?;
        // Each answer value mapped to its label (by the labels or the bins), then joined into
        // one reference or kept as several.
        let values: Vec<Value> = match &answer {
            Value::Array(_) => flatten(&answer),
            v => vec![v.clone()],
        };
        let mut labelled = Vec::new();
        for v in &values {
            let t = text(v, " ");
            let label = if !self.bins.is_empty() {
                let x = match v {
                    Value::Number(n) => n.as_f64(),
                    Value::String(s) => s.trim().parse::<f64>().ok(),
                    _ => None,
                }
                .with_context(|| format!("{at}: {} is {v}; the map's bins need a number", self.output))?;
                let bin =
                    self.bins.iter().find(|b| b.below.is_none_or(|t| x < t)).expect("the last bin takes the rest");
                bin.label.clone()
            } else if !self.labels.is_empty() {
                self.labels.get(&t).cloned().with_context(|| {
                    format!(
                        "{at}: {} is {t:?}, which the map's labels do not name ({}); add it to labels",
                        self.output,
                        self.labels.keys().cloned().collect::<Vec<_>>().join(", ")
                    )
                })?
            } else {
                t
            };
            labelled.push(label);
        }
        let mut references = match &self.join {
            Some(sep) => vec![labelled.iter().filter(|l| !l.is_empty()).cloned().collect::<Vec<_>>().join(sep)],
            None => labelled,
        };
        let mut seen = std::collections::HashSet::new();
        references.retain(|r| seen.insert(r.clone()));
        references.retain(|r| !r.trim().is_empty());
        anyhow::ensure!(!references.is_empty(), "{at}: {} is empty; every record needs an answer", self.output);
        anyhow::ensure!(!instruction.trim().is_empty(), "{at}: the instruction is empty");
        Ok(Some(Line { instruction, input, references }))
    }
}

fn missing(record: &Value, field: &str, at: &str) -> String {
    let have = match record {
        Value::Object(m) => m.keys().cloned().collect::<Vec<_>>().join(", "),
        other => format!("a {} (not an object)", kind(other)),
    };
    format!("{at}: no field {field:?}; the record has {have}")
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "list",
        Value::Object(_) => "object",
    }
}

/// The value at a dotted path; a number picks a list's item (negative from the end: `-1` is
/// the last); a name through a list gives each item's (a list of them).
fn lookup(v: &Value, path: &str) -> Option<Value> {
    let mut cur = v.clone();
    for part in path.split('.') {
        cur = match cur {
            Value::Object(mut m) => m.remove(part)?,
            Value::Array(mut items) => match part.parse::<i64>() {
                Ok(i) => {
                    let n = items.len() as i64;
                    let at = if i < 0 { n + i } else { i };
                    if !(0..n).contains(&at) {
                        return None;
                    }
                    items.swap_remove(at as usize)
                }
                Err(_) => {
                    let got: Vec<Value> = items.iter().filter_map(|i| lookup(i, part)).collect();
                    if got.is_empty() {
                        return None;
                    }
                    Value::Array(got)
                }
            },
            _ => return None,
        };
    }
    Some(cur)
}

fn flatten(v: &Value) -> Vec<Value> {
    match v {
        Value::Array(items) => items.iter().flat_map(flatten).collect(),
        other => vec![other.clone()],
    }
}

/// A value as text: strings as they are, numbers and booleans as JSON writes them, lists
/// joined by `sep`; a list of lists is a table, a row a line with its cells joined by " | ".
fn text(v: &Value, sep: &str) -> String {
    match v {
        Value::String(s) => s.trim().to_string(),
        Value::Null => String::new(),
        Value::Array(rows) if !rows.is_empty() && rows.iter().all(Value::is_array) => {
            rows.iter().map(|r| text(r, " | ")).collect::<Vec<_>>().join("\n")
        }
        Value::Array(_) => {
            flatten(v).iter().map(|x| text(x, sep)).filter(|s| !s.is_empty()).collect::<Vec<_>>().join(sep)
        }
        other => other.to_string(),
    }
}

/// A template with `{path}` or `{path|SEP}` filled from the record; `{{` and `}}` are braces.
fn fill(template: &str, record: &Value, at: &str) -> anyhow::Result<String> {
    let mut out = String::new();
    let mut rest = template;
    while let Some(i) = rest.find(['{', '}']) {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if tail.starts_with("{{") || tail.starts_with("}}") {
            out.push_str(&tail[..1]);
            rest = &tail[2..];
            continue;
        }
        anyhow::ensure!(tail.starts_with('{'), "{at}: a lone }} in the template {template:?}; write }}}} for a brace");
        let end = tail.find('}').with_context(|| format!("{at}: an unclosed {{ in the template {template:?}"))?;
        let spec = &tail[1..end];
        let (path, sep) = spec.split_once('|').unwrap_or((spec, " "));
        let v = lookup(record, path.trim()).with_context(|| missing(record, path.trim(), at))?;
        out.push_str(&text(&v, sep));
        rest = &tail[end + 1..];
    }
    out.push_str(rest);
    Ok(out.trim().to_string())
}

/// The largest JSON document read whole (JSON lines, parquet and TSV are read record by record).
pub const MAX_JSON_BYTES: u64 = 1 << 30;

/// The lines of `path` (without their line ends, the first without a byte-order mark) as text,
/// each at most [`crate::lines::MAX_LINE_BYTES`]: a longer one is an error naming it, read no
/// further. Blank lines are skipped; the numbers are the file's.
fn text_lines(path: &Path) -> anyhow::Result<impl Iterator<Item = anyhow::Result<(usize, String)>>> {
    let lines = crate::lines::Lines::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let path = path.to_path_buf();
    Ok(lines.all().map(move |item| {
        let (n, bytes) = item.map_err(|e| anyhow::anyhow!(e.at(&path)))?;
        let text = String::from_utf8(bytes).map_err(|_| anyhow::anyhow!("{}:{n}: not UTF-8 text", path.display()))?;
        Ok((n, text))
    }))
}

/// What [`records`] calls with each record and where it is; false stops the reading.
type OnRecord<'a> = &'a mut dyn FnMut(Value, String) -> anyhow::Result<bool>;

/// Calls `f` with each record of `path` and where it is (`file:line` or `file:row`), by the
/// file's kind: `.parquet`, `.jsonl`/`.ndjson`, `.json`, `.tsv`.
pub fn records(path: &Path, map: &Mapping, f: OnRecord) -> anyhow::Result<()> {
    let name = path.file_name().map(|n| n.to_string_lossy().to_lowercase()).unwrap_or_default();
    let shown = path.display().to_string();
    if name.ends_with(".parquet") {
        return parquet_records(path, f);
    }
    if name.ends_with(".jsonl") || name.ends_with(".ndjson") {
        for line in text_lines(path)? {
            let (n, line) = line?;
            let at = format!("{shown}:{n}");
            let v: Value = serde_json::from_str(&line).with_context(|| format!("{at}: not a JSON object"))?;
            if !f(v, at)? {
                break;
            }
        }
        return Ok(());
    }
    if name.ends_with(".tsv") {
        return tsv_records(path, map, f);
    }
    anyhow::ensure!(
        name.ends_with(".json"),
        "{shown}: a file ending in .parquet, .jsonl, .ndjson, .json or .tsv is expected"
    );
    for (at, v) in json_records(path, map)? {
        if !f(v, at)? {
            break;
        }
    }
    Ok(())
}

/// The rows of a parquet file.
fn parquet_records(path: &Path, f: OnRecord) -> anyhow::Result<()> {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    let shown = path.display().to_string();
    let file = std::fs::File::open(path).with_context(|| format!("cannot read {shown}"))?;
    let reader = SerializedFileReader::new(file)
        .with_context(|| format!("{shown} is not a parquet file (or its compression is not supported)"))?;
    let rows = reader.get_row_iter(None).with_context(|| format!("{shown}: cannot read its rows"))?;
    for (i, row) in rows.enumerate() {
        let row = row.with_context(|| format!("{shown}: row {}: cannot be read", i + 1))?;
        if !f(row.to_json_value(), format!("{shown}: row {}", i + 1))? {
            break;
        }
    }
    Ok(())
}

/// The lines of a tab-separated file as objects keyed by the map's columns, else by the
/// file's header line.
fn tsv_records(path: &Path, map: &Mapping, f: OnRecord) -> anyhow::Result<()> {
    let shown = path.display().to_string();
    let mut lines = text_lines(path)?.enumerate();
    let mut columns = map.columns.clone();
    if columns.is_empty() {
        let (_, head) = lines.next().with_context(|| format!("{shown} is empty"))?;
        let (_, head) = head?;
        columns = head.split('\t').map(|c| c.trim().to_string()).collect();
    }
    for (i, line) in lines {
        let (n, line) = line?;
        let at = format!("{shown}:{n}");
        // A header line naming the map's columns is not a record.
        if i == 0 && line.split('\t').map(str::trim).eq(columns.iter().map(String::as_str)) {
            continue;
        }
        let cells: Vec<&str> = line.split('\t').collect();
        anyhow::ensure!(
            cells.len() == columns.len(),
            "{at}: {} tab-separated fields where the columns are {} ({})",
            cells.len(),
            columns.len(),
            columns.join(", ")
        );
        let v =
            Value::Object(columns.iter().cloned().zip(cells.iter().map(|c| Value::String(c.to_string()))).collect());
        if !f(v, at)? {
            break;
        }
    }
    Ok(())
}

/// The records of a JSON document (read whole, so its size is bounded) with their places: the
/// key of an object's value, or its position in a list.
fn json_records(path: &Path, map: &Mapping) -> anyhow::Result<Vec<(String, Value)>> {
    let shown = path.display().to_string();
    let size = std::fs::metadata(path).with_context(|| format!("cannot read {shown}"))?.len();
    anyhow::ensure!(
        size <= MAX_JSON_BYTES,
        "{shown} is {size} bytes, more than a JSON document read whole may hold ({MAX_JSON_BYTES}); convert it to JSON lines"
    );
    let text = crate::lines::read_text(path)?;
    let doc: Value = serde_json::from_str(crate::fsutil::strip_bom(&text))
        .map_err(|e| anyhow::anyhow!("{shown}:{}:{}: not JSON: {e}", e.line(), e.column()))?;
    Ok(match map.records.as_deref() {
        Some("values") => match doc {
            Value::Object(m) => m
                .into_iter()
                .map(|(k, mut v)| {
                    if let Value::Object(o) = &mut v {
                        o.entry("id").or_insert(Value::String(k.clone()));
                    }
                    (format!("{shown}: record {k:?}"), v)
                })
                .collect(),
            other => anyhow::bail!("{shown}: the map reads the values of an object, but the document is a {}", kind(&other)),
        },
        Some(path_) => match lookup(&doc, path_) {
            Some(Value::Array(items)) => numbered(&shown, items),
            Some(other) => anyhow::bail!("{shown}: {path_} is a {}, not a list of records", kind(&other)),
            None => anyhow::bail!("{shown}: no {path_:?} holding the records"),
        },
        None => match doc {
            Value::Array(items) => numbered(&shown, items),
            other => anyhow::bail!(
                "{shown}: the document is a {}, not a list of records; set `records:` in the map (a dotted path, or values)",
                kind(&other)
            ),
        },
    })
}

fn numbered(shown: &str, items: Vec<Value>) -> Vec<(String, Value)> {
    items.into_iter().enumerate().map(|(i, v)| (format!("{shown}: record {}", i + 1), v)).collect()
}

/// What `eval import` was asked.
pub struct Options {
    pub files: Vec<PathBuf>,
    pub map: Mapping,
    pub name: String,
    pub out: PathBuf,
    /// Files of the split the demonstrations come from.
    pub train: Vec<PathBuf>,
    pub demos: usize,
    pub limit: Option<usize>,
    pub force: bool,
}

/// The lines of `files` under `map`, at most `limit`; how many records `where` left out.
pub fn read_lines(files: &[PathBuf], map: &Mapping, limit: Option<usize>) -> anyhow::Result<(Vec<Line>, usize)> {
    let mut out = Vec::new();
    let mut skipped = 0;
    let full = |out: &Vec<Line>| limit.is_some_and(|n| out.len() >= n);
    for file in files {
        if full(&out) {
            break;
        }
        records(file, map, &mut |record, at| {
            match map.line(&record, &at)? {
                Some(l) => out.push(l),
                None => skipped += 1,
            }
            Ok(!full(&out))
        })?;
    }
    Ok((out, skipped))
}

fn to_jsonl(lines: &[Line], name: &str, task: &str) -> String {
    let mut text = String::new();
    for l in lines {
        let mut o = serde_json::Map::new();
        o.insert("dataset".into(), name.into());
        o.insert("task".into(), task.into());
        o.insert("instruction".into(), l.instruction.clone().into());
        o.insert("input".into(), l.input.clone().into());
        match l.references.as_slice() {
            [one] => o.insert("output".into(), one.clone().into()),
            many => o.insert("outputs".into(), many.to_vec().into()),
        };
        text.push_str(&Value::Object(o).to_string());
        text.push('\n');
    }
    text
}

/// `selfspec eval import --list`: each preset and what it reads.
pub fn list() -> anyhow::Result<()> {
    for (name, _) in PRESETS {
        let m = Mapping::preset(name)?;
        println!("{name:<22} {}", m.about.trim());
    }
    Ok(())
}

/// Runs `selfspec eval import`; prints what it wrote.
pub fn run(opts: &Options) -> anyhow::Result<()> {
    anyhow::ensure!(
        !opts.name.is_empty()
            && opts.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            && !opts.name.ends_with(".train"),
        "--name {:?}: use letters, digits, '-' and '_' (it names NAME.jsonl)",
        opts.name
    );
    let test = opts.out.join(format!("{}.jsonl", opts.name));
    let train = opts.out.join(format!("{}.train.jsonl", opts.name));
    for p in [&test, &train] {
        anyhow::ensure!(opts.force || !p.exists(), "{} exists; --force replaces it", p.display());
    }
    let (lines, skipped) = read_lines(&opts.files, &opts.map, opts.limit)?;
    anyhow::ensure!(
        !lines.is_empty(),
        "no records kept from {} (the map's `where` left out {skipped})",
        opts.files.len()
    );
    let demos = if opts.train.is_empty() {
        Vec::new()
    } else {
        let (d, _) = read_lines(&opts.train, &opts.map, Some(opts.demos))?;
        anyhow::ensure!(d.len() >= opts.demos, "the demonstration files gave {} of the {} asked", d.len(), opts.demos);
        d
    };
    std::fs::create_dir_all(&opts.out).with_context(|| format!("cannot create {}", opts.out.display()))?;
    crate::fsutil::atomic_write(&test, to_jsonl(&lines, &opts.name, &opts.map.task).as_bytes())
        .with_context(|| format!("cannot write {}", test.display()))?;
    println!(
        "{}: {} examples{}",
        test.display(),
        lines.len(),
        if skipped > 0 { format!(" ({skipped} records left out by where:)") } else { String::new() }
    );
    if !demos.is_empty() {
        crate::fsutil::atomic_write(&train, to_jsonl(&demos, &opts.name, &opts.map.task).as_bytes())
            .with_context(|| format!("cannot write {}", train.display()))?;
        println!("{}: {} demonstrations", train.display(), demos.len());
    }
    // What was written must load as an evaluation set.
    super::data::load_dir(&opts.out, std::slice::from_ref(&opts.name))?;
    Ok(())
}

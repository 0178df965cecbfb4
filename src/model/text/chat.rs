//! Chat templates rendered as transformers' `apply_chat_template` renders them: Jinja with
//! `trim_blocks` and `lstrip_blocks`, Python's string methods (minijinja-contrib's pycompat),
//! `tojson` as `json.dumps(x, ensure_ascii=False)`, `raise_exception(msg)` and
//! `strftime_now(fmt)`, and the variables `messages`, `add_generation_prompt`, `tools`,
//! `documents` and the special tokens (`bos_token`, `eos_token`, `unk_token`, `pad_token`).
//!
//! Templates come from the model: `tokenizer.chat_template` in a GGUF file, or
//! `chat_template.jinja` / `tokenizer_config.json`'s `chat_template` in a folder. A template is
//! untrusted text: rendering runs in minijinja's sandbox with a fuel limit, so a template that
//! loops forever fails with an error instead.

use std::path::Path;

use minijinja::{Environment, Error, ErrorKind, Value};
use serde::Serialize;

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn new(role: &str, content: &str) -> Message {
        Message { role: role.into(), content: content.into() }
    }
}

/// A model's chat template and the special tokens it may use.
#[derive(Debug, Clone)]
pub struct ChatTemplate {
    pub source: String,
    pub special: Vec<(&'static str, String)>,
    /// Where it came from, for error messages.
    pub origin: String,
}

/// Instructions a template may run before rendering is stopped (minijinja's fuel).
const FUEL: u64 = 5_000_000;

impl ChatTemplate {
    /// The text of `messages` as the template lays them out.
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> anyhow::Result<String> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_fuel(Some(FUEL));
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_filter("tojson", tojson);
        env.add_function("raise_exception", |message: String| -> Result<Value, Error> {
            Err(Error::new(ErrorKind::InvalidOperation, message))
        });
        env.add_function("strftime_now", |format: String| strftime_now(&format));
        env.add_template("chat", &self.source)
            .map_err(|e| anyhow::anyhow!("{}: the chat template does not parse: {e}", self.origin))?;
        let template = env.get_template("chat").map_err(|e| anyhow::anyhow!("{}: {e}", self.origin))?;
        let mut ctx: std::collections::BTreeMap<&str, Value> = std::collections::BTreeMap::new();
        ctx.insert("messages", Value::from_serialize(messages));
        ctx.insert("add_generation_prompt", Value::from(add_generation_prompt));
        ctx.insert("tools", Value::from(()));
        ctx.insert("documents", Value::from(()));
        for (name, token) in &self.special {
            ctx.insert(name, Value::from(token.as_str()));
        }
        template.render(ctx).map_err(|e| {
            let mut message = format!("{}: the chat template failed: {e}", self.origin);
            if e.kind() == ErrorKind::OutOfFuel {
                message.push_str(" (it ran too long; a template that loops forever?)");
            }
            anyhow::anyhow!(message)
        })
    }
}

/// transformers' `tojson`: `json.dumps(x, ensure_ascii=False, indent=indent)` — no HTML
/// escaping, Python's separators, keys in their order.
fn tojson(value: Value, indent: Option<usize>, kwargs: minijinja::value::Kwargs) -> Result<String, Error> {
    let indent = match kwargs.get::<Option<usize>>("indent")? {
        Some(n) => Some(n),
        None => indent,
    };
    let mut out = String::new();
    write_python_json(&value, indent, 0, &mut out)?;
    Ok(out)
}

fn write_python_json(v: &Value, indent: Option<usize>, depth: usize, out: &mut String) -> Result<(), Error> {
    use minijinja::value::ValueKind;
    let newline = |out: &mut String, depth: usize| {
        if let Some(n) = indent {
            out.push('\n');
            out.push_str(&" ".repeat(n * depth));
        }
    };
    let sep = if indent.is_some() { "," } else { ", " };
    let quote = |s: &str| serde_json::to_string(s).unwrap_or_default();
    match v.kind() {
        ValueKind::Seq | ValueKind::Iterable | ValueKind::Map => {
            let map = v.kind() == ValueKind::Map;
            let items: Vec<Value> = v.try_iter()?.collect();
            out.push(if map { '{' } else { '[' });
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(sep);
                }
                newline(out, depth + 1);
                if map {
                    out.push_str(&quote(&item.to_string()));
                    out.push_str(": ");
                    write_python_json(&v.get_item(item)?, indent, depth + 1, out)?;
                } else {
                    write_python_json(item, indent, depth + 1, out)?;
                }
            }
            if !items.is_empty() {
                newline(out, depth);
            }
            out.push(if map { '}' } else { ']' });
        }
        ValueKind::String => out.push_str(&quote(v.as_str().unwrap_or_default())),
        ValueKind::None | ValueKind::Undefined => out.push_str("null"),
        ValueKind::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
        ValueKind::Number if v.is_integer() => out.push_str(&v.to_string()),
        ValueKind::Number => {
            // Python writes 1.0 where Rust writes 1.
            let f = f64::try_from(v.clone()).unwrap_or(0.0);
            if f.fract() == 0.0 && f.abs() < 1e16 {
                out.push_str(&format!("{f:.1}"));
            } else {
                out.push_str(&serde_json::to_string(&f).unwrap_or_default());
            }
        }
        _ => out.push_str(&quote(&v.to_string())),
    }
    Ok(())
}

/// The current UTC time formatted with the strftime codes templates use (%Y %y %m %d %e %B %b
/// %A %a %H %M %S %j %%).
fn strftime_now(format: &str) -> Result<String, Error> {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    Ok(strftime(format, secs as i64))
}

fn strftime(format: &str, secs: i64) -> String {
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    const DAYS: [&str; 7] = ["Thursday", "Friday", "Saturday", "Sunday", "Monday", "Tuesday", "Wednesday"];
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy_march = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy_march + 2) / 153;
    let day = doy_march - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    let before = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334][(month - 1) as usize];
    let yday = before + day + i64::from(leap && month > 2);
    let weekday = DAYS[days.rem_euclid(7) as usize];
    let month_name = MONTHS[(month - 1) as usize];
    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('Y') => out.push_str(&year.to_string()),
            Some('y') => out.push_str(&format!("{:02}", year % 100)),
            Some('m') => out.push_str(&format!("{month:02}")),
            Some('d') => out.push_str(&format!("{day:02}")),
            Some('e') => out.push_str(&format!("{day:2}")),
            Some('B') => out.push_str(month_name),
            Some('b') => out.push_str(&month_name[..3]),
            Some('A') => out.push_str(weekday),
            Some('a') => out.push_str(&weekday[..3]),
            Some('H') => out.push_str(&format!("{:02}", rem / 3600)),
            Some('M') => out.push_str(&format!("{:02}", rem / 60 % 60)),
            Some('S') => out.push_str(&format!("{:02}", rem % 60)),
            Some('j') => out.push_str(&format!("{yday:03}")),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

/// The chat template of a model folder: `chat_template.jinja`, else tokenizer_config.json's
/// `chat_template` (a string, or a list of named templates of which `default` is taken).
pub fn template_in_folder(dir: &Path) -> anyhow::Result<Option<(String, String)>> {
    let jinja = dir.join("chat_template.jinja");
    if jinja.is_file() {
        let text = std::fs::read_to_string(&jinja).map_err(|e| anyhow::anyhow!("{}: {e}", jinja.display()))?;
        return Ok(Some((text, jinja.display().to_string())));
    }
    let config = dir.join("tokenizer_config.json");
    if !config.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&config).map_err(|e| anyhow::anyhow!("{}: {e}", config.display()))?;
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("{}: not valid JSON: {e}", config.display()))?;
    let origin = format!("{}: chat_template", config.display());
    Ok(match value.get("chat_template") {
        Some(serde_json::Value::String(s)) => Some((s.clone(), origin)),
        Some(serde_json::Value::Array(list)) => list
            .iter()
            .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
            .and_then(|t| t.get("template")?.as_str())
            .map(|s| (s.to_string(), origin)),
        _ => None,
    })
}

/// The special token strings of a folder's tokenizer_config.json (`bos_token` etc., as strings
/// or `{content: …}` objects).
pub fn special_tokens_in_folder(dir: &Path) -> Vec<(&'static str, String)> {
    let Ok(text) = std::fs::read_to_string(dir.join("tokenizer_config.json")) else { return Vec::new() };
    let Ok(value) = serde_json::from_str::<serde_json::Value>(&text) else { return Vec::new() };
    ["bos_token", "eos_token", "unk_token", "pad_token"]
        .into_iter()
        .filter_map(|name| {
            let v = value.get(name)?;
            let s = v.as_str().or_else(|| v.get("content")?.as_str())?;
            Some((name, s.to_string()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_format_like_python() {
        // 2024-02-29 13:05:09 UTC, a Thursday.
        let t = 1_709_211_909;
        assert_eq!(strftime("%d %b %Y %H:%M:%S %A %j %%", t), "29 Feb 2024 13:05:09 Thursday 060 %");
        assert_eq!(strftime("%B %e, %y", 0), "January  1, 70");
    }

    #[test]
    fn tojson_is_pythons_dumps() {
        let t = ChatTemplate {
            source: r#"{{ {"b": [1, 2.0, "<é>"], "a": {}} | tojson }}|{{ messages[0] | tojson(indent=2) }}"#.into(),
            special: vec![],
            origin: "test".into(),
        };
        assert_eq!(
            t.render(&[Message::new("user", "hi")], false).unwrap(),
            "{\"b\": [1, 2.0, \"<é>\"], \"a\": {}}|{\n  \"role\": \"user\",\n  \"content\": \"hi\"\n}"
        );
    }

    #[test]
    fn a_template_that_never_ends_runs_out_of_fuel() {
        let t = ChatTemplate {
            source: "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}".into(),
            special: vec![],
            origin: "test".into(),
        };
        let err = t.render(&[Message::new("user", "hi")], true).unwrap_err().to_string();
        assert!(err.contains("ran too long"), "{err}");
    }
}

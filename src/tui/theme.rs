//! Themes: styles named by meaning (themes/*.yaml), so screens ask for `error` or `selection`,
//! never for a colour.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::Context;
use ratatui::style::{Color, Modifier, Style};
use serde::Deserialize;

use crate::yaml;

/// The themes shipped inside the binary.
pub const BUNDLED: [(&str, &str); 2] =
    [("dark", include_str!("../../themes/dark.yaml")), ("light", include_str!("../../themes/light.yaml"))];

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct StyleSpec {
    fg: Option<String>,
    bg: Option<String>,
    #[serde(default)]
    bold: bool,
    #[serde(default)]
    italic: bool,
    #[serde(default)]
    underlined: bool,
    #[serde(default)]
    dim: bool,
    #[serde(default)]
    reversed: bool,
}

macro_rules! theme_styles {
    ($($name:ident),* $(,)?) => {
        #[derive(Debug, Default, Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Specs { $( #[serde(default)] $name: Option<StyleSpec>, )* }

        /// Every style a screen can ask for.
        #[derive(Debug, Clone, PartialEq)]
        pub struct Theme {
            pub name: String,
            $( pub $name: Style, )*
        }

        impl Theme {
            fn from_specs(name: String, specs: Specs) -> Result<Theme, String> {
                let base = match &specs.base {
                    Some(s) => to_style(s).map_err(|e| format!("base: {e}"))?,
                    None => Style::default(),
                };
                Ok(Theme {
                    name,
                    $( $name: match &specs.$name {
                        Some(s) => base.patch(to_style(s).map_err(|e| format!("{}: {e}", stringify!($name)))?),
                        None => base,
                    }, )*
                })
            }
        }
    };
}

theme_styles!(
    base,
    muted,
    accent,
    title,
    border,
    border_focus,
    selection,
    selection_unfocused,
    field_label,
    field_label_focus,
    error,
    warning,
    ok,
    tab,
    tab_active,
    status,
    mode,
    key,
    search_match,
);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ThemeFile {
    name: String,
    #[serde(default)]
    styles: Specs,
}

fn color(s: &str) -> Result<Color, String> {
    // ratatui spells multi-word names with spaces or none; accept dashes and underscores too.
    let normalized = s.trim().replace(['-', '_'], " ");
    Color::from_str(&normalized)
        .map_err(|_| format!("\"{s}\" is not a colour; use a name (red, light-blue, dark-gray…), \"#rrggbb\" or 0-255"))
}

fn to_style(spec: &StyleSpec) -> Result<Style, String> {
    let mut style = Style::default();
    if let Some(fg) = &spec.fg {
        style = style.fg(color(fg)?);
    }
    if let Some(bg) = &spec.bg {
        style = style.bg(color(bg)?);
    }
    for (on, m) in [
        (spec.bold, Modifier::BOLD),
        (spec.italic, Modifier::ITALIC),
        (spec.underlined, Modifier::UNDERLINED),
        (spec.dim, Modifier::DIM),
        (spec.reversed, Modifier::REVERSED),
    ] {
        if on {
            style = style.add_modifier(m);
        }
    }
    Ok(style)
}

impl Theme {
    /// Parses a theme file's text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> anyhow::Result<Theme> {
        let file: ThemeFile = yaml::from_str(text).map_err(|e| anyhow::anyhow!("{origin}:{}: {}", e.pos, e.message))?;
        Theme::from_specs(file.name, file.styles).map_err(|e| anyhow::anyhow!("{origin}: styles.{e}"))
    }

    pub fn bundled(name: &str) -> Option<Theme> {
        let (_, text) = BUNDLED.iter().find(|(n, _)| *n == name)?;
        // The bundled themes are tested to parse.
        Theme::parse(text, name).ok()
    }

    /// Every theme available: the bundled ones, then `<config dir>/themes/*.yaml` (a theme that
    /// fails to parse is reported, not skipped silently).
    pub fn available(config_dir: &Path) -> (Vec<Theme>, Vec<String>) {
        let mut themes: Vec<Theme> = BUNDLED.iter().filter_map(|(n, _)| Theme::bundled(n)).collect();
        let mut errors = Vec::new();
        let mut files: Vec<PathBuf> = std::fs::read_dir(config_dir.join("themes"))
            .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        files.sort();
        for path in files.into_iter().filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml")) {
            match Theme::load(&path) {
                Ok(t) => {
                    themes.retain(|old| old.name != t.name);
                    themes.push(t)
                }
                Err(e) => errors.push(format!("{e:#}")),
            }
        }
        (themes, errors)
    }

    pub fn load(path: &Path) -> anyhow::Result<Theme> {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read theme {}", path.display()))?;
        Theme::parse(&text, &path.display().to_string())
    }

    /// The configured theme: a name among `available`, or a path to a theme file.
    pub fn resolve(setting: &str, available: &[Theme]) -> anyhow::Result<Theme> {
        if let Some(t) = available.iter().find(|t| t.name == setting) {
            return Ok(t.clone());
        }
        let path = Path::new(setting);
        if path.exists() {
            return Theme::load(path);
        }
        let names: Vec<&str> = available.iter().map(|t| t.name.as_str()).collect();
        anyhow::bail!("theme \"{setting}\" not found; use one of {} or a path to a theme file", names.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bundled_themes_parse() {
        for (name, text) in BUNDLED {
            let t = Theme::parse(text, name).unwrap();
            assert_eq!(t.name, name);
            assert_ne!(t.error, t.base);
        }
    }

    #[test]
    fn errors_name_the_style_and_line() {
        let err = Theme::parse("name: x\nstyles:\n  error: { fg: nope }\n", "x.yaml").unwrap_err().to_string();
        assert!(err.contains("x.yaml: styles.error: \"nope\" is not a colour"), "{err}");
        let err = Theme::parse("name: x\nstyles:\n  eror: { fg: red }\n", "x.yaml").unwrap_err().to_string();
        assert!(err.starts_with("x.yaml:3:3:"), "{err}");
    }
}

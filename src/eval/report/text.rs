//! An evaluation report as text: report.csv, report.md, and the number formats the sweeps'
//! reports share.

use super::build::{Report, Versus, BASE, MAX_PAIRED_ADAPTERS};
use crate::eval::stats::{Delta, Estimate};

/// A number as report.csv writes it (empty when absent).
pub fn csv_number(x: Option<f64>) -> String {
    x.map_or(String::new(), |x| format!("{x:.4}"))
}

/// A comparison's six CSV fields: delta, its interval's ends, p, Holm's p, the detectable Δ.
pub fn csv_delta(d: Option<&Delta>) -> String {
    [
        csv_number(d.map(|d| d.delta)),
        csv_number(d.map(|d| d.ci[0])),
        csv_number(d.map(|d| d.ci[1])),
        csv_number(d.map(|d| d.p)),
        csv_number(d.and_then(|d| d.holm_p)),
        csv_number(d.map(|d| d.detectable)),
    ]
    .join(",")
}

/// `22.2 [18.1, 26.0]`
pub fn with_interval(mean: f64, ci: Option<[f64; 2]>) -> String {
    match ci {
        Some([lo, hi]) => format!("{mean:.1} [{lo:.1}, {hi:.1}]"),
        None => format!("{mean:.1}"),
    }
}

/// `+2.1 [−1.4, +5.6]`, with `*` when it stays significant after Holm.
pub fn delta_text(d: &Delta) -> String {
    let sign = |x: f64| {
        let s = format!("{x:+.1}");
        // −0.0 reads as 0.0; a minus sign, not a hyphen.
        if s == "-0.0" || s == "+0.0" {
            "0.0".to_string()
        } else {
            s.replacen('-', "−", 1)
        }
    };
    let mark = if d.significant() { "*" } else { "" };
    format!("{} [{}, {}]{mark}", sign(d.delta), sign(d.ci[0]), sign(d.ci[1]))
}

/// A p-value as reports print it.
pub fn p_text(p: f64) -> String {
    if p < 0.001 {
        "<0.001".to_string()
    } else {
        format!("{p:.3}")
    }
}

impl Report {
    pub fn to_csv(&self) -> String {
        let mut out = String::from(
            "model,dataset,task,k,n,f1,f1_lo,f1_hi,rougeL,rougeL_lo,rougeL_hi,exact,\
             delta_f1,delta_f1_lo,delta_f1_hi,p_f1,holm_p_f1,detectable_f1,\
             delta_rougeL,delta_rougeL_lo,delta_rougeL_hi,p_rougeL,holm_p_rougeL,detectable_rougeL,mcnemar_p\n",
        );
        let (num, delta) = (csv_number, csv_delta);
        let mut row = |model: &str,
                       dataset: &str,
                       task: &str,
                       k: usize,
                       n: String,
                       f1: Estimate,
                       r: Estimate,
                       exact: Option<f64>,
                       v: Option<&Versus>| {
            out.push_str(&format!(
                "{model},{dataset},{task},{k},{n},{:.4},{},{},{:.4},{},{},{},{},{},{}\n",
                f1.mean,
                num(Some(f1.ci[0]).filter(|x| x.is_finite())),
                num(Some(f1.ci[1]).filter(|x| x.is_finite())),
                r.mean,
                num(Some(r.ci[0]).filter(|x| x.is_finite())),
                num(Some(r.ci[1]).filter(|x| x.is_finite())),
                num(exact),
                delta(v.map(|v| &v.f1)),
                delta(v.map(|v| &v.rouge_l)),
                num(v.and_then(|v| v.mcnemar_p)),
            ));
        };
        let est = |m: f64, ci: Option<[f64; 2]>| Estimate { mean: m, ci: ci.unwrap_or([f64::NAN; 2]) };
        for c in &self.cells {
            row(
                &c.model,
                &c.dataset,
                &c.task,
                c.k,
                c.n.to_string(),
                est(c.f1, c.f1_ci),
                est(c.rouge_l, c.rouge_l_ci),
                c.exact,
                c.vs_base.as_ref(),
            );
        }
        for a in &self.averages {
            row(&a.model, "average", "", a.k, String::new(), a.f1, a.rouge_l, None, a.vs_base.as_ref());
        }
        out
    }

    /// What a table's numbers are: with intervals, or means only (a report built without
    /// statistics, such as a sweep's evaluation before its last point).
    fn scale(&self) -> &'static str {
        if self.stats.is_some() {
            "0–100, 95 % bootstrap intervals"
        } else {
            "0–100, means only: no statistics in this report"
        }
    }

    pub fn to_markdown(&self) -> String {
        let mut out = String::new();
        let adapters: Vec<&String> = self.models.iter().filter(|m| *m != BASE).collect();
        for (metric, f1) in [("F1", true), ("ROUGE-L", false)] {
            for &k in &self.shots {
                if adapters.len() > 2 {
                    self.long_table(&mut out, metric, f1, k);
                } else {
                    self.wide_table(&mut out, metric, f1, k, adapters.len());
                }
            }
        }
        if self.stats.is_some() && !adapters.is_empty() {
            out.push_str(
                "Δ: the adapter's score minus the base's, averaged over the same examples; `*`: p < 0.05 after \
                 Holm's adjustment across the datasets (the average's p is not adjusted) and the interval clear of 0. detectable Δ: the \
                 smallest |Δ| these examples would show with 80 % power at 5 %; a Δ inside it is no evidence \
                 either way.\n\n",
            );
        }
        self.labels_markdown(&mut out, &adapters);
        self.pairs_markdown(&mut out);
        self.spread_table(&mut out);
        if let Some(s) = &self.stats {
            out.push_str(&format!(
                "\nIntervals: percentile bootstrap, {} resamples; p: paired approximate randomisation, {} trials; \
                 seed {}.\n",
                s.resamples, s.trials, s.seed
            ));
        }
        out
    }

    /// One metric at one k with the models side by side (each adapter with its test against the
    /// base), a row per dataset and the average.
    fn wide_table(&self, out: &mut String, metric: &str, f1: bool, k: usize, adapters: usize) {
        out.push_str(&format!("## {metric}, {k}-shot ({})\n\n| dataset | n |", self.scale()));
        for m in &self.models {
            out.push_str(&format!(" {m} |"));
            if *m != BASE {
                out.push_str(&format!(" Δ {m} | p | Holm p | detectable Δ |"));
            }
        }
        out.push_str("\n|---|---:|");
        out.push_str(&"---:|".repeat(self.models.len() + 4 * adapters));
        out.push('\n');
        for d in &self.datasets {
            self.wide_row(out, d, f1, k);
        }
        self.average_row(out, f1, k);
    }

    /// A dataset's row of [`Report::wide_table`].
    fn wide_row(&self, out: &mut String, d: &str, f1: bool, k: usize) {
        let pick = |v: &Versus| if f1 { v.f1 } else { v.rouge_l };
        let n = self.cell(BASE, d, k).or_else(|| self.models.iter().find_map(|m| self.cell(m, d, k)));
        out.push_str(&format!("| {d} | {} |", n.map_or("–".to_string(), |c| c.n.to_string())));
        for m in &self.models {
            let Some(c) = self.cell(m, d, k) else {
                out.push_str(" – |");
                if *m != BASE {
                    out.push_str(" – | – | – | – |");
                }
                continue;
            };
            let (v, ci) = if f1 { (c.f1, c.f1_ci) } else { (c.rouge_l, c.rouge_l_ci) };
            out.push_str(&format!(" {} |", with_interval(v, ci)));
            if *m == BASE {
                continue;
            }
            match c.vs_base.as_ref().map(pick) {
                Some(dl) => out.push_str(&format!(
                    " {} | {} | {} | {:.1} |",
                    delta_text(&dl),
                    p_text(dl.p),
                    dl.holm_p.map_or("–".to_string(), p_text),
                    dl.detectable
                )),
                None => {
                    let b = self.cell(BASE, d, k).map(|b| if f1 { b.f1 } else { b.rouge_l });
                    out.push_str(&format!(" {} | – | – | – |", b.map_or("–".to_string(), |b| format!("{:+.1}", v - b))))
                }
            }
        }
        out.push('\n');
    }

    /// The average row of [`Report::wide_table`].
    fn average_row(&self, out: &mut String, f1: bool, k: usize) {
        let pick = |v: &Versus| if f1 { v.f1 } else { v.rouge_l };
        out.push_str("| **average** | |");
        for m in &self.models {
            let Some(a) = self.average_of(m, k) else {
                out.push_str(&format!(" **{:.1}** |", self.average(m, k, f1)));
                if *m != BASE {
                    out.push_str(" – | – | | – |");
                }
                continue;
            };
            let e = if f1 { a.f1 } else { a.rouge_l };
            out.push_str(&format!(" **{}** |", with_interval(e.mean, Some(e.ci))));
            if *m != BASE {
                match a.vs_base.as_ref().map(pick) {
                    Some(dl) => {
                        out.push_str(&format!(" **{}** | {} | | {:.1} |", delta_text(&dl), p_text(dl.p), dl.detectable))
                    }
                    None => out.push_str(" – | – | | – |"),
                }
            }
        }
        out.push_str("\n\n");
    }

    /// Each model's F1 over the shots, worst / average / best, per dataset.
    fn spread_table(&self, out: &mut String) {
        out.push_str("## F1 across k: worst / average / best\n\n| dataset |");
        for m in &self.models {
            out.push_str(&format!(" {m} |"));
        }
        out.push_str("\n|---|");
        out.push_str(&"---:|".repeat(self.models.len()));
        out.push('\n');
        for d in &self.datasets {
            out.push_str(&format!("| {d} |"));
            for m in &self.models {
                let v: Vec<f64> = self.shots.iter().filter_map(|&k| self.cell(m, d, k).map(|c| c.f1)).collect();
                if v.is_empty() {
                    out.push_str(" – |");
                } else {
                    let (lo, hi) = v.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &x| (a.min(x), b.max(x)));
                    out.push_str(&format!(" {lo:.1} / {:.1} / {hi:.1} |", v.iter().sum::<f64>() / v.len() as f64));
                }
            }
            out.push('\n');
        }
    }

    /// One metric at one k as a long table (a row per dataset and model), for reports of more
    /// adapters than fit side by side.
    fn long_table(&self, out: &mut String, metric: &str, f1: bool, k: usize) {
        out.push_str(&format!(
            "## {metric}, {k}-shot ({})\n\n| dataset | model | n | score | Δ against the base | p | Holm p | detectable Δ |\n|---|---|---:|---:|---:|---:|---:|---:|\n",
            self.scale()
        ));
        let pick = |v: &Versus| if f1 { v.f1 } else { v.rouge_l };
        for d in &self.datasets {
            for m in &self.models {
                let Some(c) = self.cell(m, d, k) else { continue };
                let (v, ci) = if f1 { (c.f1, c.f1_ci) } else { (c.rouge_l, c.rouge_l_ci) };
                let tests = c.vs_base.as_ref().map(pick).map_or(" | | | |".to_string(), |dl| {
                    format!(
                        "{} | {} | {} | {:.1} |",
                        delta_text(&dl),
                        p_text(dl.p),
                        dl.holm_p.map_or("–".to_string(), p_text),
                        dl.detectable
                    )
                });
                out.push_str(&format!("| {d} | {m} | {} | {} | {tests}\n", c.n, with_interval(v, ci)));
            }
        }
        for m in &self.models {
            let Some(a) = self.average_of(m, k) else { continue };
            let e = if f1 { a.f1 } else { a.rouge_l };
            let tests = a.vs_base.as_ref().map(pick).map_or(" | | | |".to_string(), |dl| {
                format!("**{}** | {} | | {:.1} |", delta_text(&dl), p_text(dl.p), dl.detectable)
            });
            out.push_str(&format!("| **average** | {m} | | **{}** | {tests}\n", with_interval(e.mean, Some(e.ci))));
        }
        out.push('\n');
    }

    fn labels_markdown(&self, out: &mut String, adapters: &[&String]) {
        if self.labels.is_empty() || self.stats.is_none() {
            return;
        }
        if adapters.len() > 2 {
            out.push_str(
                "## Label sets: exact match (0–100) and McNemar's exact test against the base\n\n| dataset | k | model | exact match | McNemar p |\n|---|---:|---|---:|---:|\n",
            );
            for d in &self.labels {
                for &k in &self.shots {
                    for m in &self.models {
                        let Some(c) = self.cell(m, d, k) else { continue };
                        let p = c.vs_base.as_ref().and_then(|v| v.mcnemar_p).map_or(String::new(), p_text);
                        let e = c.exact.map_or("–".to_string(), |e| format!("{e:.1}"));
                        out.push_str(&format!("| {d} | {k} | {m} | {e} | {p} |\n"));
                    }
                }
            }
            out.push('\n');
            return;
        }
        out.push_str("## Label sets: exact match (0–100) and McNemar's exact test against the base\n\n| dataset | k |");
        for m in &self.models {
            out.push_str(&format!(" {m} |"));
            if *m != BASE {
                out.push_str(" McNemar p |");
            }
        }
        out.push_str("\n|---|---:|");
        out.push_str(&"---:|".repeat(self.models.len() + adapters.len()));
        out.push('\n');
        for d in &self.labels {
            for &k in &self.shots {
                out.push_str(&format!("| {d} | {k} |"));
                for m in &self.models {
                    let c = self.cell(m, d, k);
                    out.push_str(&format!(
                        " {} |",
                        c.and_then(|c| c.exact).map_or("–".to_string(), |e| format!("{e:.1}"))
                    ));
                    if *m != BASE {
                        let p = c.and_then(|c| c.vs_base.as_ref()).and_then(|v| v.mcnemar_p);
                        out.push_str(&format!(" {} |", p.map_or("–".to_string(), p_text)));
                    }
                }
                out.push('\n');
            }
        }
        out.push('\n');
    }

    fn pairs_markdown(&self, out: &mut String) {
        let adapters = self.models.iter().filter(|m| *m != BASE).count();
        if adapters > MAX_PAIRED_ADAPTERS {
            out.push_str(&format!(
                "{adapters} adapters: each is compared with the base; pairs of adapters are compared in reports of at most \
                 {MAX_PAIRED_ADAPTERS} (an evaluation of just those two, or `selfspec score --paired`).\n\n"
            ));
        }
        if self.pairs.is_empty() {
            return;
        }
        out.push_str(
            "## Adapters against each other (Δ = second − first, F1; p unadjusted)\n\n| first | second | dataset | k | Δ F1 | p | detectable Δ |\n|---|---|---|---:|---:|---:|---:|\n",
        );
        for p in &self.pairs {
            out.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} | {:.1} |\n",
                p.a,
                p.b,
                p.dataset.as_deref().unwrap_or("**average**"),
                p.k,
                delta_text(&Delta { holm_p: None, ..p.versus.f1 }),
                p_text(p.versus.f1.p),
                p.versus.f1.detectable
            ));
        }
        out.push('\n');
    }
}

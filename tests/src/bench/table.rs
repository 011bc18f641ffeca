//! The summary table of the `bench` driver: one row per figure, with its same-run baseline,
//! ratio, target and verdict, printed as text and written as JSON.

use serde_json::{json, Value};

/// How a figure compares with its target.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Verdict {
    Met,
    Missed,
    /// No target for this row (a figure reported for information).
    Info,
    /// The target does not apply at this scale or duration (why in the note).
    NotJudged,
    Failed,
    NotMeasured,
}

impl Verdict {
    /// The verdict as printed.
    pub fn text(self) -> &'static str {
        match self {
            Verdict::Met => "MET",
            Verdict::Missed => "MISSED",
            Verdict::Info => "-",
            Verdict::NotJudged => "not judged",
            Verdict::Failed => "FAILED",
            Verdict::NotMeasured => "NOT MEASURED",
        }
    }
}

/// One row of the summary: a figure, its same-run baseline, the ratio, the target, the verdict.
pub struct Row {
    pub section: String,
    pub name: String,
    pub figure: String,
    pub baseline: String,
    pub ratio: String,
    pub target: String,
    pub verdict: Verdict,
    pub note: String,
    pub values: Value,
}

/// The summary table of the `bench` driver.
#[derive(Default)]
pub struct Table {
    pub rows: Vec<Row>,
}

impl Table {
    #[allow(clippy::too_many_arguments)]
    /// Adds a row; the returned row takes a note.
    pub fn add(
        &mut self,
        section: &str,
        name: impl Into<String>,
        figure: impl Into<String>,
        baseline: impl Into<String>,
        ratio: impl Into<String>,
        target: impl Into<String>,
        verdict: Verdict,
        values: Value,
    ) -> &mut Row {
        self.rows.push(Row {
            section: section.to_owned(),
            name: name.into(),
            figure: figure.into(),
            baseline: baseline.into(),
            ratio: ratio.into(),
            target: target.into(),
            verdict,
            note: String::new(),
            values,
        });
        self.rows.last_mut().expect("just pushed")
    }

    /// A row for a figure that could not be measured.
    pub fn missing(
        &mut self,
        section: &str,
        name: impl Into<String>,
        target: &str,
        why: &str,
        failed: bool,
    ) {
        let verdict = if failed {
            Verdict::Failed
        } else {
            Verdict::NotMeasured
        };
        let row = self.add(
            section,
            name,
            "not measured",
            "-",
            "-",
            target,
            verdict,
            Value::Null,
        );
        row.note = why.to_owned();
    }

    /// Prints the table, a section header where the section changes, then each distinct note once.
    pub fn print(&self) {
        let widths = [
            self.rows
                .iter()
                .map(|r| r.name.chars().count())
                .max()
                .unwrap_or(8)
                .max(8),
            self.rows
                .iter()
                .map(|r| r.figure.chars().count())
                .max()
                .unwrap_or(6)
                .max(6),
            self.rows
                .iter()
                .map(|r| r.baseline.chars().count())
                .max()
                .unwrap_or(8)
                .max(8),
            self.rows
                .iter()
                .map(|r| r.ratio.chars().count())
                .max()
                .unwrap_or(5)
                .max(5),
            self.rows
                .iter()
                .map(|r| r.target.chars().count())
                .max()
                .unwrap_or(6)
                .max(6),
        ];
        let line = |a: &str, b: &str, c: &str, d: &str, e: &str, f: &str| {
            let pad = |s: &str, w: usize| {
                format!("{s}{}", " ".repeat(w.saturating_sub(s.chars().count())))
            };
            format!(
                "{} | {} | {} | {} | {} | {}",
                pad(a, widths[0]),
                pad(b, widths[1]),
                pad(c, widths[2]),
                pad(d, widths[3]),
                pad(e, widths[4]),
                f
            )
        };
        let header = line(
            "workload",
            "figure",
            "baseline (same run)",
            "ratio",
            "target (SPEC 6)",
            "verdict",
        );
        println!("{header}");
        let mut section = "";
        for r in &self.rows {
            if r.section != section {
                section = &r.section;
                println!("{}", "-".repeat(header.chars().count().min(220)));
                println!("{section}");
            }
            println!(
                "{}",
                line(
                    &r.name,
                    &r.figure,
                    &r.baseline,
                    &r.ratio,
                    &r.target,
                    r.verdict.text()
                )
            );
        }
        // Each distinct note once, with the rows it belongs to.
        let mut notes: Vec<(&str, Vec<&str>)> = Vec::new();
        for r in self.rows.iter().filter(|r| !r.note.is_empty()) {
            match notes.iter_mut().find(|(n, _)| *n == r.note) {
                Some((_, names)) => names.push(&r.name),
                None => notes.push((&r.note, vec![&r.name])),
            }
        }
        if !notes.is_empty() {
            println!("\nnotes:");
            for (note, names) in notes {
                println!("- {}: {note}", names.join(", "));
            }
        }
    }

    /// The rows as JSON.
    pub fn to_json(&self) -> Value {
        Value::from(
            self.rows
                .iter()
                .map(|r| {
                    json!({
                        "section": r.section,
                        "workload": r.name,
                        "figure": r.figure,
                        "baseline": r.baseline,
                        "ratio": r.ratio,
                        "target": r.target,
                        "verdict": r.verdict.text(),
                        "note": r.note,
                        "values": r.values,
                    })
                })
                .collect::<Vec<_>>(),
        )
    }
}

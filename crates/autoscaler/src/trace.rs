//! Reading the Azure Functions 2019 trace from text (the caller opens the files).
//!
//! Two layouts are read:
//! - the published one (`AzurePublicDataset`, `AzureFunctionsDataset2019.md`):
//!   `invocations_per_function_md.anon.dXX.csv` with `HashOwner,HashApp,HashFunction,Trigger`
//!   then one column per minute headed by the minute's number (`1`..`1440`; a file may hold
//!   only a window, e.g. `480`..`959`); `function_durations_percentiles.anon.dXX.csv` per
//!   function; `app_memory_percentiles.anon.dXX.csv` per app (joined by owner and app);
//! - the one in `../shared/traces/azure-functions-2019` (from vHive's invitro): `*_inv.csv`
//!   with `HashFunction,HashOwner,HashApp,minute_1..minute_1440` (no Trigger), `*_run.csv`
//!   (durations, same columns as the published file) and `*_mem.csv` (memory, one row per id).
//!
//! Columns are found by their header names, so their order does not matter. Errors name the
//! file, the line and the column.

use std::collections::BTreeMap;
use std::io::BufRead;

use serde::Serialize;

/// A problem with a trace file.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    /// The file could not be read.
    #[error("{file}: read failed")]
    Read {
        /// File name.
        file: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The file has no header line.
    #[error("{file}: empty file (no header)")]
    Empty {
        /// File name.
        file: String,
    },
    /// A column the layout needs is missing from the header.
    #[error("{file}:1: missing column {column}")]
    MissingColumn {
        /// File name.
        file: String,
        /// Column name.
        column: String,
    },
    /// The header has no minute columns.
    #[error("{file}:1: no minute columns (expected `minute_N` or `N` headers)")]
    NoMinutes {
        /// File name.
        file: String,
    },
    /// A row has fewer fields than the header.
    #[error("{file}:{line}: {got} fields, header has {expected}")]
    ShortRow {
        /// File name.
        file: String,
        /// 1-based line.
        line: usize,
        /// Fields in the header.
        expected: usize,
        /// Fields in the row.
        got: usize,
    },
    /// A cell is not a non-negative integer count.
    #[error("{file}:{line}: column {column}: {value:?} is not a count")]
    NotACount {
        /// File name.
        file: String,
        /// 1-based line.
        line: usize,
        /// Column header.
        column: String,
        /// The cell.
        value: String,
    },
    /// A cell is not a number.
    #[error("{file}:{line}: column {column}: {value:?} is not a number")]
    NotANumber {
        /// File name.
        file: String,
        /// 1-based line.
        line: usize,
        /// Column header.
        column: String,
        /// The cell.
        value: String,
    },
    /// No invocation file was given.
    #[error("no invocation file (invocations*.csv or *_inv.csv)")]
    NoInvocations,
}

/// Execution time distribution of a function (ms), from the duration percentiles.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DurationDist {
    /// Mean execution time.
    pub average_ms: f64,
    /// `(quantile in 0..=1, ms)`, increasing.
    pub points: Vec<(f64, f64)>,
}

impl DurationDist {
    /// A constant duration.
    pub fn constant(ms: f64) -> Self {
        DurationDist {
            average_ms: ms,
            points: vec![(0.0, ms), (1.0, ms)],
        }
    }

    /// The duration at quantile `u` (piecewise linear between the percentiles), at least 1 ms.
    pub fn quantile(&self, u: f64) -> f64 {
        let u = u.clamp(0.0, 1.0);
        let mut prev = match self.points.first() {
            Some(p) => *p,
            None => return self.average_ms.max(1.0),
        };
        for &(q, v) in &self.points[1..] {
            if u <= q {
                let span = q - prev.0;
                let t = if span > 0.0 { (u - prev.0) / span } else { 1.0 };
                return (prev.1 + t * (v - prev.1)).max(1.0);
            }
            prev = (q, v);
        }
        prev.1.max(1.0)
    }
}

/// One function of the trace.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TraceFunction {
    /// Owner hash.
    pub owner: String,
    /// App hash.
    pub app: String,
    /// Function hash.
    pub function: String,
    /// Trigger (published layout only).
    pub trigger: Option<String>,
    /// Invocations per minute; index 0 is minute 1 of the day.
    pub counts: Vec<u32>,
    /// Durations, if the duration file had the function.
    pub duration: Option<DurationDist>,
    /// Average allocated memory (MB) of the app, if the memory file had it.
    pub memory_mb: Option<f64>,
}

impl TraceFunction {
    /// A name unique in the trace (`owner/app/function`, shortened when all three agree).
    pub fn name(&self) -> String {
        if self.owner == self.app && self.app == self.function {
            self.function.clone()
        } else {
            format!("{}/{}/{}", self.owner, self.app, self.function)
        }
    }

    /// Total invocations.
    pub fn total(&self) -> u64 {
        self.counts.iter().map(|&c| u64::from(c)).sum()
    }
}

/// A loaded trace.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Trace {
    /// Functions, in the order first seen.
    pub functions: Vec<TraceFunction>,
    /// Minutes covered (the highest minute number seen).
    pub minutes: usize,
    /// Duration used for functions without one (the median of the others' averages).
    pub default_duration_ms: f64,
    /// Memory used for functions without one (the median of the others).
    pub default_memory_mb: f64,
}

/// Defaults when no function of the trace has a duration / memory.
pub const FALLBACK_DURATION_MS: f64 = 1000.0;
/// See [`FALLBACK_DURATION_MS`].
pub const FALLBACK_MEMORY_MB: f64 = 128.0;

type FnKey = (String, String, String);

/// Collects trace files, then [`TraceBuilder::build`]s a [`Trace`].
#[derive(Debug, Default)]
pub struct TraceBuilder {
    order: Vec<FnKey>,
    counts: BTreeMap<FnKey, (Option<String>, Vec<u32>)>,
    durations: BTreeMap<FnKey, DurationDist>,
    memory: BTreeMap<(String, String), f64>,
}

/// The kind of a trace file, from its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    /// Invocations per minute.
    Invocations,
    /// Duration percentiles.
    Durations,
    /// Memory percentiles.
    Memory,
}

/// What a file name says it holds: `invocations*.csv` / `*_inv.csv`, `*durations*.csv` /
/// `*_run.csv`, `*memory*.csv` / `*_mem.csv`; `None` for anything else.
pub fn file_kind(name: &str) -> Option<FileKind> {
    let n = name.to_ascii_lowercase();
    if !n.ends_with(".csv") {
        return None;
    }
    if n.starts_with("invocations") || n.ends_with("_inv.csv") {
        Some(FileKind::Invocations)
    } else if n.contains("durations") || n.ends_with("_run.csv") {
        Some(FileKind::Durations)
    } else if n.contains("memory") || n.ends_with("_mem.csv") {
        Some(FileKind::Memory)
    } else {
        None
    }
}

struct Csv<'a> {
    file: &'a str,
    header: Vec<String>,
}

impl<'a> Csv<'a> {
    fn col(&self, name: &str) -> Result<usize, TraceError> {
        self.header
            .iter()
            .position(|h| h == name)
            .ok_or_else(|| TraceError::MissingColumn {
                file: self.file.to_owned(),
                column: name.to_owned(),
            })
    }
    fn opt_col(&self, name: &str) -> Option<usize> {
        self.header.iter().position(|h| h == name)
    }
}

/// Reads lines, calling `row(line_no, fields)` for each non-empty data line.
fn read_csv<R: BufRead, T>(
    file: &str,
    reader: R,
    on_header: impl FnOnce(&Csv<'_>) -> Result<T, TraceError>,
    mut row: impl FnMut(&Csv<'_>, &T, usize, &[&str]) -> Result<(), TraceError>,
) -> Result<(), TraceError> {
    let mut lines = reader.lines();
    let header = loop {
        match lines.next() {
            None => {
                return Err(TraceError::Empty {
                    file: file.to_owned(),
                })
            }
            Some(Err(source)) => {
                return Err(TraceError::Read {
                    file: file.to_owned(),
                    source,
                })
            }
            Some(Ok(l)) if l.trim().is_empty() => continue,
            Some(Ok(l)) => break l,
        }
    };
    let csv = Csv {
        file,
        header: header
            .trim_start_matches('\u{feff}')
            .trim_end()
            .split(',')
            .map(|s| s.trim().to_owned())
            .collect(),
    };
    let cols = on_header(&csv)?;
    for (i, l) in lines.enumerate() {
        let line_no = i + 2;
        let l = l.map_err(|source| TraceError::Read {
            file: file.to_owned(),
            source,
        })?;
        let l = l.trim_end();
        if l.is_empty() {
            continue;
        }
        let fields: Vec<&str> = l.split(',').map(str::trim).collect();
        if fields.len() < csv.header.len() {
            return Err(TraceError::ShortRow {
                file: file.to_owned(),
                line: line_no,
                expected: csv.header.len(),
                got: fields.len(),
            });
        }
        row(&csv, &cols, line_no, &fields)?;
    }
    Ok(())
}

fn number(csv: &Csv<'_>, line: usize, col: usize, v: &str) -> Result<f64, TraceError> {
    v.parse::<f64>()
        .ok()
        .filter(|x| x.is_finite())
        .ok_or_else(|| TraceError::NotANumber {
            file: csv.file.to_owned(),
            line,
            column: csv.header[col].clone(),
            value: v.to_owned(),
        })
}

/// The minute number a header names (`minute_17` or `17`).
fn minute_of(h: &str) -> Option<usize> {
    let n = h.strip_prefix("minute_").unwrap_or(h);
    n.parse::<usize>().ok().filter(|&m| m >= 1)
}

impl TraceBuilder {
    /// An empty builder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a file of the kind its name says ([`file_kind`]); false (nothing read) for a file
    /// that is not part of the trace.
    pub fn add_file<R: BufRead>(&mut self, file: &str, reader: R) -> Result<bool, TraceError> {
        match file_kind(file) {
            Some(FileKind::Invocations) => self.add_invocations(file, reader)?,
            Some(FileKind::Durations) => self.add_durations(file, reader)?,
            Some(FileKind::Memory) => self.add_memory(file, reader)?,
            None => return Ok(false),
        }
        Ok(true)
    }

    /// Adds an invocation file (either layout; a window of the day is fine).
    pub fn add_invocations<R: BufRead>(&mut self, file: &str, reader: R) -> Result<(), TraceError> {
        read_csv(
            file,
            reader,
            |csv| {
                let cols = (
                    csv.col("HashOwner")?,
                    csv.col("HashApp")?,
                    csv.col("HashFunction")?,
                    csv.opt_col("Trigger"),
                );
                let minutes: Vec<(usize, usize)> = csv
                    .header
                    .iter()
                    .enumerate()
                    .filter_map(|(i, h)| minute_of(h).map(|m| (i, m)))
                    .collect();
                if minutes.is_empty() {
                    return Err(TraceError::NoMinutes {
                        file: file.to_owned(),
                    });
                }
                let max_minute = minutes.iter().map(|m| m.1).max().unwrap_or(0);
                Ok((cols, minutes, max_minute))
            },
            |csv, (cols, minutes, max_minute), line, f| {
                let max_minute = *max_minute;
                let key = (
                    f[cols.0].to_owned(),
                    f[cols.1].to_owned(),
                    f[cols.2].to_owned(),
                );
                if !self.counts.contains_key(&key) {
                    self.order.push(key.clone());
                }
                let entry = self.counts.entry(key).or_insert((None, Vec::new()));
                if let Some(t) = cols.3 {
                    entry.0 = Some(f[t].to_owned());
                }
                if entry.1.len() < max_minute {
                    entry.1.resize(max_minute, 0);
                }
                for &(i, m) in minutes {
                    let v = f[i];
                    let c: u32 = v.parse().map_err(|_| TraceError::NotACount {
                        file: csv.file.to_owned(),
                        line,
                        column: csv.header[i].clone(),
                        value: v.to_owned(),
                    })?;
                    entry.1[m - 1] = entry.1[m - 1].saturating_add(c);
                }
                Ok(())
            },
        )
    }

    /// Adds a duration file (`Average` and `percentile_Average_{0,1,25,50,75,99,100}`).
    pub fn add_durations<R: BufRead>(&mut self, file: &str, reader: R) -> Result<(), TraceError> {
        const PCTS: [(&str, f64); 7] = [
            ("percentile_Average_0", 0.0),
            ("percentile_Average_1", 0.01),
            ("percentile_Average_25", 0.25),
            ("percentile_Average_50", 0.5),
            ("percentile_Average_75", 0.75),
            ("percentile_Average_99", 0.99),
            ("percentile_Average_100", 1.0),
        ];
        read_csv(
            file,
            reader,
            |csv| {
                let cols = (
                    csv.col("HashOwner")?,
                    csv.col("HashApp")?,
                    csv.col("HashFunction")?,
                    csv.col("Average")?,
                );
                let mut pcols: Vec<(usize, f64)> = Vec::new();
                for (name, q) in PCTS {
                    pcols.push((csv.col(name)?, q));
                }
                Ok((cols, pcols))
            },
            |csv, (cols, pcols), line, f| {
                let key = (
                    f[cols.0].to_owned(),
                    f[cols.1].to_owned(),
                    f[cols.2].to_owned(),
                );
                let average_ms = number(csv, line, cols.3, f[cols.3])?;
                let mut points = Vec::with_capacity(pcols.len());
                let mut last = 0.0f64;
                for &(i, q) in pcols {
                    let v = number(csv, line, i, f[i])?.max(last);
                    last = v;
                    points.push((q, v));
                }
                self.durations
                    .insert(key, DurationDist { average_ms, points });
                Ok(())
            },
        )
    }

    /// Adds a memory file (`HashOwner`, `HashApp`, `AverageAllocatedMb`).
    pub fn add_memory<R: BufRead>(&mut self, file: &str, reader: R) -> Result<(), TraceError> {
        read_csv(
            file,
            reader,
            |csv| {
                Ok((
                    csv.col("HashOwner")?,
                    csv.col("HashApp")?,
                    csv.col("AverageAllocatedMb")?,
                ))
            },
            |csv, cols, line, f| {
                let mb = number(csv, line, cols.2, f[cols.2])?;
                self.memory
                    .insert((f[cols.0].to_owned(), f[cols.1].to_owned()), mb);
                Ok(())
            },
        )
    }

    /// The trace: every function seen in an invocation file, with its duration and its app's
    /// memory where known.
    pub fn build(self) -> Result<Trace, TraceError> {
        if self.order.is_empty() {
            return Err(TraceError::NoInvocations);
        }
        let minutes = self.counts.values().map(|c| c.1.len()).max().unwrap_or(0);
        let mut functions = Vec::with_capacity(self.order.len());
        let mut counts = self.counts;
        for key in self.order {
            let Some((trigger, mut c)) = counts.remove(&key) else {
                continue;
            };
            c.resize(minutes, 0);
            functions.push(TraceFunction {
                duration: self.durations.get(&key).cloned(),
                memory_mb: self.memory.get(&(key.0.clone(), key.1.clone())).copied(),
                owner: key.0,
                app: key.1,
                function: key.2,
                trigger,
                counts: c,
            });
        }
        let median = |mut v: Vec<f64>, fallback: f64| {
            if v.is_empty() {
                return fallback;
            }
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let default_duration_ms = median(
            functions
                .iter()
                .filter_map(|f| f.duration.as_ref().map(|d| d.average_ms))
                .collect(),
            FALLBACK_DURATION_MS,
        );
        let default_memory_mb = median(
            functions.iter().filter_map(|f| f.memory_mb).collect(),
            FALLBACK_MEMORY_MB,
        );
        Ok(Trace {
            functions,
            minutes,
            default_duration_ms,
            default_memory_mb,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHARED_INV: &str = "HashFunction,HashOwner,HashApp,minute_1,minute_2,minute_3\n\
        f1,o1,a1,0,2,1\n\
        f2,o2,a2,5,0,0\n";
    const RUN: &str = "HashOwner,HashApp,HashFunction,Average,Count,Minimum,Maximum,percentile_Average_0,percentile_Average_1,percentile_Average_25,percentile_Average_50,percentile_Average_75,percentile_Average_99,percentile_Average_100\n\
        o1,a1,f1,100,10,10.0,1000.0,10,20,50,80,120,900,1000\n";
    const SHARED_MEM: &str = "HashOwner,HashApp,SampleCount,AverageAllocatedMb,AverageAllocatedMb_pct1,AverageAllocatedMb_pct5,AverageAllocatedMb_pct25,AverageAllocatedMb_pct50,AverageAllocatedMb_pct75,AverageAllocatedMb_pct95,AverageAllocatedMb_pct99,AverageAllocatedMb_pct100\n\
        o1,a1,900,188,172,185,185,187,188,205,214,214\n";

    #[test]
    fn shared_layout_parses_with_durations_and_memory() {
        let mut b = TraceBuilder::new();
        b.add_invocations("1350_inv.csv", SHARED_INV.as_bytes())
            .expect("inv");
        b.add_durations("1350_run.csv", RUN.as_bytes())
            .expect("run");
        b.add_memory("1350_mem.csv", SHARED_MEM.as_bytes())
            .expect("mem");
        let t = b.build().expect("trace");
        assert_eq!(t.minutes, 3);
        assert_eq!(t.functions.len(), 2);
        let f1 = &t.functions[0];
        assert_eq!((f1.owner.as_str(), f1.function.as_str()), ("o1", "f1"));
        assert_eq!(f1.counts, [0, 2, 1]);
        assert_eq!(f1.trigger, None);
        assert_eq!(f1.memory_mb, Some(188.0));
        let d = f1.duration.as_ref().expect("duration");
        assert_eq!(d.quantile(0.5), 80.0);
        assert_eq!(d.quantile(0.375), 65.0);
        assert_eq!(t.functions[1].counts, [5, 0, 0]);
        assert_eq!(t.functions[1].duration, None);
        // defaults are the medians of the known ones
        assert_eq!(t.default_duration_ms, 100.0);
        assert_eq!(t.default_memory_mb, 188.0);
    }

    #[test]
    fn published_layout_with_a_window_parses() {
        let inv = "HashOwner,HashApp,HashFunction,Trigger,480,481,482\n\
            o1,a1,f1,http,1,0,3\n";
        let mem = "HashOwner,HashApp,SampleCount,AverageAllocatedMb,AverageAllocatedMb_pct1,AverageAllocatedMb_pct5,AverageAllocatedMb_pct25,AverageAllocatedMb_pct50,AverageAllocatedMb_pct75,AverageAllocatedMb_pct95,AverageAllocatedMb_pct99,AverageAllocatedMb_pct100\n\
            o1,a1,10,256,1,2,3,4,5,6,7,8\n";
        assert_eq!(
            file_kind("invocations_per_function_md.anon.d01.csv"),
            Some(FileKind::Invocations)
        );
        assert_eq!(
            file_kind("function_durations_percentiles.anon.d01.csv"),
            Some(FileKind::Durations)
        );
        assert_eq!(
            file_kind("app_memory_percentiles.anon.d01.csv"),
            Some(FileKind::Memory)
        );
        assert_eq!(file_kind("1350_inv.csv"), Some(FileKind::Invocations));
        assert_eq!(file_kind("PROVENANCE.md"), None);
        let mut b = TraceBuilder::new();
        b.add_invocations("invocations_per_function_md.anon.d01.csv", inv.as_bytes())
            .expect("inv");
        // a second window of the same day
        let inv2 = "HashOwner,HashApp,HashFunction,Trigger,1,2\no1,a1,f1,http,7,0\n";
        b.add_invocations(
            "invocations_per_function_md.anon.d01.part0.csv",
            inv2.as_bytes(),
        )
        .expect("inv2");
        b.add_memory("app_memory_percentiles.anon.d01.csv", mem.as_bytes())
            .expect("mem");
        let t = b.build().expect("trace");
        assert_eq!(t.minutes, 482);
        let f = &t.functions[0];
        assert_eq!(f.trigger.as_deref(), Some("http"));
        assert_eq!(f.counts[0], 7);
        assert_eq!(f.counts[479], 1);
        assert_eq!(f.counts[481], 3);
        assert_eq!(f.total(), 11);
        assert_eq!(f.memory_mb, Some(256.0));
        assert_eq!(f.name(), "o1/a1/f1");
    }

    #[test]
    fn bad_input_names_file_line_and_column() {
        let bad = "HashFunction,HashOwner,HashApp,minute_1,minute_2\nf,o,a,1,x\n";
        let e = TraceBuilder::new()
            .add_invocations("1350_inv.csv", bad.as_bytes())
            .expect_err("bad count");
        assert_eq!(
            e.to_string(),
            "1350_inv.csv:2: column minute_2: \"x\" is not a count"
        );
        let neg = "HashFunction,HashOwner,HashApp,minute_1\nf,o,a,-1\n";
        let e = TraceBuilder::new()
            .add_invocations("1350_inv.csv", neg.as_bytes())
            .expect_err("negative");
        assert!(e.to_string().contains("column minute_1: \"-1\""), "{e}");
        let short = "HashFunction,HashOwner,HashApp,minute_1,minute_2\nf,o,a,1\n";
        let e = TraceBuilder::new()
            .add_invocations("t_inv.csv", short.as_bytes())
            .expect_err("short");
        assert_eq!(e.to_string(), "t_inv.csv:2: 4 fields, header has 5");
        let e = TraceBuilder::new()
            .add_invocations("t_inv.csv", "HashOwner,HashApp,minute_1\n".as_bytes())
            .expect_err("missing");
        assert_eq!(e.to_string(), "t_inv.csv:1: missing column HashFunction");
        let e = TraceBuilder::new()
            .add_durations("t_run.csv", RUN.replace(",80,", ",eighty,").as_bytes())
            .expect_err("nan");
        assert_eq!(
            e.to_string(),
            "t_run.csv:2: column percentile_Average_50: \"eighty\" is not a number"
        );
        let e = TraceBuilder::new()
            .add_memory("t_mem.csv", "".as_bytes())
            .expect_err("empty");
        assert_eq!(e.to_string(), "t_mem.csv: empty file (no header)");
        assert!(matches!(
            TraceBuilder::new().build(),
            Err(TraceError::NoInvocations)
        ));
    }
}

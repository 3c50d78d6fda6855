//! CSV: one sample per row, numeric feature columns and one label column.
//!
//! CSV cannot be read at random, so [`read`] streams it once: the features go to a writer as raw little-endian
//! `f32` samples (open them with [`super::SampleSource::raw`]) and the label column, which is small, stays in
//! memory under [`super::Limits::max_in_memory_bytes`].
//!
//! Bounds: a record (the header row too) longer than [`super::Limits::max_record_bytes`] is refused, naming its
//! line, before more than that and the reader's [`READ_BUFFER_BYTES`] of it have been read, so memory never holds
//! more of a record; the features written stop at [`super::Limits::max_array_bytes`].

use std::cell::Cell;
use std::io::{BufWriter, Read, Write};
use std::rc::Rc;

use super::{ArrayInfo, ByteOrder, DataError, Dtype, Limits, RawArray};

/// Which column holds the labels.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LabelColumn {
    /// The column with this header name (needs a header row).
    Name(String),
    /// The column at this index, counting from 0.
    Index(usize),
    /// The last column.
    Last,
}

/// How to read a CSV file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CsvOptions {
    /// Whether the first row holds column names rather than a sample.
    pub has_header: bool,
    /// Where the labels are.
    pub label: LabelColumn,
    /// The field separator, usually `b','`.
    pub delimiter: u8,
}

impl Default for CsvOptions {
    fn default() -> Self {
        CsvOptions { has_header: true, label: LabelColumn::Last, delimiter: b',' }
    }
}

/// The most bytes a field may take in a file checked with [`record_bytes_for`]: far more than any number needs
/// (`-1.2345678901234567e-308` is 24), enough for a column name.
pub const MAX_FIELD_BYTES: u64 = 256;

/// The CSV reader's buffer, in bytes: what it may hold beyond the record being read.
pub const READ_BUFFER_BYTES: usize = 64 * 1024;

/// The longest record worth reading for a model of `features` input values: a label column and the features,
/// each at most [`MAX_FIELD_BYTES`], plus a line end. A longer record cannot be a sample of the model.
pub fn record_bytes_for(features: usize) -> u64 {
    (features as u64).saturating_add(1).saturating_mul(MAX_FIELD_BYTES).saturating_add(2)
}

/// The input as the CSV reader sees it: a read fails once the record being read has passed the bound.
struct RecordBound<R> {
    inner: R,
    /// Bytes handed to the CSV reader so far.
    consumed: u64,
    /// Where the next record starts and how far reading may go, as the read loop last set them.
    window: Rc<Cell<(u64, u64)>>,
}

impl<R: Read> Read for RecordBound<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let (_, end) = self.window.get();
        let room = end.saturating_sub(self.consumed);
        if room == 0 && !buf.is_empty() {
            return Err(std::io::Error::other(RecordTooLong));
        }
        let want = buf.len().min(usize::try_from(room).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        self.consumed += n as u64;
        Ok(n)
    }
}

/// The error [`RecordBound`] fails a read with.
#[derive(Debug)]
struct RecordTooLong;

impl std::fmt::Display for RecordTooLong {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a CSV record is longer than the limit")
    }
}

impl std::error::Error for RecordTooLong {}

/// What [`read`] found.
#[derive(Clone, Debug, PartialEq)]
pub struct CsvData {
    /// The features as written to the output: `float32`, little-endian, shape `(rows, feature columns)`.
    pub features: ArrayInfo,
    /// The names of the feature columns, in order (`column 1`, ... without a header row).
    pub feature_names: Vec<String>,
    /// The label column, shape `(rows,)`: `int64` when every label is a whole number, else `float64`.
    pub labels: RawArray,
}

/// Reads a CSV file, writing the features to `features_out` as raw little-endian `f32` samples.
///
/// # Errors
///
/// [`DataError::Csv`] with the row and column of a cell that is not a finite number, a row with the wrong number
/// of fields, or a label column that is missing; [`DataError::Option`] for a label given by name without a header;
/// [`DataError::Malformed`] for a file with no data rows or no feature column; [`DataError::TooLarge`] when the
/// labels exceed `limits.max_in_memory_bytes` or the features `limits.max_array_bytes`; [`DataError::Csv`] naming
/// the line of a record longer than `limits.max_record_bytes`; [`DataError::Io`] when reading or writing fails.
pub fn read(
    input: impl Read,
    options: &CsvOptions,
    features_out: impl Write,
    limits: &Limits,
) -> Result<CsvData, DataError> {
    let slack = READ_BUFFER_BYTES as u64;
    let window = Rc::new(Cell::new((0, limits.max_record_bytes.saturating_add(slack))));
    let bounded = RecordBound { inner: input, consumed: 0, window: Rc::clone(&window) };
    let mut reader = ::csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .delimiter(options.delimiter)
        .buffer_capacity(READ_BUFFER_BYTES)
        .from_reader(bounded);
    let mut next_line = 1;
    let mut written = 0u64;
    let mut out = BufWriter::new(features_out);
    let mut record = ::csv::StringRecord::new();
    let mut names: Option<Vec<String>> = None;
    let mut label_index = None;
    let mut width = 0;
    let mut labels: Vec<f64> = Vec::new();
    let mut all_integers = true;
    let mut row_bytes = Vec::new();
    let max_labels = limits.max_in_memory_bytes / 8;
    loop {
        // The bytes the reader has buffered past the record are not part of it: the window starts where the
        // record does, and what is read beyond `max_record_bytes` of it fails.
        let more = reader.read_record(&mut record).map_err(|e| {
            if is_too_long(&e) {
                DataError::Csv {
                    row: next_line,
                    column: None,
                    reason: format!(
                        "the record is longer than {} bytes, the most a row of this model's columns may take; \
                         is the delimiter right, or is a quote left open?",
                        limits.max_record_bytes
                    ),
                }
            } else {
                csv_error(e)
            }
        })?;
        if !more {
            break;
        }
        let position = reader.position();
        next_line = position.line();
        window.set((position.byte(), position.byte().saturating_add(limits.max_record_bytes).saturating_add(slack)));
        let row = record.position().map_or(0, |p| p.line());
        if options.has_header && names.is_none() {
            names = Some(record.iter().map(|s| clean(s).to_owned()).collect());
            width = record.len();
            continue;
        }
        if width == 0 {
            width = record.len();
        }
        if record.len() != width {
            let against = if options.has_header { "the header" } else { "the first row" };
            return Err(DataError::Csv {
                row,
                column: None,
                reason: format!("the row has {} fields but {against} has {width}", record.len()),
            });
        }
        let label_at = match label_index {
            Some(i) => i,
            None => {
                let i = resolve_label(&options.label, names.as_deref(), width)?;
                label_index = Some(i);
                i
            }
        };
        if width < 2 {
            return Err(DataError::Malformed {
                format: "CSV",
                reason: "a row has only the label column; there are no features".into(),
            });
        }
        if labels.len() as u64 >= max_labels {
            return Err(DataError::TooLarge {
                what: "the CSV label column".into(),
                bytes: (labels.len() as u64 + 1) * 8,
                limit: limits.max_in_memory_bytes,
            });
        }
        row_bytes.clear();
        for (i, cell) in record.iter().enumerate() {
            let column = || column_name(i, names.as_deref());
            let text = clean(cell);
            if i == label_at {
                let value: f64 = text.parse().map_err(|_| not_a_number(row, column(), text))?;
                if !value.is_finite() {
                    return Err(not_a_number(row, column(), text));
                }
                all_integers &= value.fract() == 0.0 && value.abs() < 9.0e15;
                labels.push(value);
            } else {
                let value: f32 = text.parse().map_err(|_| not_a_number(row, column(), text))?;
                if !value.is_finite() {
                    return Err(not_a_number(row, column(), text));
                }
                row_bytes.extend_from_slice(&value.to_le_bytes());
            }
        }
        written = written.saturating_add(row_bytes.len() as u64);
        if written > limits.max_array_bytes {
            return Err(DataError::TooLarge {
                what: format!("the CSV, as float32 features up to row {row},"),
                bytes: written,
                limit: limits.max_array_bytes,
            });
        }
        out.write_all(&row_bytes)?;
    }
    out.flush()?;
    if labels.is_empty() {
        return Err(DataError::Malformed { format: "CSV", reason: "the file has no data rows".into() });
    }
    let label_at = label_index.unwrap_or(0);
    let feature_names = (0..width).filter(|&i| i != label_at).map(|i| column_name(i, names.as_deref())).collect();
    let n = labels.len();
    let labels = if all_integers {
        // Whole numbers below 2^53 in magnitude convert exactly.
        RawArray {
            info: ArrayInfo { dtype: Dtype::I64, shape: vec![n], byte_order: ByteOrder::Little },
            data: labels.iter().flat_map(|&v| (v as i64).to_le_bytes()).collect(),
        }
    } else {
        RawArray {
            info: ArrayInfo { dtype: Dtype::F64, shape: vec![n], byte_order: ByteOrder::Little },
            data: labels.iter().flat_map(|v| v.to_le_bytes()).collect(),
        }
    };
    Ok(CsvData {
        features: ArrayInfo { dtype: Dtype::F32, shape: vec![n, width - 1], byte_order: ByteOrder::Little },
        feature_names,
        labels,
    })
}

/// A cell without surrounding whitespace or the byte order mark some spreadsheets write first.
fn clean(cell: &str) -> &str {
    cell.trim_start_matches('\u{feff}').trim()
}

fn resolve_label(label: &LabelColumn, names: Option<&[String]>, width: usize) -> Result<usize, DataError> {
    match label {
        LabelColumn::Last => Ok(width.saturating_sub(1)),
        LabelColumn::Index(i) if *i < width => Ok(*i),
        LabelColumn::Index(i) => {
            Err(DataError::Option(format!("the label column index {i} (from 0) is past the CSV's {width} columns")))
        }
        LabelColumn::Name(name) => {
            let names = names.ok_or_else(|| {
                DataError::Option(format!(
                    "the label column is named '{name}' but the CSV is read without a header row"
                ))
            })?;
            names.iter().position(|n| n == name).ok_or_else(|| {
                DataError::Missing(format!(
                    "the CSV has no column named '{name}'; its columns are {}",
                    names.iter().map(|n| format!("'{n}'")).collect::<Vec<_>>().join(", ")
                ))
            })
        }
    }
}

fn column_name(i: usize, names: Option<&[String]>) -> String {
    match names.and_then(|n| n.get(i)) {
        Some(name) => format!("{} ('{name}')", i + 1),
        None => format!("{}", i + 1),
    }
}

fn not_a_number(row: u64, column: String, text: &str) -> DataError {
    let shown: String = text.chars().take(40).collect();
    DataError::Csv { row, column: Some(column), reason: format!("'{shown}' is not a finite number") }
}

/// Whether `e` is [`RecordBound`] refusing a long record.
fn is_too_long(e: &::csv::Error) -> bool {
    matches!(e.kind(), ::csv::ErrorKind::Io(io) if io.get_ref().is_some_and(|inner| inner.is::<RecordTooLong>()))
}

fn csv_error(e: ::csv::Error) -> DataError {
    let row = e.position().map_or(0, |p| p.line());
    match e.into_kind() {
        ::csv::ErrorKind::Io(e) => DataError::Io(e),
        ::csv::ErrorKind::Utf8 { err, .. } => DataError::Csv {
            row,
            column: Some(format!("{}", err.field() + 1)),
            reason: "the cell is not valid UTF-8".into(),
        },
        other => DataError::Csv { row, column: None, reason: format!("{other:?}") },
    }
}

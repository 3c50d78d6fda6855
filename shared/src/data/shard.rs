//! Shards: self-describing blobs of samples that the server stores and providers train on, and the seeded
//! shuffle, split and cut that make them.
//!
//! # Layout
//!
//! All integers are little-endian. `r` is the rank of one feature sample, `q` the rank of one label.
//!
//! | offset | bytes | field |
//! | --- | --- | --- |
//! | 0 | 8 | magic `DAIGSHD1` |
//! | 8 | 2 | format version, `u16`, currently 1 |
//! | 10 | 1 | feature dtype code: 1 u8, 2 i8, 3 u16, 4 i16, 5 i32, 6 i64, 7 f32, 8 f64 ([`Dtype::code`]) |
//! | 11 | 1 | label kind: 1 class indices (`u32`), 2 target values (`f32`) |
//! | 12 | 4 | sample count `n`, `u32`, at least 1 |
//! | 16 | 4 | class count for label kind 1 (every label is below it), 0 for kind 2 |
//! | 20 | 1 | `r`, the feature sample rank, 0 to 8 |
//! | 21 | 1 | `q`, the label sample rank, 0 to 8 (always 0 for kind 1) |
//! | 22 | 2 | reserved, zero |
//! | 24 | 4r | feature sample dimensions, `u32` each, none zero |
//! | 24 + 4r | 4q | label sample dimensions, `u32` each, none zero |
//! | `H` = 24 + 4r + 4q | `n` * F | features: sample after sample, elements in C order, little-endian, in the raw dtype (F = product of the feature dimensions * dtype size) |
//! | `H` + `n` * F | `n` * L * 4 | labels: kind 1, one `u32` per sample (L = 1); kind 2, L = product of the label dimensions `f32` per sample |
//!
//! The blob ends right after the labels. Normalisation is not applied: features keep their raw dtype (u8 MNIST
//! stays four times smaller than `f32`) and [`ShardView::sample_f32`] normalises on read.
//!
//! # Sharding
//!
//! [`shard_dataset`] shuffles sample indices with [`permutation`] (ChaCha8 seeded from the project's seed),
//! takes the first [`split`]`.0` shuffled samples for training and the rest for validation, and cuts each part
//! into shards of `samples_per_shard` samples (the last of each part may be smaller). Validation is sharded too,
//! because a validation set can be large as well; its shards are numbered from 0 like the training ones. Only one
//! shard is in memory at a time.

use std::io::{Cursor, Read, Seek, SeekFrom, Write};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::{DataError, Dtype, LabelRef, Labels, Normalization, SampleSource, ShapeDisplay, checked_product, to_f32};

/// The eight bytes every shard starts with.
pub const MAGIC: &[u8; 8] = b"DAIGSHD1";
/// The format version written and read.
pub const VERSION: u16 = 1;
/// The largest rank of a feature or label sample.
pub const MAX_RANK: usize = 8;
const FIXED_HEADER_BYTES: usize = 24;
const LABEL_KIND_CLASSES: u8 = 1;
const LABEL_KIND_VALUES: u8 = 2;

/// The labels a shard carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ShardLabels {
    /// One `u32` class index per sample, each below `count`.
    Classes { count: u32 },
    /// `f32` targets of this shape per sample.
    Values { shape: Vec<usize> },
}

impl ShardLabels {
    /// The shard labels for in-memory [`Labels`].
    pub fn of(labels: &Labels) -> ShardLabels {
        match labels {
            Labels::Classes { count, .. } => ShardLabels::Classes { count: *count },
            Labels::Values { shape, .. } => ShardLabels::Values { shape: shape.clone() },
        }
    }

    fn shape(&self) -> &[usize] {
        match self {
            ShardLabels::Classes { .. } => &[],
            ShardLabels::Values { shape } => shape,
        }
    }
}

/// A shard's header: what its samples and labels are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardHeader {
    /// The raw dtype of the features.
    pub feature_dtype: Dtype,
    /// The shape of one feature sample.
    pub sample_shape: Vec<usize>,
    /// How many samples the shard holds.
    pub sample_count: usize,
    /// What the labels are.
    pub labels: ShardLabels,
}

/// Sizes derived from a valid header.
#[derive(Clone, Copy, Debug)]
struct Sizes {
    header: usize,
    sample_bytes: usize,
    label_elements: usize,
    features: usize,
    labels: usize,
    total: usize,
}

impl ShardHeader {
    /// The bytes of the whole shard this header describes (header, features and labels).
    ///
    /// # Errors
    ///
    /// As [`ShardHeader::encode`]: a header that declares nothing or sizes that overflow.
    pub fn shard_bytes(&self) -> Result<u64, DataError> {
        Ok(self.sizes()?.total as u64)
    }

    /// Checks the header and computes its sizes with checked arithmetic.
    fn sizes(&self) -> Result<Sizes, DataError> {
        let label_shape = self.labels.shape();
        if self.sample_shape.len() > MAX_RANK || label_shape.len() > MAX_RANK {
            return Err(DataError::Shard(format!("sample ranks above {MAX_RANK} are not supported")));
        }
        if self.sample_shape.iter().chain(label_shape).any(|&d| d == 0 || u32::try_from(d).is_err()) {
            return Err(DataError::Shard(format!(
                "sample dimensions must be 1 to 2^32-1, not {} and {}",
                ShapeDisplay(&self.sample_shape),
                ShapeDisplay(label_shape)
            )));
        }
        if self.sample_count == 0 || u32::try_from(self.sample_count).is_err() {
            return Err(DataError::Shard(format!("a shard holds 1 to 2^32-1 samples, not {}", self.sample_count)));
        }
        if let ShardLabels::Classes { count: 0 } = self.labels {
            return Err(DataError::Shard("the class count is 0".into()));
        }
        let overflow = || DataError::Shard("the declared sizes overflow".into());
        let header = FIXED_HEADER_BYTES + 4 * (self.sample_shape.len() + label_shape.len());
        let sample_bytes = checked_product(&self.sample_shape)
            .and_then(|e| e.checked_mul(self.feature_dtype.size()))
            .ok_or_else(overflow)?;
        let label_elements = checked_product(label_shape).ok_or_else(overflow)?;
        let features = sample_bytes.checked_mul(self.sample_count).ok_or_else(overflow)?;
        let labels =
            label_elements.checked_mul(4).and_then(|b| b.checked_mul(self.sample_count)).ok_or_else(overflow)?;
        let total = header.checked_add(features).and_then(|t| t.checked_add(labels)).ok_or_else(overflow)?;
        Ok(Sizes { header, sample_bytes, label_elements, features, labels, total })
    }

    /// The length of the whole shard this header describes.
    ///
    /// # Errors
    ///
    /// [`DataError::Shard`] for an invalid header (see [`ShardHeader::encode`]).
    pub fn total_bytes(&self) -> Result<usize, DataError> {
        Ok(self.sizes()?.total)
    }

    /// Writes the header bytes.
    ///
    /// # Errors
    ///
    /// [`DataError::Shard`] for ranks above [`MAX_RANK`], zero or over-`u32` dimensions, a sample count of 0 or
    /// over `u32`, a class count of 0, or sizes that overflow; [`DataError::Io`] when `w` fails.
    pub fn encode(&self, w: &mut impl Write) -> Result<(), DataError> {
        self.sizes()?;
        let (kind, classes) = match self.labels {
            ShardLabels::Classes { count } => (LABEL_KIND_CLASSES, count),
            ShardLabels::Values { .. } => (LABEL_KIND_VALUES, 0),
        };
        let label_shape = self.labels.shape();
        let mut bytes = Vec::with_capacity(FIXED_HEADER_BYTES + 4 * MAX_RANK * 2);
        bytes.extend_from_slice(MAGIC);
        bytes.extend_from_slice(&VERSION.to_le_bytes());
        bytes.push(self.feature_dtype.code());
        bytes.push(kind);
        // Each cast below was checked by `sizes`.
        bytes.extend_from_slice(&(self.sample_count as u32).to_le_bytes());
        bytes.extend_from_slice(&classes.to_le_bytes());
        bytes.push(self.sample_shape.len() as u8);
        bytes.push(label_shape.len() as u8);
        bytes.extend_from_slice(&[0, 0]);
        for &d in self.sample_shape.iter().chain(label_shape) {
            bytes.extend_from_slice(&(d as u32).to_le_bytes());
        }
        w.write_all(&bytes)?;
        Ok(())
    }

    /// Parses a header from the start of `bytes`, returning it and its length.
    ///
    /// # Errors
    ///
    /// [`DataError::Shard`] saying what is wrong: magic, version, codes, ranks, dimensions or a short input.
    pub fn decode(bytes: &[u8]) -> Result<(ShardHeader, usize), DataError> {
        let fixed = bytes.get(..FIXED_HEADER_BYTES).ok_or_else(|| {
            DataError::Shard(format!("{} bytes is shorter than the {FIXED_HEADER_BYTES}-byte header", bytes.len()))
        })?;
        if &fixed[..8] != MAGIC {
            return Err(DataError::Shard("it does not start with the magic DAIGSHD1".into()));
        }
        let version = u16::from_le_bytes([fixed[8], fixed[9]]);
        if version != VERSION {
            return Err(DataError::Shard(format!("format version {version}; this build reads version {VERSION}")));
        }
        let feature_dtype = Dtype::from_code(fixed[10])
            .ok_or_else(|| DataError::Shard(format!("unknown feature dtype code {}", fixed[10])))?;
        let sample_count = u32::from_le_bytes([fixed[12], fixed[13], fixed[14], fixed[15]]) as usize;
        let classes = u32::from_le_bytes([fixed[16], fixed[17], fixed[18], fixed[19]]);
        let (rank, label_rank) = (usize::from(fixed[20]), usize::from(fixed[21]));
        if fixed[22..24] != [0, 0] {
            return Err(DataError::Shard("the reserved bytes 22..24 are not zero".into()));
        }
        if rank > MAX_RANK || label_rank > MAX_RANK {
            return Err(DataError::Shard(format!("ranks {rank} and {label_rank}; at most {MAX_RANK} are supported")));
        }
        let header_len = FIXED_HEADER_BYTES + 4 * (rank + label_rank);
        let dims = bytes.get(FIXED_HEADER_BYTES..header_len).ok_or_else(|| {
            DataError::Shard(format!("{} bytes is shorter than the {header_len}-byte header", bytes.len()))
        })?;
        let dims: Vec<usize> =
            dims.chunks_exact(4).map(|d| u32::from_le_bytes([d[0], d[1], d[2], d[3]]) as usize).collect();
        let (sample_shape, label_shape) = dims.split_at(rank);
        let labels = match fixed[11] {
            LABEL_KIND_CLASSES if label_rank == 0 => ShardLabels::Classes { count: classes },
            LABEL_KIND_CLASSES => {
                return Err(DataError::Shard("class labels with a label rank above 0".into()));
            }
            LABEL_KIND_VALUES if classes == 0 => ShardLabels::Values { shape: label_shape.to_vec() },
            LABEL_KIND_VALUES => {
                return Err(DataError::Shard("value labels with a class count".into()));
            }
            kind => return Err(DataError::Shard(format!("unknown label kind {kind}"))),
        };
        let header = ShardHeader { feature_dtype, sample_shape: sample_shape.to_vec(), sample_count, labels };
        header.sizes()?;
        Ok((header, header_len))
    }
}

/// Writes a shard to `W` as samples arrive: the header first, then each sample's features; labels are small and
/// kept until [`ShardWriter::finish`] appends them.
#[derive(Debug)]
pub struct ShardWriter<W> {
    out: W,
    header: ShardHeader,
    sizes: Sizes,
    written: usize,
    labels: Vec<u8>,
}

impl<W: Write> ShardWriter<W> {
    /// Writes `header` and gets ready for its samples.
    ///
    /// # Errors
    ///
    /// As [`ShardHeader::encode`].
    pub fn new(mut out: W, header: ShardHeader) -> Result<Self, DataError> {
        let sizes = header.sizes()?;
        header.encode(&mut out)?;
        Ok(ShardWriter { out, header, sizes, written: 0, labels: Vec::with_capacity(sizes.labels) })
    }

    /// Appends one sample: its features as little-endian raw bytes of the header's dtype, and its label.
    ///
    /// # Errors
    ///
    /// [`DataError::Shard`] when the shard is full, the features have the wrong length, or the label is of the
    /// wrong kind, shape or range; [`DataError::Io`] when the writer fails.
    pub fn push(&mut self, features_le: &[u8], label: LabelRef<'_>) -> Result<(), DataError> {
        if self.written == self.header.sample_count {
            return Err(DataError::Shard(format!("the shard is full at {} samples", self.written)));
        }
        if features_le.len() != self.sizes.sample_bytes {
            return Err(DataError::Shard(format!(
                "a sample of {} bytes where the header says {}",
                features_le.len(),
                self.sizes.sample_bytes
            )));
        }
        match (&self.header.labels, label) {
            (ShardLabels::Classes { count }, LabelRef::Class(c)) if c < *count => {
                self.labels.extend_from_slice(&c.to_le_bytes());
            }
            (ShardLabels::Values { .. }, LabelRef::Values(v)) if v.len() == self.sizes.label_elements => {
                self.labels.extend(v.iter().flat_map(|x| x.to_le_bytes()));
            }
            (expected, got) => {
                return Err(DataError::Shard(format!("label {got:?} does not fit the header's {expected:?}")));
            }
        }
        self.out.write_all(features_le)?;
        self.written += 1;
        Ok(())
    }

    /// Appends the labels and gives back the writer.
    ///
    /// # Errors
    ///
    /// [`DataError::Shard`] when fewer samples were pushed than the header declares, [`DataError::Io`] when the
    /// writer fails.
    pub fn finish(mut self) -> Result<W, DataError> {
        if self.written != self.header.sample_count {
            return Err(DataError::Shard(format!(
                "{} samples were written but the header declares {}",
                self.written, self.header.sample_count
            )));
        }
        self.out.write_all(&self.labels)?;
        self.out.flush()?;
        Ok(self.out)
    }
}

/// A decoded shard borrowing the blob: every size has been checked against the blob's length and every class
/// label against the class count, so the accessors only fail on an index past the end.
#[derive(Clone, Debug)]
pub struct ShardView<'a> {
    header: ShardHeader,
    sizes: Sizes,
    features: &'a [u8],
    labels: &'a [u8],
}

impl<'a> ShardView<'a> {
    /// Decodes and checks a shard blob.
    ///
    /// # Errors
    ///
    /// [`DataError::Shard`] for a bad header (see [`ShardHeader::decode`]), a length other than the header
    /// declares, a class label at or above the class count, or a target that is not finite.
    pub fn decode(bytes: &'a [u8]) -> Result<Self, DataError> {
        let (header, header_len) = ShardHeader::decode(bytes)?;
        let sizes = header.sizes()?;
        debug_assert_eq!(sizes.header, header_len);
        if bytes.len() != sizes.total {
            return Err(DataError::Shard(format!(
                "the blob has {} bytes but its header declares {} ({} {} samples of shape {})",
                bytes.len(),
                sizes.total,
                header.sample_count,
                header.feature_dtype,
                ShapeDisplay(&header.sample_shape)
            )));
        }
        let (features, labels) = bytes[header_len..].split_at(sizes.features);
        match header.labels {
            ShardLabels::Classes { count } => {
                if let Some((i, c)) = labels
                    .chunks_exact(4)
                    .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .enumerate()
                    .find(|&(_, c)| c >= count)
                {
                    return Err(DataError::Shard(format!(
                        "sample {i} has class {c}, not below the class count {count}"
                    )));
                }
            }
            ShardLabels::Values { .. } => {
                if let Some(i) =
                    labels.chunks_exact(4).position(|b| !f32::from_le_bytes([b[0], b[1], b[2], b[3]]).is_finite())
                {
                    return Err(DataError::Shard(format!(
                        "sample {} has a target that is not finite",
                        i / sizes.label_elements.max(1)
                    )));
                }
            }
        }
        Ok(ShardView { header, sizes, features, labels })
    }

    /// The header.
    pub fn header(&self) -> &ShardHeader {
        &self.header
    }

    /// The number of samples.
    pub fn len(&self) -> usize {
        self.header.sample_count
    }

    /// Always false: a valid shard has at least one sample.
    pub fn is_empty(&self) -> bool {
        self.header.sample_count == 0
    }

    /// Values per feature sample.
    pub fn sample_elements(&self) -> usize {
        self.sizes.sample_bytes / self.header.feature_dtype.size()
    }

    /// Sample `i`'s raw little-endian features, or `None` past the end.
    pub fn features_raw(&self, i: usize) -> Option<&'a [u8]> {
        let start = i.checked_mul(self.sizes.sample_bytes)?;
        self.features.get(start..start.checked_add(self.sizes.sample_bytes)?)
    }

    /// All the features, raw and little-endian, sample after sample.
    pub fn all_features_raw(&self) -> &'a [u8] {
        self.features
    }

    /// Sample `i`'s features as normalised `f32`; `out` holds [`ShardView::sample_elements`] values.
    ///
    /// # Errors
    ///
    /// [`DataError::Option`] for an index past the end, a wrong `out` length or a normalisation that does not
    /// suit the dtype.
    pub fn sample_f32(&self, i: usize, normalization: &Normalization, out: &mut [f32]) -> Result<(), DataError> {
        let raw = self.features_raw(i).ok_or_else(|| self.out_of_range(i))?;
        to_f32(self.header.feature_dtype, raw, normalization, out)
    }

    /// Sample `i`'s label.
    ///
    /// # Errors
    ///
    /// [`DataError::Option`] for an index past the end.
    pub fn label(&self, i: usize) -> Result<ShardLabel<'a>, DataError> {
        let per = self.sizes.label_elements * 4;
        let start = i.checked_mul(per).filter(|_| i < self.len()).ok_or_else(|| self.out_of_range(i))?;
        let bytes = &self.labels[start..start + per];
        Ok(match self.header.labels {
            ShardLabels::Classes { .. } => {
                ShardLabel::Class(u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
            }
            ShardLabels::Values { .. } => ShardLabel::Values(bytes),
        })
    }

    fn out_of_range(&self, i: usize) -> DataError {
        DataError::Option(format!("sample {i} is past the shard's {} samples", self.len()))
    }
}

/// A label read from a shard.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ShardLabel<'a> {
    /// A class index, below the header's class count.
    Class(u32),
    /// Target values as little-endian `f32` bytes; [`ShardLabel::values`] converts them.
    Values(&'a [u8]),
}

impl ShardLabel<'_> {
    /// The class index, if this is a class label.
    pub fn class(&self) -> Option<u32> {
        match self {
            ShardLabel::Class(c) => Some(*c),
            ShardLabel::Values(_) => None,
        }
    }

    /// The label as `f32` values: a class label gives its index as one value.
    pub fn values(&self) -> Vec<f32> {
        match self {
            ShardLabel::Class(c) => vec![*c as f32],
            ShardLabel::Values(b) => b.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
        }
    }
}

/// How a dataset is cut into shards. The seed makes the shuffle reproducible.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ShardPlan {
    /// The project's seed for the shuffle.
    pub seed: u64,
    /// The fraction of samples held out for validation, in `0.0..1.0`.
    pub validation_fraction: f64,
    /// Samples per shard; the last shard of each part may hold fewer.
    pub samples_per_shard: usize,
}

/// Which part of the dataset a shard belongs to, and its number within that part (from 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ShardRole {
    Train(u32),
    Validation(u32),
}

/// What [`shard_dataset`] produced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShardSummary {
    pub train_samples: usize,
    pub validation_samples: usize,
    pub train_shards: usize,
    pub validation_shards: usize,
}

/// The shuffled order of `n` sample indices for `seed`: a Fisher-Yates shuffle driven by ChaCha8, the same on
/// every platform.
///
/// # Errors
///
/// [`DataError::Option`] when `n` exceeds `u32::MAX`.
pub fn permutation(n: usize, seed: u64) -> Result<Vec<u32>, DataError> {
    let n32 = u32::try_from(n).map_err(|_| DataError::Option(format!("{n} samples; at most 2^32-1 are supported")))?;
    let mut order: Vec<u32> = (0..n32).collect();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    for i in (1..n).rev() {
        // `i < n <= u32::MAX`, so both casts are lossless.
        let j = rng.random_range(0..=i as u32) as usize;
        order.swap(i, j);
    }
    Ok(order)
}

/// How many of `n` samples go to training and validation: validation gets `round(n * fraction)`.
///
/// # Errors
///
/// [`DataError::Option`] when `fraction` is not in `0.0..1.0` or leaves no training sample.
pub fn split(n: usize, validation_fraction: f64) -> Result<(usize, usize), DataError> {
    if !(0.0..1.0).contains(&validation_fraction) {
        return Err(DataError::Option(format!(
            "the validation fraction must be at least 0 and below 1, not {validation_fraction}"
        )));
    }
    // Below n, since the fraction is below 1, up to rounding that the `min` catches.
    let validation = ((n as f64 * validation_fraction).round() as usize).min(n);
    if validation == n {
        return Err(DataError::Option(format!(
            "a validation fraction of {validation_fraction} leaves none of the {n} samples for training"
        )));
    }
    Ok((n - validation, validation))
}

/// Shuffles, splits and cuts a dataset into shards, calling `emit` with each shard's role and bytes as soon as it
/// is complete: [`shard_dataset_into`] with each shard built in memory, one at a time.
///
/// # Errors
///
/// As [`shard_dataset_into`].
pub fn shard_dataset<R, E, F>(
    features: &mut SampleSource<R>,
    labels: &Labels,
    plan: &ShardPlan,
    mut emit: F,
) -> Result<ShardSummary, E>
where
    R: Read + Seek,
    E: From<DataError>,
    F: FnMut(ShardRole, Vec<u8>) -> Result<(), E>,
{
    shard_dataset_into(
        features,
        labels,
        plan,
        |_, _| Ok(Cursor::new(Vec::new())),
        |role, _, out: Cursor<Vec<u8>>| emit(role, out.into_inner()),
    )
}

/// Shuffles, splits and cuts a dataset into shards, each written to an output that `create` opens for it and
/// handed to `finish` (with its header) as soon as it is complete. A shard is written as it is read, one sample
/// at a time: nothing of it is held in memory besides its labels. Features are read from `features` in file
/// order within a shard (forward seeks only) and written to their slots, converted to little-endian.
///
/// # Errors
///
/// [`DataError::Mismatch`] when `labels` has a different sample count, [`DataError::Option`] for an invalid
/// plan, [`DataError`]s from reading `features` or writing a shard, and whatever `create` and `finish` return.
pub fn shard_dataset_into<R, W, E>(
    features: &mut SampleSource<R>,
    labels: &Labels,
    plan: &ShardPlan,
    mut create: impl FnMut(ShardRole, &ShardHeader) -> Result<W, E>,
    mut finish: impl FnMut(ShardRole, &ShardHeader, W) -> Result<(), E>,
) -> Result<ShardSummary, E>
where
    R: Read + Seek,
    W: Write + Seek,
    E: From<DataError>,
{
    let n = features.info().len();
    if labels.len() != n {
        return Err(
            DataError::Mismatch(format!("there are {n} samples of features but {} labels", labels.len())).into()
        );
    }
    if n == 0 {
        return Err(DataError::Mismatch("the features have no samples".into()).into());
    }
    if plan.samples_per_shard == 0 {
        return Err(DataError::Option("samples per shard must be at least 1".into()).into());
    }
    let (train, validation) = split(n, plan.validation_fraction)?;
    let order = permutation(n, plan.seed)?;
    let (train_order, validation_order) = order.split_at(train);
    let template = ShardHeader {
        feature_dtype: features.info().dtype,
        sample_shape: features.info().sample_shape().to_vec(),
        sample_count: 0,
        labels: ShardLabels::of(labels),
    };
    let mut summary =
        ShardSummary { train_samples: train, validation_samples: validation, train_shards: 0, validation_shards: 0 };
    for (part, is_train) in [(train_order, true), (validation_order, false)] {
        for (number, chunk) in part.chunks(plan.samples_per_shard).enumerate() {
            let header = ShardHeader { sample_count: chunk.len(), ..template.clone() };
            // Fewer shards than samples, and samples fit in u32.
            let role = if is_train { ShardRole::Train(number as u32) } else { ShardRole::Validation(number as u32) };
            let mut out = create(role, &header)?;
            build_shard(features, labels, &header, chunk, &mut out)?;
            finish(role, &header, out)?;
            if is_train {
                summary.train_shards += 1;
            } else {
                summary.validation_shards += 1;
            }
        }
    }
    Ok(summary)
}

/// Writes one shard to `out` (from its start): the header, each sample at its slot, then the labels in slot order.
fn build_shard<R: Read + Seek, W: Write + Seek>(
    features: &mut SampleSource<R>,
    labels: &Labels,
    header: &ShardHeader,
    indices: &[u32],
    out: &mut W,
) -> Result<(), DataError> {
    let sizes = header.sizes()?;
    let mut head = Vec::with_capacity(sizes.header);
    header.encode(&mut head)?;
    out.write_all(&head)?;
    // Read in file order, so that a shard's samples are fetched with forward seeks only.
    let mut by_position: Vec<(u32, usize)> = indices.iter().enumerate().map(|(slot, &i)| (i, slot)).collect();
    by_position.sort_unstable();
    let mut sample = vec![0u8; sizes.sample_bytes];
    for (index, slot) in by_position {
        let start = sizes.header + slot * sizes.sample_bytes;
        features.read_samples_le(index as usize, &mut sample)?;
        out.seek(SeekFrom::Start(start as u64))?;
        out.write_all(&sample)?;
    }
    let mut tail = Vec::with_capacity(sizes.labels);
    for &index in indices {
        match labels.get(index as usize) {
            Some(LabelRef::Class(c)) => tail.extend_from_slice(&c.to_le_bytes()),
            Some(LabelRef::Values(v)) => tail.extend(v.iter().flat_map(|x| x.to_le_bytes())),
            None => return Err(DataError::Mismatch(format!("no label for sample {index}"))),
        }
    }
    if sizes.header + sizes.features + tail.len() != sizes.total {
        return Err(DataError::Shard(format!(
            "built {} bytes where the header declares {}; the labels do not match the header",
            sizes.header + sizes.features + tail.len(),
            sizes.total
        )));
    }
    out.seek(SeekFrom::Start((sizes.header + sizes.features) as u64))?;
    out.write_all(&tail)?;
    out.flush()?;
    Ok(())
}

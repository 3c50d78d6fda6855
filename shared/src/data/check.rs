//! Checking a dataset against the model: sample shapes, sample counts, label kinds and label values.
//!
//! The model module produces a [`DataRequirements`]; [`check`] compares the two arrays' headers with it, and
//! [`Labels::from_array`] makes the one pass over the (small) label array that range checks need.
//!
//! Reshaping: features whose sample shape differs from the model's input but holds the same number of values
//! (a flat 784 for a 28x28x1 input, or 28x28 for 28x28x1) are accepted and read in C order as the model's shape.
//! The same rule applies to value labels. Any other difference is an error.

use std::borrow::Cow;

use super::{ArrayInfo, ByteOrder, DataError, RawArray, ShapeDisplay, checked_product, swap_bytes};

/// What the model needs from a dataset. The model module builds one from its input shape and loss.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DataRequirements {
    /// The shape of one input sample, without the batch axis (e.g. `[28, 28, 1]`).
    pub sample_shape: Vec<usize>,
    /// What the labels must be.
    pub labels: LabelRequirement,
}

/// The labels a loss needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LabelRequirement {
    /// Integer class indices in `0..count`, one per sample: shape `(n,)` or `(n, 1)` (cross-entropy).
    Classes { count: usize },
    /// Float targets of this shape per sample, so the array is `(n, ...shape)` (MSE, binary cross-entropy). A
    /// shape with the same number of values is accepted; `(n,)` serves a shape of `[1]`.
    Values { shape: Vec<usize> },
}

/// Checks the features' and labels' headers against the model: a non-empty set of samples, the sample shape
/// (same shape, or the same number of values, see the module docs), equal sample counts, and the labels' dtype
/// and shape. Label values are checked by [`Labels::from_array`].
///
/// # Errors
///
/// [`DataError::Mismatch`] saying what the data has and what the model expects.
pub fn check(features: &ArrayInfo, labels: &ArrayInfo, req: &DataRequirements) -> Result<(), DataError> {
    check_features(features, req)?;
    if labels.len() != features.len() || labels.shape.is_empty() {
        return Err(DataError::Mismatch(format!(
            "there are {} samples of features but {} labels",
            features.len(),
            labels.len()
        )));
    }
    check_label_info(labels, &req.labels)
}

/// The part of [`check`] that needs only the features' header: samples, and a sample shape that fits the model's
/// input. Called on a header before the array's body is read, so that data that cannot fit is never inflated.
///
/// # Errors
///
/// [`DataError::Mismatch`] saying what the features have and what the model expects.
pub fn check_features(features: &ArrayInfo, req: &DataRequirements) -> Result<(), DataError> {
    if features.is_empty() {
        return Err(DataError::Mismatch("the features have no samples".into()));
    }
    if features.sample_shape() != req.sample_shape.as_slice() {
        let have = features.sample_elements()?;
        let want = checked_product(&req.sample_shape)
            .ok_or_else(|| DataError::ShapeOverflow(ShapeDisplay(&req.sample_shape).to_string()))?;
        if have != want {
            return Err(DataError::Mismatch(format!(
                "the features have sample shape {} ({have} values) but the model's input is {} ({want} values)",
                ShapeDisplay(features.sample_shape()),
                ShapeDisplay(&req.sample_shape),
            )));
        }
    }
    Ok(())
}

/// The part of [`check`] that needs only the labels' header: their dtype and sample shape (not their count,
/// which is compared with the features' by [`check`]).
///
/// # Errors
///
/// [`DataError::Mismatch`] saying what the labels are and what the model's loss needs.
pub fn check_labels(labels: &ArrayInfo, req: &DataRequirements) -> Result<(), DataError> {
    if labels.shape.is_empty() {
        return Err(DataError::Mismatch("the labels have no samples axis".into()));
    }
    check_label_info(labels, &req.labels)
}

fn check_label_info(labels: &ArrayInfo, req: &LabelRequirement) -> Result<(), DataError> {
    match req {
        LabelRequirement::Classes { count } => {
            if *count == 0 || u32::try_from(*count).is_err() {
                return Err(DataError::Mismatch(format!("the model has {count} classes; 1 to 2^32-1 are possible")));
            }
            if !matches!(labels.sample_shape(), [] | [1]) {
                return Err(DataError::Mismatch(format!(
                    "class labels must have shape (n,) or (n, 1) but these have shape {}; for one-hot labels pass \
                     the class indices, e.g. y.argmax(axis=1)",
                    ShapeDisplay(&labels.shape)
                )));
            }
            if !labels.dtype.is_integer() {
                return Err(DataError::Mismatch(format!(
                    "the model's loss needs integer class labels (0 to {}) but these are {}; convert them, e.g. \
                     y.astype(np.int64)",
                    count - 1,
                    labels.dtype
                )));
            }
        }
        LabelRequirement::Values { shape } => {
            if labels.dtype.is_integer() {
                return Err(DataError::Mismatch(format!(
                    "the model's loss needs float targets but these labels are {}; convert them, e.g. \
                     y.astype(np.float32)",
                    labels.dtype
                )));
            }
            if labels.sample_shape() != shape.as_slice() {
                let have = labels.sample_elements()?;
                let want =
                    checked_product(shape).ok_or_else(|| DataError::ShapeOverflow(ShapeDisplay(shape).to_string()))?;
                if have != want {
                    return Err(DataError::Mismatch(format!(
                        "the labels have sample shape {} ({have} values) but the model's output is {} ({want} values)",
                        ShapeDisplay(labels.sample_shape()),
                        ShapeDisplay(shape),
                    )));
                }
            }
        }
    }
    Ok(())
}

/// Labels read into memory and checked, ready for sharding.
#[derive(Clone, Debug, PartialEq)]
pub enum Labels {
    /// One class index per sample, each below `count`.
    Classes { count: u32, values: Vec<u32> },
    /// `shape`'s number of finite `f32` values per sample, sample after sample.
    Values { shape: Vec<usize>, values: Vec<f32> },
}

/// One sample's label.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum LabelRef<'a> {
    /// A class index.
    Class(u32),
    /// Target values.
    Values(&'a [f32]),
}

impl Labels {
    /// Checks a label array against the model's requirement and converts it: class indices to `u32` after a range
    /// check, targets to `f32` after a finiteness check.
    ///
    /// # Errors
    ///
    /// [`DataError::Mismatch`] as [`check`] for the dtype and shape, [`DataError::Label`] naming the first sample
    /// whose label is out of range or not finite, [`DataError::Malformed`] when `data` does not match `info`.
    pub fn from_array(array: &RawArray, req: &LabelRequirement) -> Result<Labels, DataError> {
        let info = &array.info;
        check_label_info(info, req)?;
        if array.data.len() as u64 != info.byte_len()? {
            return Err(DataError::Malformed {
                format: "label",
                reason: format!("{} bytes of data for shape {}", array.data.len(), ShapeDisplay(&info.shape)),
            });
        }
        let data: Cow<'_, [u8]> = if info.byte_order == ByteOrder::Big {
            let mut swapped = array.data.clone();
            swap_bytes(&mut swapped, info.dtype.size());
            Cow::Owned(swapped)
        } else {
            Cow::Borrowed(&array.data)
        };
        let n = info.len();
        match req {
            LabelRequirement::Classes { count } => {
                // Checked to fit in u32 by `check_label_info`.
                let count = *count as u32;
                let mut values = Vec::with_capacity(n);
                for index in 0..n {
                    let label = info.dtype.read_i64_le(&data, index).unwrap_or(-1);
                    match u32::try_from(label) {
                        Ok(v) if v < count => values.push(v),
                        _ => {
                            return Err(DataError::Label {
                                index,
                                reason: format!(
                                    "{label} is not a class of the model, whose {count} classes are 0 to {}",
                                    count - 1
                                ),
                            });
                        }
                    }
                }
                Ok(Labels::Classes { count, values })
            }
            LabelRequirement::Values { shape } => {
                let per_sample = info.sample_elements()?;
                let total = n * per_sample;
                let mut values = Vec::with_capacity(total);
                for i in 0..total {
                    let v = info.dtype.read_f64_le(&data, i).unwrap_or(f64::NAN) as f32;
                    if !v.is_finite() {
                        let index = i.checked_div(per_sample).unwrap_or(0);
                        return Err(DataError::Label {
                            index,
                            reason: format!("the target {v} is not a finite float32"),
                        });
                    }
                    values.push(v);
                }
                Ok(Labels::Values { shape: shape.clone(), values })
            }
        }
    }

    /// The number of samples labelled.
    pub fn len(&self) -> usize {
        match self {
            Labels::Classes { values, .. } => values.len(),
            Labels::Values { shape, values } => {
                values.len().checked_div(checked_product(shape).unwrap_or(0)).unwrap_or(0)
            }
        }
    }

    /// Whether there are no labels.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The label of sample `i`, or `None` past the end.
    pub fn get(&self, i: usize) -> Option<LabelRef<'_>> {
        match self {
            Labels::Classes { values, .. } => values.get(i).map(|&c| LabelRef::Class(c)),
            Labels::Values { shape, values } => {
                let per = checked_product(shape)?;
                values.get(i.checked_mul(per)?..i.checked_add(1)?.checked_mul(per)?).map(LabelRef::Values)
            }
        }
    }
}

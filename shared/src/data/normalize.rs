//! Normalisation: how a sample's raw values become the `f32` the model sees.
//!
//! Shards keep the raw dtype (u8 MNIST stays four times smaller than `f32`); the project's [`Normalization`] is
//! applied by [`to_f32`] when a provider reads a sample. Every option is `(x - sub) / div` for two constants, so
//! the end points of a range map exactly to 0 and 1.

use std::io::{Read, Seek};

use serde::{Deserialize, Serialize};

use super::{DataError, Dtype, SampleSource};

/// How raw values are turned into the model's inputs. Stored with the project, so it is serialisable.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Normalization {
    /// The values as they are, converted to `f32`.
    #[default]
    None,
    /// `(x - min) / (max - min)`, mapping `min..=max` onto `0..=1`. A bound left out is the dtype's own (0 and 255
    /// for `uint8`); float data has no such range, so both bounds are needed for it.
    Scale {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        min: Option<f32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max: Option<f32>,
    },
    /// `(x - mean) / std`, with the statistics of the training data (see [`RunningStats`]).
    Standardize { mean: f32, std: f32 },
}

impl Normalization {
    /// The two constants `(sub, div)` such that a value becomes `(x - sub) / div` for data of `dtype`.
    ///
    /// # Errors
    ///
    /// [`DataError::Option`] for `Scale` without bounds on float data, bounds that are not finite or not
    /// increasing, or a standard deviation that is not finite and positive.
    pub fn affine(&self, dtype: Dtype) -> Result<(f32, f32), DataError> {
        match *self {
            Normalization::None => Ok((0.0, 1.0)),
            Normalization::Scale { min, max } => {
                let range = dtype_range(dtype);
                let (Some(min), Some(max)) = (min.or(range.map(|r| r.0)), max.or(range.map(|r| r.1))) else {
                    return Err(DataError::Option(format!(
                        "scaling {dtype} data needs both min and max: floats have no fixed range"
                    )));
                };
                if !(min.is_finite() && max.is_finite() && max > min) {
                    return Err(DataError::Option(format!("scaling needs finite min < max, not {min} and {max}")));
                }
                Ok((min, max - min))
            }
            Normalization::Standardize { mean, std } => {
                if !(mean.is_finite() && std.is_finite() && std > 0.0) {
                    return Err(DataError::Option(format!(
                        "standardising needs a finite mean and a positive std, not {mean} and {std}"
                    )));
                }
                Ok((mean, std))
            }
        }
    }
}

/// The range of an integer dtype, as `f32`; `None` for floats.
fn dtype_range(dtype: Dtype) -> Option<(f32, f32)> {
    Some(match dtype {
        Dtype::U8 => (0.0, f32::from(u8::MAX)),
        Dtype::I8 => (f32::from(i8::MIN), f32::from(i8::MAX)),
        Dtype::U16 => (0.0, f32::from(u16::MAX)),
        Dtype::I16 => (f32::from(i16::MIN), f32::from(i16::MAX)),
        Dtype::I32 => (i32::MIN as f32, i32::MAX as f32),
        Dtype::I64 => (i64::MIN as f32, i64::MAX as f32),
        Dtype::F32 | Dtype::F64 => return None,
    })
}

/// Converts little-endian raw values of `dtype` to normalised `f32`, one per element of `out`.
///
/// # Errors
///
/// [`DataError::Option`] when `raw` does not hold exactly `out.len()` elements or the normalisation is invalid
/// for `dtype` (see [`Normalization::affine`]).
pub fn to_f32(dtype: Dtype, raw: &[u8], normalization: &Normalization, out: &mut [f32]) -> Result<(), DataError> {
    let (sub, div) = normalization.affine(dtype)?;
    if out.len().checked_mul(dtype.size()) != Some(raw.len()) {
        return Err(DataError::Option(format!("{} bytes of {dtype} do not make {} values", raw.len(), out.len())));
    }
    macro_rules! convert {
        ($n:literal, $f:expr) => {
            for (o, b) in out.iter_mut().zip(raw.chunks_exact($n)) {
                let b: [u8; $n] = b.try_into().unwrap_or([0; $n]);
                *o = ($f(b) - sub) / div;
            }
        };
    }
    match dtype {
        Dtype::U8 => convert!(1, |b: [u8; 1]| f32::from(b[0])),
        Dtype::I8 => convert!(1, |b: [u8; 1]| f32::from(i8::from_le_bytes(b))),
        Dtype::U16 => convert!(2, |b| f32::from(u16::from_le_bytes(b))),
        Dtype::I16 => convert!(2, |b| f32::from(i16::from_le_bytes(b))),
        Dtype::I32 => convert!(4, |b| i32::from_le_bytes(b) as f32),
        Dtype::I64 => convert!(8, |b| i64::from_le_bytes(b) as f32),
        Dtype::F32 => convert!(4, f32::from_le_bytes),
        Dtype::F64 => convert!(8, |b| f64::from_le_bytes(b) as f32),
    }
    Ok(())
}

/// Mean and standard deviation in one streaming pass (Welford's algorithm), for [`Normalization::Standardize`].
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct RunningStats {
    count: u64,
    mean: f64,
    /// The sum of squared differences from the running mean.
    m2: f64,
}

impl RunningStats {
    /// Adds one value.
    pub fn push(&mut self, x: f64) {
        self.count += 1;
        let delta = x - self.mean;
        self.mean += delta / self.count as f64;
        self.m2 += delta * (x - self.mean);
    }

    /// Adds every element of little-endian `raw` values of `dtype` (a trailing partial element is ignored).
    pub fn push_raw(&mut self, dtype: Dtype, raw: &[u8]) {
        for i in 0..raw.len() / dtype.size() {
            if let Some(x) = dtype.read_f64_le(raw, i) {
                self.push(x);
            }
        }
    }

    /// Adds every value of the first `samples` samples of `source` (the training set, say), reading about
    /// 1 MiB at a time.
    ///
    /// # Errors
    ///
    /// As [`SampleSource::read_samples_le`].
    pub fn push_source<R: Read + Seek>(
        &mut self,
        source: &mut SampleSource<R>,
        samples: usize,
    ) -> Result<(), DataError> {
        let per = source.sample_bytes().max(1);
        let chunk = (1 << 20) / per + 1;
        let mut buf = Vec::new();
        let mut first = 0;
        let end = samples.min(source.info().len());
        while first < end {
            let count = chunk.min(end - first);
            buf.resize(count * source.sample_bytes(), 0);
            source.read_samples_le(first, &mut buf)?;
            self.push_raw(source.info().dtype, &buf);
            first += count;
        }
        Ok(())
    }

    /// How many values were added.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The mean (0 when empty).
    pub fn mean(&self) -> f64 {
        self.mean
    }

    /// The population standard deviation (0 when empty).
    pub fn std(&self) -> f64 {
        if self.count == 0 { 0.0 } else { (self.m2 / self.count as f64).sqrt() }
    }

    /// The standardisation these statistics call for.
    ///
    /// # Errors
    ///
    /// [`DataError::Option`] when no values were added or all were equal (the std would be 0).
    pub fn standardize(&self) -> Result<Normalization, DataError> {
        let (mean, std) = (self.mean() as f32, self.std() as f32);
        if self.count == 0 || !(std.is_finite() && std > 0.0) {
            return Err(DataError::Option(format!(
                "cannot standardise {} values with standard deviation {std}: they need to vary",
                self.count
            )));
        }
        Ok(Normalization::Standardize { mean, std })
    }
}

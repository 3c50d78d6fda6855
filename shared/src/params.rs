//! Model parameters: named tensors in one flat `f32` buffer, their seeded initialisation, and the
//! safetensors file format the final model is delivered in.
//!
//! Tensors are named `{layer}.{type}.{kernel|bias}` (`0.dense.kernel`, `2.conv2d.bias`) and laid out in
//! layer order, kernel before bias. Layouts follow Keras: a dense kernel is `[inputs, units]`, a conv2d
//! kernel is `[kernel_h, kernel_w, in_channels, filters]`, both row-major.

use std::collections::{BTreeMap, HashMap};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::model::{Activation, Layer, LayerInfo, Model};

/// Whether a tensor is a layer's weight matrix (kernel) or its bias.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TensorRole {
    Kernel,
    Bias,
}

/// One named tensor within the flat parameter buffer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TensorInfo {
    pub name: String,
    /// The index of the layer the tensor belongs to.
    pub layer: usize,
    pub role: TensorRole,
    pub shape: Vec<usize>,
    /// Offset in elements (not bytes) into the flat buffer.
    pub offset: usize,
    pub len: usize,
}

impl TensorInfo {
    pub fn range(&self) -> std::ops::Range<usize> {
        self.offset..self.offset + self.len
    }
}

/// The index of offsets and shapes of a model's parameters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParamLayout {
    pub tensors: Vec<TensorInfo>,
    /// Total number of `f32` elements.
    pub total: usize,
}

impl ParamLayout {
    /// The layout of the layers' parameters, in layer order, kernel before bias.
    pub fn new(layers: &[LayerInfo]) -> ParamLayout {
        let mut tensors = Vec::new();
        let mut offset = 0;
        for info in layers {
            let (kernel, units) = match (&info.layer, info.window) {
                (Layer::Dense { units, .. }, _) => (vec![info.input.0[0], *units], *units),
                (Layer::Conv2d { filters, kernel_size, .. }, Some(w)) => {
                    (vec![kernel_size.h, kernel_size.w, w.in_c, *filters], *filters)
                }
                _ => continue,
            };
            for (role, shape) in [(TensorRole::Kernel, kernel), (TensorRole::Bias, vec![units])] {
                let len = shape.iter().product();
                let role_name = if role == TensorRole::Kernel { "kernel" } else { "bias" };
                tensors.push(TensorInfo {
                    name: format!("{}.{}.{role_name}", info.index, info.layer.kind()),
                    layer: info.index,
                    role,
                    shape,
                    offset,
                    len,
                });
                offset += len;
            }
        }
        ParamLayout { tensors, total: offset }
    }

    /// The tensors of one layer: `(kernel, bias)`, if it has parameters.
    pub fn layer(&self, index: usize) -> Option<(&TensorInfo, &TensorInfo)> {
        let i = self.tensors.iter().position(|t| t.layer == index)?;
        Some((&self.tensors[i], &self.tensors[i + 1]))
    }

    pub fn get(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }
}

/// Fresh parameters for `model`, the same for the same seed on every machine: kernels from Glorot uniform,
/// or He uniform for layers followed by relu; biases zero.
///
/// Each tensor draws from its own ChaCha8 stream (the tensor's index), so its values do not depend on the
/// sizes of the tensors before it.
pub fn init_params(model: &Model, seed: u64) -> Vec<f32> {
    let mut data = vec![0.0f32; model.params.total];
    for (stream, t) in model.params.tensors.iter().enumerate() {
        if t.role != TensorRole::Kernel {
            continue;
        }
        let (fan_in, fan_out) = match t.shape[..] {
            [i, o] => (i, o),
            [kh, kw, ci, co] => (kh * kw * ci, kh * kw * co),
            _ => unreachable!("kernels are 2-D or 4-D"),
        };
        let limit = if followed_by_relu(model, t.layer) {
            (6.0 / fan_in as f64).sqrt()
        } else {
            (6.0 / (fan_in + fan_out) as f64).sqrt()
        } as f32;
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        rng.set_stream(stream as u64);
        for v in &mut data[t.range()] {
            *v = rng.random_range(-limit..limit);
        }
    }
    data
}

/// Whether the output of layer `index` goes through relu: its own activation, or the first activation
/// layer after it (past dropout) is relu.
fn followed_by_relu(model: &Model, index: usize) -> bool {
    let layers = &model.spec.layers;
    match layers[index].activation() {
        Some(Activation::Linear) => layers[index + 1..]
            .iter()
            .find(|l| !matches!(l, Layer::Dropout { .. }))
            .is_some_and(|l| matches!(l, Layer::Activation { activation: Activation::Relu })),
        a => a == Some(Activation::Relu),
    }
}

/// Why a safetensors file could not be read as a model's parameters.
#[derive(Debug, thiserror::Error)]
pub enum SafetensorsError {
    #[error("not a valid safetensors file: {0}")]
    Format(#[from] safetensors::SafeTensorError),
    #[error("tensor `{0}` is missing from the file")]
    Missing(String),
    #[error("tensor `{name}` has shape {found:?}, but the model needs {expected:?}")]
    Shape { name: String, expected: Vec<usize>, found: Vec<usize> },
    #[error("tensor `{name}` has dtype {found}, but DAIG parameters are F32")]
    Dtype { name: String, found: String },
    #[error("the file has tensor `{0}`, which the model does not have")]
    Unexpected(String),
    #[error("the parameter buffer has {found} values, but the layout needs {expected}")]
    Length { expected: usize, found: usize },
}

/// Writes `data` as a safetensors file: one F32 tensor per entry of `layout`, little-endian, with
/// `metadata` (for example the model spec under `daig.model`) in the header.
///
/// # Errors
/// When `data` does not have `layout.total` values.
pub fn to_safetensors(
    layout: &ParamLayout,
    data: &[f32],
    metadata: BTreeMap<String, String>,
) -> Result<Vec<u8>, SafetensorsError> {
    if data.len() != layout.total {
        return Err(SafetensorsError::Length { expected: layout.total, found: data.len() });
    }
    let bytes = crate::wire::f32s_to_le_bytes(data);
    let views = layout
        .tensors
        .iter()
        .map(|t| {
            let view = safetensors::tensor::TensorView::new(
                safetensors::Dtype::F32,
                t.shape.clone(),
                &bytes[t.offset * 4..(t.offset + t.len) * 4],
            )?;
            Ok((t.name.clone(), view))
        })
        .collect::<Result<Vec<_>, SafetensorsError>>()?;
    let metadata: HashMap<String, String> = metadata.into_iter().collect();
    Ok(safetensors::serialize(views, Some(metadata))?)
}

/// Reads a safetensors file into a flat buffer laid out as `layout`, checking that it holds exactly the
/// model's tensors with their shapes, as F32.
///
/// # Errors
/// A malformed file, or a missing, extra or mis-shaped tensor.
pub fn from_safetensors(layout: &ParamLayout, file: &[u8]) -> Result<Vec<f32>, SafetensorsError> {
    let st = safetensors::SafeTensors::deserialize(file)?;
    let mut names: Vec<String> = st.names().into_iter().map(str::to_owned).collect();
    names.sort();
    if let Some(extra) = names.iter().find(|n| layout.get(n).is_none()) {
        return Err(SafetensorsError::Unexpected(extra.clone()));
    }
    let mut data = vec![0.0f32; layout.total];
    for t in &layout.tensors {
        let view = st.tensor(&t.name).map_err(|_| SafetensorsError::Missing(t.name.clone()))?;
        if view.dtype() != safetensors::Dtype::F32 {
            return Err(SafetensorsError::Dtype { name: t.name.clone(), found: format!("{:?}", view.dtype()) });
        }
        if view.shape() != t.shape.as_slice() {
            return Err(SafetensorsError::Shape {
                name: t.name.clone(),
                expected: t.shape.clone(),
                found: view.shape().to_vec(),
            });
        }
        for (dst, src) in data[t.range()].iter_mut().zip(view.data().chunks_exact(4)) {
            *dst = f32::from_le_bytes(src.try_into().expect("chunks of 4"));
        }
    }
    Ok(data)
}

/// Reads the header metadata of a safetensors file (for example `daig.model`).
///
/// # Errors
/// A malformed file.
pub fn safetensors_metadata(file: &[u8]) -> Result<BTreeMap<String, String>, SafetensorsError> {
    let (_, meta) = safetensors::SafeTensors::read_metadata(file)?;
    Ok(meta.metadata().clone().unwrap_or_default().into_iter().collect())
}

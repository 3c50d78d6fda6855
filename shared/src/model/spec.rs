//! The serde types of a model as a requestor writes it in DAIG JSON.
//!
//! ```json
//! {
//!   "input_shape": [28, 28, 1],
//!   "layers": [
//!     {"type": "conv2d", "filters": 8, "kernel_size": 3, "activation": "relu"},
//!     {"type": "max_pool2d", "pool_size": 2},
//!     {"type": "flatten"},
//!     {"type": "dense", "units": 10, "activation": "softmax"}
//!   ],
//!   "loss": "cross_entropy"
//! }
//! ```
//!
//! Shapes are channels-last (height x width x channels), as in Keras.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A sequential model: an input shape, layers applied in order, and a loss.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    /// The shape of one sample: `[features]` or `[height, width, channels]`.
    pub input_shape: Vec<usize>,
    pub layers: Vec<Layer>,
    pub loss: Loss,
}

/// One layer of a sequential model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Layer {
    /// A fully connected layer over a 1-D input.
    Dense {
        units: usize,
        #[serde(default)]
        activation: Activation,
    },
    /// A 2-D convolution over a `height x width x channels` input.
    Conv2d {
        filters: usize,
        kernel_size: Size2,
        #[serde(default = "Size2::one")]
        strides: Size2,
        #[serde(default)]
        padding: Padding,
        #[serde(default)]
        activation: Activation,
    },
    /// Max pooling without padding; `strides` defaults to `pool_size`.
    MaxPool2d {
        pool_size: Size2,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        strides: Option<Size2>,
    },
    /// Average pooling without padding; `strides` defaults to `pool_size`.
    AvgPool2d {
        pool_size: Size2,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        strides: Option<Size2>,
    },
    /// Reshapes the input to one dimension.
    Flatten,
    /// Zeroes a fraction `rate` of its inputs while training and scales the rest by `1 / (1 - rate)`.
    Dropout { rate: f32 },
    /// An activation on its own.
    Activation { activation: Activation },
}

impl Layer {
    /// The name of the layer's type as written in JSON (`"conv2d"`).
    pub fn kind(&self) -> &'static str {
        match self {
            Layer::Dense { .. } => "dense",
            Layer::Conv2d { .. } => "conv2d",
            Layer::MaxPool2d { .. } => "max_pool2d",
            Layer::AvgPool2d { .. } => "avg_pool2d",
            Layer::Flatten => "flatten",
            Layer::Dropout { .. } => "dropout",
            Layer::Activation { .. } => "activation",
        }
    }

    /// The activation the layer applies, if it applies one.
    pub fn activation(&self) -> Option<Activation> {
        match self {
            Layer::Dense { activation, .. } | Layer::Conv2d { activation, .. } | Layer::Activation { activation } => {
                Some(*activation)
            }
            _ => None,
        }
    }
}

/// An element-wise (or, for softmax, per-sample) activation function.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    #[default]
    Linear,
    Relu,
    Sigmoid,
    Tanh,
    /// Softmax over the last axis of each sample.
    Softmax,
}

impl Activation {
    pub fn name(self) -> &'static str {
        match self {
            Activation::Linear => "linear",
            Activation::Relu => "relu",
            Activation::Sigmoid => "sigmoid",
            Activation::Tanh => "tanh",
            Activation::Softmax => "softmax",
        }
    }
}

/// Convolution padding, with Keras's meaning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Padding {
    /// No padding: the output shrinks by `kernel - 1`.
    #[default]
    Valid,
    /// Zero padding so that the output is `ceil(input / stride)`; the extra row or column goes at the
    /// bottom or right, as in TensorFlow.
    Same,
}

/// The loss a model is trained with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Loss {
    /// Cross-entropy on integer class labels, fused with a softmax over the model's output: the last layer
    /// gives logits (`linear`) or ends in `softmax`, which the loss then computes itself.
    #[serde(alias = "sparse_categorical_crossentropy")]
    CrossEntropy,
    /// Mean squared error against float targets of the output's shape.
    #[serde(alias = "mse", alias = "mean_squared_error")]
    MeanSquaredError,
    /// Binary cross-entropy against targets in [0, 1], fused with a sigmoid: the last layer gives logits
    /// (`linear`) or ends in `sigmoid`.
    #[serde(alias = "binary_crossentropy")]
    BinaryCrossEntropy,
}

impl Loss {
    pub fn name(self) -> &'static str {
        match self {
            Loss::CrossEntropy => "cross_entropy",
            Loss::MeanSquaredError => "mean_squared_error",
            Loss::BinaryCrossEntropy => "binary_cross_entropy",
        }
    }

    /// Whether accuracy is a meaningful metric: argmax accuracy for cross-entropy, accuracy at the 0.5
    /// threshold for binary cross-entropy, none for regression.
    pub fn has_accuracy(self) -> bool {
        !matches!(self, Loss::MeanSquaredError)
    }
}

/// A height and width, written in JSON as one number (both the same) or as `[height, width]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Size2 {
    pub h: usize,
    pub w: usize,
}

impl Size2 {
    pub const fn new(h: usize, w: usize) -> Size2 {
        Size2 { h, w }
    }
    pub const fn one() -> Size2 {
        Size2 { h: 1, w: 1 }
    }
}

impl fmt::Display for Size2 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.h == self.w { write!(f, "{}", self.h) } else { write!(f, "{}x{}", self.h, self.w) }
    }
}

impl Serialize for Size2 {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.h == self.w { s.serialize_u64(self.h as u64) } else { [self.h, self.w].serialize(s) }
    }
}

impl<'de> Deserialize<'de> for Size2 {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Repr {
            One(usize),
            Two([usize; 2]),
        }
        match Repr::deserialize(d)
            .map_err(|_| serde::de::Error::custom("expected a non-negative integer or a pair [height, width]"))?
        {
            Repr::One(n) => Ok(Size2::new(n, n)),
            Repr::Two([h, w]) => Ok(Size2::new(h, w)),
        }
    }
}

/// A tensor shape (of one sample, without the batch axis).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Shape(pub Vec<usize>);

impl Shape {
    /// The number of elements, or `None` on overflow.
    pub fn elements(&self) -> Option<usize> {
        self.0.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d))
    }
    pub fn dims(&self) -> &[usize] {
        &self.0
    }
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("x")?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

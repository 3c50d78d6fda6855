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
    /// The layer's type.
    pub fn layer_kind(&self) -> LayerKind {
        match self {
            Layer::Dense { .. } => LayerKind::Dense,
            Layer::Conv2d { .. } => LayerKind::Conv2d,
            Layer::MaxPool2d { .. } => LayerKind::MaxPool2d,
            Layer::AvgPool2d { .. } => LayerKind::AvgPool2d,
            Layer::Flatten => LayerKind::Flatten,
            Layer::Dropout { .. } => LayerKind::Dropout,
            Layer::Activation { .. } => LayerKind::Activation,
        }
    }

    /// The name of the layer's type as written in JSON (`"conv2d"`).
    pub fn kind(&self) -> &'static str {
        self.layer_kind().name()
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

/// The type of a [`Layer`], without its fields: what an editor offers to add, in the order it offers it.
///
/// Every match on it is exhaustive, so that a new layer type is a compile error wherever it must be handled
/// (the dashboard's form included) rather than silently missing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LayerKind {
    Dense,
    Conv2d,
    MaxPool2d,
    AvgPool2d,
    Flatten,
    Dropout,
    Activation,
}

impl LayerKind {
    /// Every layer type.
    pub const ALL: [LayerKind; 7] = [
        LayerKind::Dense,
        LayerKind::Conv2d,
        LayerKind::MaxPool2d,
        LayerKind::AvgPool2d,
        LayerKind::Flatten,
        LayerKind::Dropout,
        LayerKind::Activation,
    ];

    /// The name as written in JSON's `type` (`"max_pool2d"`).
    pub fn name(self) -> &'static str {
        match self {
            LayerKind::Dense => "dense",
            LayerKind::Conv2d => "conv2d",
            LayerKind::MaxPool2d => "max_pool2d",
            LayerKind::AvgPool2d => "avg_pool2d",
            LayerKind::Flatten => "flatten",
            LayerKind::Dropout => "dropout",
            LayerKind::Activation => "activation",
        }
    }

    /// The layer type named `name` in JSON.
    pub fn from_name(name: &str) -> Option<LayerKind> {
        LayerKind::ALL.into_iter().find(|k| k.name() == name)
    }

    /// What the layer does, in a few words.
    pub fn description(self) -> &'static str {
        match self {
            LayerKind::Dense => "fully connected, over a 1-D input",
            LayerKind::Conv2d => "2-D convolution over a height x width x channels input",
            LayerKind::MaxPool2d => "max pooling, without padding",
            LayerKind::AvgPool2d => "average pooling, without padding",
            LayerKind::Flatten => "reshapes its input to one dimension",
            LayerKind::Dropout => "zeroes a fraction of its inputs while training",
            LayerKind::Activation => "an activation on its own",
        }
    }

    /// The fields the layer takes in JSON besides `type`, in the order an editor shows them.
    pub fn fields(self) -> &'static [LayerField] {
        const fn f(
            name: &'static str,
            label: &'static str,
            kind: FieldKind,
            required: bool,
            hint: &'static str,
        ) -> LayerField {
            LayerField { name, label, kind, required, hint }
        }
        const ACTIVATION: LayerField =
            f("activation", "Activation", FieldKind::Activation, false, "applied to the outputs; default linear");
        const DENSE: &[LayerField] = &[f("units", "Units", FieldKind::Count, true, "outputs of the layer"), ACTIVATION];
        const CONV: &[LayerField] = &[
            f("filters", "Filters", FieldKind::Count, true, "output channels"),
            f("kernel_size", "Kernel size", FieldKind::Size2, true, "e.g. 3 or 3,3"),
            f("strides", "Strides", FieldKind::Size2, false, "default 1"),
            f("padding", "Padding", FieldKind::Padding, false, "same keeps the size; default valid"),
            ACTIVATION,
        ];
        const POOL: &[LayerField] = &[
            f("pool_size", "Pool size", FieldKind::Size2, true, "e.g. 2 or 2,2"),
            f("strides", "Strides", FieldKind::Size2, false, "default: the pool size"),
        ];
        const DROPOUT: &[LayerField] =
            &[f("rate", "Rate", FieldKind::Rate, true, "fraction dropped while training, at least 0 and below 1")];
        const ACTIVATION_ONLY: &[LayerField] =
            &[f("activation", "Activation", FieldKind::Activation, true, "the function")];
        match self {
            LayerKind::Dense => DENSE,
            LayerKind::Conv2d => CONV,
            LayerKind::MaxPool2d | LayerKind::AvgPool2d => POOL,
            LayerKind::Flatten => &[],
            LayerKind::Dropout => DROPOUT,
            LayerKind::Activation => ACTIVATION_ONLY,
        }
    }
}

impl fmt::Display for LayerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A field of a layer in JSON, as an editor shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayerField {
    /// The JSON key.
    pub name: &'static str,
    pub label: &'static str,
    pub kind: FieldKind,
    /// Whether the layer needs it; an optional field left out takes its default.
    pub required: bool,
    /// What it means and its default, for a hint.
    pub hint: &'static str,
}

/// The type of a layer field's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldKind {
    /// A positive integer.
    Count,
    /// A height and width: one positive integer for both, or `[height, width]`.
    Size2,
    /// A number at least 0 and below 1.
    Rate,
    /// One of [`Activation::ALL`].
    Activation,
    /// One of [`Padding::ALL`].
    Padding,
}

impl FieldKind {
    /// The words a choice field takes, or `None` for a number.
    pub fn choices(self) -> Option<Vec<&'static str>> {
        match self {
            FieldKind::Count | FieldKind::Size2 | FieldKind::Rate => None,
            FieldKind::Activation => Some(Activation::ALL.iter().map(|a| a.name()).collect()),
            FieldKind::Padding => Some(Padding::ALL.iter().map(|p| p.name()).collect()),
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
    /// Every activation.
    pub const ALL: [Activation; 5] =
        [Activation::Linear, Activation::Relu, Activation::Sigmoid, Activation::Tanh, Activation::Softmax];

    /// The name as written in JSON.
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

impl Padding {
    /// Every padding.
    pub const ALL: [Padding; 2] = [Padding::Valid, Padding::Same];

    /// The name as written in JSON.
    pub fn name(self) -> &'static str {
        match self {
            Padding::Valid => "valid",
            Padding::Same => "same",
        }
    }
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
    /// Every loss.
    pub const ALL: [Loss; 3] = [Loss::CrossEntropy, Loss::MeanSquaredError, Loss::BinaryCrossEntropy];

    /// The name as written in JSON (Keras's names are accepted too).
    pub fn name(self) -> &'static str {
        match self {
            Loss::CrossEntropy => "cross_entropy",
            Loss::MeanSquaredError => "mean_squared_error",
            Loss::BinaryCrossEntropy => "binary_cross_entropy",
        }
    }

    /// What the loss trains for, in a few words.
    pub fn description(self) -> &'static str {
        match self {
            Loss::CrossEntropy => "classification: integer class labels, one output per class",
            Loss::MeanSquaredError => "regression: float targets of the output's shape",
            Loss::BinaryCrossEntropy => "binary or multi-label: targets from 0 to 1",
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

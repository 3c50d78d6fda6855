//! The losses and their gradients with respect to the model's (training) output; see the parent module's
//! docs for the exact definitions.

use super::{BatchStats, Labels, Real, TrainError};
use crate::model::Loss;

/// Checks that `labels` fit `loss` and a model with `outputs` output elements, for `samples` samples.
pub(crate) fn check_labels(loss: Loss, outputs: usize, samples: usize, labels: &Labels<'_>) -> Result<(), TrainError> {
    if labels.len() != samples {
        return Err(TrainError::LabelCount { samples, labels: labels.len() });
    }
    match (loss, labels) {
        (Loss::CrossEntropy, Labels::Classes(classes)) => check_classes(classes, outputs),
        (Loss::CrossEntropy, Labels::Values(_)) => {
            Err(TrainError::LabelKind { loss: loss.name(), expected: "integer class labels" })
        }
        (Loss::BinaryCrossEntropy, Labels::Classes(classes)) if outputs == 1 => check_classes(classes, 2),
        (Loss::BinaryCrossEntropy | Loss::MeanSquaredError, Labels::Classes(_)) => Err(TrainError::LabelKind {
            loss: loss.name(),
            expected: "float targets with one value per output element",
        }),
        (_, Labels::Values(v)) if v.ncols() != outputs => {
            Err(TrainError::TargetWidth { expected: outputs, found: v.ncols() })
        }
        (_, Labels::Values(_)) => Ok(()),
    }
}

fn check_classes(classes: &[u32], count: usize) -> Result<(), TrainError> {
    match classes.iter().position(|&c| c as usize >= count) {
        Some(sample) => Err(TrainError::ClassOutOfRange { sample, class: classes[sample], classes: count }),
        None => Ok(()),
    }
}

/// The target of output `j` of sample `i` for the element-wise losses.
fn target<A: Real>(labels: &Labels<'_>, i: usize, j: usize) -> A {
    match labels {
        Labels::Classes(c) => A::from_f64(f64::from(c[i])),
        Labels::Values(v) => A::from_f32(v[[i, j]]),
    }
}

/// The mean loss of `out` (`[n, k]` row-major, logits for the fused losses) against `labels` (already
/// checked), writing the gradient of the mean into `grad` when given.
pub(crate) fn loss_and_grad<A: Real>(
    loss: Loss,
    out: &[A],
    k: usize,
    labels: &Labels<'_>,
    mut grad: Option<&mut [A]>,
) -> BatchStats {
    let n = out.len() / k;
    let mut sum = 0.0f64;
    let mut correct = 0;
    match loss {
        Loss::CrossEntropy => {
            let Labels::Classes(classes) = labels else { unreachable!("checked by check_labels") };
            let inv_n = A::one() / A::from_f64(n as f64);
            for (i, z) in out.chunks_exact(k).enumerate() {
                let y = classes[i] as usize;
                let (mut argmax, mut max) = (0, z[0]);
                for (j, &v) in z.iter().enumerate().skip(1) {
                    if v > max {
                        (argmax, max) = (j, v);
                    }
                }
                correct += usize::from(argmax == y);
                let s = z.iter().fold(A::zero(), |s, &v| s + (v - max).exp());
                sum += (max + s.ln() - z[y]).to_f64();
                if let Some(g) = grad.as_deref_mut() {
                    let g = &mut g[i * k..(i + 1) * k];
                    for (gj, &v) in g.iter_mut().zip(z) {
                        *gj = (v - max).exp() / s * inv_n;
                    }
                    g[y] = g[y] - inv_n;
                }
            }
            BatchStats { loss: sum / n as f64, samples: n, correct, judged: n }
        }
        Loss::MeanSquaredError => {
            let scale = A::from_f64(2.0 / (n * k) as f64);
            for (e, &v) in out.iter().enumerate() {
                let d = v - target::<A>(labels, e / k, e % k);
                sum += (d * d).to_f64();
                if let Some(g) = grad.as_deref_mut() {
                    g[e] = d * scale;
                }
            }
            BatchStats { loss: sum / (n * k) as f64, samples: n, correct: 0, judged: 0 }
        }
        Loss::BinaryCrossEntropy => {
            let scale = A::one() / A::from_f64((n * k) as f64);
            let half = A::from_f64(0.5);
            for (e, &z) in out.iter().enumerate() {
                let t: A = target(labels, e / k, e % k);
                sum += (z.max(A::zero()) - z * t + (-z.abs()).exp().ln_1p()).to_f64();
                correct += usize::from((z > A::zero()) == (t >= half));
                if let Some(g) = grad.as_deref_mut() {
                    g[e] = (sigmoid(z) - t) * scale;
                }
            }
            BatchStats { loss: sum / (n * k) as f64, samples: n, correct, judged: n * k }
        }
    }
}

/// The logistic function, computed without overflow for large `|x|`.
pub(crate) fn sigmoid<A: Real>(x: A) -> A {
    if x >= A::zero() {
        A::one() / (A::one() + (-x).exp())
    } else {
        let e = x.exp();
        e / (A::one() + e)
    }
}

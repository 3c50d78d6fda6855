//! Import of Keras models.

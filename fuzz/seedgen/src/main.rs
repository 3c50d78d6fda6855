//! Writes a few valid inputs per fuzz target, and a libFuzzer dictionary for the JSON targets, so that the
//! fuzzers start from inputs that get past the magic numbers and headers:
//! `daig-fuzz-seedgen OUT_DIR REPO_ROOT` fills `OUT_DIR/<target>/` and writes `OUT_DIR/<target>.dict`.
//!
//! Seeds are made with the crate's own writers (`npy::to_vec`, `idx::write_header`, `ShardWriter`) and copied
//! from files the repository keeps for its tests: the frames of every kind (`fuzz/seeds/decode_frame`, kept
//! current by `shared/tests/wire.rs`), NumPy's own `.npy` and `.npz` files (`shared/src/data/testdata`) and the
//! Keras exports (`shared/tests/fixtures/keras`).

use std::io::{Cursor, Write};
use std::path::{Path, PathBuf};

use daig_shared::data::{
    ArrayInfo, ByteOrder, Dtype, LabelRef, ShardHeader, ShardLabels, ShardView, ShardWriter, idx, npy,
};
use daig_shared::model::keras::from_keras_json;
use daig_shared::model::{Loss, Model};
use zip::write::SimpleFileOptions;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

fn main() -> Result<()> {
    let mut args = std::env::args_os().skip(1);
    let (Some(out), Some(repo)) = (args.next(), args.next()) else {
        return Err("usage: daig-fuzz-seedgen OUT_DIR REPO_ROOT".into());
    };
    let (out, repo) = (PathBuf::from(out), PathBuf::from(repo));
    let mut seeds = Seeds { out: out.clone(), count: 0 };

    seeds.copy_dir("decode_frame", &repo.join("fuzz/seeds/decode_frame"), "")?;

    let testdata = repo.join("shared/src/data/testdata");
    seeds.copy_dir("npy", &testdata, ".npy")?;
    seeds.write("npy", "u8_3x2x2.npy", npy::to_vec(&[3, 2, 2], &(0..12u8).collect::<Vec<_>>())?)?;
    seeds.write("npy", "f32_4.npy", npy::to_vec(&[4], &[0.5f32, -1.0, 2.0, 1e-3])?)?;
    seeds.write("npy", "i64_2x3.npy", npy::to_vec(&[2, 3], &[1i64, 2, 3, -4, 5, 1 << 40])?)?;
    let big = ArrayInfo { dtype: Dtype::I16, shape: vec![2, 2], byte_order: ByteOrder::Big };
    let mut bytes = Vec::new();
    npy::write_raw(&mut bytes, &big, &[0, 1, 0, 2, 255, 255, 1, 0])?;
    seeds.write("npy", "i16_be_2x2.npy", bytes)?;

    seeds.copy_dir("npz", &testdata, ".npz")?;
    let x = npy::to_vec(&[4, 2, 2], &(0..16u8).collect::<Vec<_>>())?;
    let y = npy::to_vec(&[4], &[0i64, 1, 2, 1])?;
    let targets = npy::to_vec(&[4, 2], &[0.5f32, 1.0, -1.0, 0.0, 2.0, 3.0, 0.25, 0.75])?;
    seeds.write("npz", "stored.npz", zip_of(&[("x.npy", &x), ("y.npy", &y)], false)?)?;
    seeds.write("npz", "deflated.npz", zip_of(&[("x_train.npy", &x), ("y_train.npy", &y)], true)?)?;
    seeds.write("npz", "targets.npz", zip_of(&[("features.npy", &x), ("targets.npy", &targets)], false)?)?;

    // The first byte picks the options (see fuzz_targets/csv.rs): bit 0 a header row, bits 1-2 the label column
    // (last, by index in bits 3-5, named `label`, named `y`), bits 6-7 the delimiter (`,` `;` tab space).
    seeds.write("csv", "header_last.csv", csv(0b0000_0001, "a,b,label\n1,2,0\n3.5,4,1\n-1e3,0,2\n"))?;
    seeds.write("csv", "named_label.csv", csv(0b0000_0101, "label,x1,x2\n1,0.5,0.25\n0,1,2\n"))?;
    seeds.write("csv", "index_label.csv", csv(0b0000_1010, "1,2,3\n4,5,6\n7,8,9\n"))?;
    seeds.write("csv", "semicolon_float.csv", csv(0b0100_0111, "x;y\n1;0.5\n2;1.5\n"))?;
    seeds.write("csv", "quoted.csv", csv(0b0000_0001, "\u{feff}\"a\",\" b \",label\n\"1\", 2 ,3\n"))?;

    seeds.write("idx", "u8_3x2x2.idx", idx_file(Dtype::U8, &[3, 2, 2], &(0..12u8).collect::<Vec<_>>())?)?;
    seeds.write("idx", "u8_labels_5.idx", idx_file(Dtype::U8, &[5], &[0, 1, 2, 9, 3])?)?;
    let f32_be: Vec<u8> = [1.0f32, -2.5, 0.0, 3.25, 1e-3, 7.0].iter().flat_map(|v| v.to_be_bytes()).collect();
    seeds.write("idx", "f32_2x3.idx", idx_file(Dtype::F32, &[2, 3], &f32_be)?)?;
    let i16_be: Vec<u8> = [-1i16, 300, 7, 0].iter().flat_map(|v| v.to_be_bytes()).collect();
    seeds.write("idx", "i16_4.idx", idx_file(Dtype::I16, &[4], &i16_be)?)?;

    let classes = ShardHeader {
        feature_dtype: Dtype::U8,
        sample_shape: vec![2, 2, 1],
        sample_count: 3,
        labels: ShardLabels::Classes { count: 10 },
    };
    let mut writer = ShardWriter::new(Vec::new(), classes)?;
    for (i, class) in [3u32, 0, 9].into_iter().enumerate() {
        writer.push(&[i as u8, 1, 2, 255], LabelRef::Class(class))?;
    }
    seeds.write("shard", "u8_classes.shard", writer.finish()?)?;
    let values = ShardHeader {
        feature_dtype: Dtype::F32,
        sample_shape: vec![3],
        sample_count: 2,
        labels: ShardLabels::Values { shape: vec![2] },
    };
    let mut writer = ShardWriter::new(Vec::new(), values)?;
    for i in 0..2 {
        let features: Vec<u8> = [i as f32, 0.5, -1.0].iter().flat_map(|v| v.to_le_bytes()).collect();
        writer.push(&features, LabelRef::Values(&[1.0, -0.5]))?;
    }
    seeds.write("shard", "f32_values.shard", writer.finish()?)?;
    for path in seeds.files("shard")? {
        ShardView::decode(&std::fs::read(&path)?).map_err(|e| format!("{}: {e}", path.display()))?;
    }

    for (name, json) in MODELS {
        Model::from_json(json, &Default::default()).map_err(|e| format!("the seed {name} is invalid: {e}"))?;
        seeds.write("model_json", &format!("{name}.json"), json.as_bytes().to_vec())?;
    }
    seeds.write_dict("model_json", MODEL_TOKENS)?;

    // The first byte picks the loss (see fuzz_targets/keras.rs).
    let keras = repo.join("shared/tests/fixtures/keras");
    for path in list(&keras, ".json")? {
        let name = path.file_name().and_then(|n| n.to_str()).ok_or("a fixture name is not UTF-8")?.to_owned();
        let mut bytes = vec![0];
        bytes.extend(std::fs::read(&path)?);
        seeds.write("keras", &name, bytes)?;
    }
    let spec = from_keras_json(KERAS_MLP, Loss::MeanSquaredError).map_err(|e| format!("KERAS_MLP: {e}"))?;
    Model::new(spec, &Default::default()).map_err(|e| format!("KERAS_MLP is invalid: {e}"))?;
    let mut bytes = vec![1];
    bytes.extend_from_slice(KERAS_MLP.as_bytes());
    seeds.write("keras", "mlp_mse.json", bytes)?;
    seeds.write_dict("keras", KERAS_TOKENS)?;

    eprintln!("wrote {} seeds under {}", seeds.count, out.display());
    Ok(())
}

struct Seeds {
    out: PathBuf,
    count: usize,
}

impl Seeds {
    fn write(&mut self, target: &str, name: &str, bytes: Vec<u8>) -> Result<()> {
        let dir = self.out.join(target);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join(name), bytes)?;
        self.count += 1;
        Ok(())
    }

    /// Copies the files of `from` whose names end with `suffix`.
    fn copy_dir(&mut self, target: &str, from: &Path, suffix: &str) -> Result<()> {
        let files = list(from, suffix)?;
        if files.is_empty() {
            return Err(format!("no {suffix} files in {}", from.display()).into());
        }
        for path in files {
            let name = path.file_name().and_then(|n| n.to_str()).ok_or("a seed name is not UTF-8")?.to_owned();
            self.write(target, &name, std::fs::read(&path)?)?;
        }
        Ok(())
    }

    fn files(&self, target: &str) -> Result<Vec<PathBuf>> {
        list(&self.out.join(target), "")
    }

    /// A libFuzzer dictionary: one quoted token a line.
    fn write_dict(&mut self, target: &str, tokens: &[&str]) -> Result<()> {
        let mut text = String::new();
        for token in tokens {
            text.push_str(&format!("\"{}\"\n", token.replace('\\', "\\\\").replace('"', "\\\"")));
        }
        std::fs::write(self.out.join(format!("{target}.dict")), text)?;
        Ok(())
    }
}

fn list(dir: &Path, suffix: &str) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))? {
        let path = entry?.path();
        if path.is_file() && path.to_str().is_some_and(|p| p.ends_with(suffix)) {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

fn zip_of(entries: &[(&str, &[u8])], deflate: bool) -> Result<Vec<u8>> {
    let mut zip = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let method = if deflate { zip::CompressionMethod::Deflated } else { zip::CompressionMethod::Stored };
    for (name, bytes) in entries {
        zip.start_file(*name, SimpleFileOptions::default().compression_method(method))?;
        zip.write_all(bytes)?;
    }
    Ok(zip.finish()?.into_inner())
}

fn csv(options: u8, text: &str) -> Vec<u8> {
    let mut bytes = vec![options];
    bytes.extend_from_slice(text.as_bytes());
    bytes
}

fn idx_file(dtype: Dtype, shape: &[usize], big_endian: &[u8]) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    idx::write_header(&mut bytes, &ArrayInfo { dtype, shape: shape.to_vec(), byte_order: ByteOrder::Big })?;
    bytes.extend_from_slice(big_endian);
    Ok(bytes)
}

/// Valid DAIG JSON specs (as in `shared/tests/model.rs`), every layer type among them.
const MODELS: &[(&str, &str)] = &[
    (
        "mlp",
        r#"{"input_shape": [784], "layers": [{"type": "dense", "units": 128, "activation": "relu"},
            {"type": "dense", "units": 10}], "loss": "cross_entropy"}"#,
    ),
    (
        "convnet",
        r#"{"input_shape": [28, 28, 1], "layers": [
            {"type": "conv2d", "filters": 8, "kernel_size": 3, "strides": 2, "padding": "same", "activation": "relu"},
            {"type": "conv2d", "filters": 4, "kernel_size": [3, 5]},
            {"type": "max_pool2d", "pool_size": 2},
            {"type": "avg_pool2d", "pool_size": 3, "strides": 1},
            {"type": "flatten"},
            {"type": "dropout", "rate": 0.25},
            {"type": "dense", "units": 10, "activation": "softmax"}
        ], "loss": "cross_entropy"}"#,
    ),
    (
        "regression",
        r#"{"input_shape": [5, 5, 2], "layers": [
            {"type": "conv2d", "filters": 1, "kernel_size": 4, "padding": "same", "activation": "tanh"},
            {"type": "flatten"}, {"type": "activation", "activation": "sigmoid"}
        ], "loss": "mean_squared_error"}"#,
    ),
    (
        "binary",
        r#"{"input_shape": [3], "layers": [{"type": "dense", "units": 1, "activation": "sigmoid"}],
            "loss": "binary_cross_entropy"}"#,
    ),
];

const MODEL_TOKENS: &[&str] = &[
    "\"input_shape\"",
    "\"layers\"",
    "\"loss\"",
    "\"type\"",
    "\"dense\"",
    "\"conv2d\"",
    "\"max_pool2d\"",
    "\"avg_pool2d\"",
    "\"flatten\"",
    "\"dropout\"",
    "\"activation\"",
    "\"units\"",
    "\"filters\"",
    "\"kernel_size\"",
    "\"strides\"",
    "\"padding\"",
    "\"pool_size\"",
    "\"rate\"",
    "\"same\"",
    "\"valid\"",
    "\"linear\"",
    "\"relu\"",
    "\"sigmoid\"",
    "\"tanh\"",
    "\"softmax\"",
    "\"cross_entropy\"",
    "\"mean_squared_error\"",
    "\"binary_cross_entropy\"",
    "null",
    "true",
    "false",
    "[1, 1]",
    "4294967296",
    "18446744073709551615",
    "1e309",
    "-0",
];

/// A Keras 2 `Sequential` MLP with the input shape on its first layer.
const KERAS_MLP: &str = r#"{"class_name": "Sequential", "config": {"name": "mlp", "layers": [
    {"class_name": "Dense", "config": {"units": 16, "activation": "relu", "batch_input_shape": [null, 8],
     "use_bias": true}},
    {"class_name": "Activation", "config": {"activation": "tanh"}},
    {"class_name": "Dropout", "config": {"rate": 0.5}},
    {"class_name": "Dense", "config": {"units": 1, "activation": "linear"}}]}}"#;

const KERAS_TOKENS: &[&str] = &[
    "\"class_name\"",
    "\"config\"",
    "\"layers\"",
    "\"Sequential\"",
    "\"InputLayer\"",
    "\"Dense\"",
    "\"Conv2D\"",
    "\"MaxPooling2D\"",
    "\"AveragePooling2D\"",
    "\"Flatten\"",
    "\"Dropout\"",
    "\"Activation\"",
    "\"batch_input_shape\"",
    "\"batch_shape\"",
    "\"input_shape\"",
    "\"build_input_shape\"",
    "\"build_config\"",
    "\"units\"",
    "\"filters\"",
    "\"kernel_size\"",
    "\"strides\"",
    "\"padding\"",
    "\"pool_size\"",
    "\"rate\"",
    "\"activation\"",
    "\"use_bias\"",
    "\"data_format\"",
    "\"channels_last\"",
    "\"channels_first\"",
    "\"dilation_rate\"",
    "\"groups\"",
    "\"kernel_regularizer\"",
    "\"bias_constraint\"",
    "\"same\"",
    "\"valid\"",
    "\"relu\"",
    "\"softmax\"",
    "\"sigmoid\"",
    "\"tanh\"",
    "\"linear\"",
    "null",
    "true",
    "false",
    "[null, 28, 28, 1]",
];

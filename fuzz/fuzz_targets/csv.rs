//! CSV files, with the options picked by the first input byte (header row, label column, delimiter).
//!
//! What reads must be `rows x (columns - 1)` finite `f32` features, exactly that many bytes of them, and one
//! finite label per row (`int64` only when every label is a whole number).

#![no_main]

use daig_shared::data::csv::{self, CsvOptions, LabelColumn};
use daig_shared::data::{ByteOrder, Dtype};
use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;

fuzz_target!(|input: &[u8]| {
    let Some((&choice, data)) = input.split_first() else { return };
    let label = match (choice >> 1) & 3 {
        0 => LabelColumn::Last,
        1 => LabelColumn::Index(usize::from((choice >> 3) & 7)),
        2 => LabelColumn::Name("label".into()),
        _ => LabelColumn::Name("y".into()),
    };
    let delimiter = b",;\t "[usize::from(choice >> 6)];
    let options = CsvOptions { has_header: choice & 1 == 1, label, delimiter };
    let limits = common::limits();
    let mut features = Vec::new();
    let Ok(csv) = csv::read(data, &options, &mut features, &limits) else { return };

    let info = &csv.features;
    common::check_info(info, &limits);
    let [rows, columns] = info.shape[..] else { panic!("features of shape {:?}", info.shape) };
    assert!(rows >= 1 && columns >= 1, "features of shape {rows}x{columns}");
    assert_eq!((info.dtype, info.byte_order), (Dtype::F32, ByteOrder::Little));
    assert_eq!(features.len(), rows * columns * 4, "the features written do not match their shape");
    assert!(features.chunks_exact(4).all(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]).is_finite()));
    assert_eq!(csv.feature_names.len(), columns);

    common::check_raw(&csv.labels, &limits);
    assert_eq!(csv.labels.info.shape, [rows]);
    assert_eq!(csv.labels.info.byte_order, ByteOrder::Little);
    let labels = csv.labels.data.chunks_exact(8).map(|b| <[u8; 8]>::try_from(b).expect("8 bytes"));
    match csv.labels.info.dtype {
        Dtype::I64 => labels.for_each(|b| assert!(i64::from_le_bytes(b).unsigned_abs() < 1 << 53)),
        Dtype::F64 => {
            let values: Vec<f64> = labels.map(f64::from_le_bytes).collect();
            assert!(values.iter().all(|v| v.is_finite()));
            assert!(values.iter().any(|v| v.fract() != 0.0 || v.abs() >= 9.0e15), "whole labels read as float64");
        }
        other => panic!("labels of dtype {other}"),
    }
});

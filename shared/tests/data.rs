//! Tests of `daig_shared::data`: the readers on fixtures written by NumPy (`shared/src/data/testdata`, made by
//! its `generate.py`) and on the real MNIST subset in `shared/data/mnist-8k`, the checks against the model,
//! normalisation, the shard format, and sharding within a memory bound.

use std::collections::HashSet;
use std::io::{Cursor, Write};
use std::path::PathBuf;

use daig_shared::data::csv::{CsvOptions, LabelColumn};
use daig_shared::data::npz::NpzArchive;
use daig_shared::data::{
    ArrayInfo, ByteOrder, DataError, DataRequirements, Dtype, LabelRef, LabelRequirement, Labels, Limits,
    Normalization, RawArray, RunningStats, SampleSource, ShardHeader, ShardLabel, ShardLabels, ShardPlan, ShardRole,
    ShardView, ShardWriter, check, idx, npy, permutation, shard_dataset, shard_dataset_into, split, to_f32,
};
use expect_test::{Expect, expect};

fn fixture(name: &str) -> Vec<u8> {
    let path = manifest_dir().join("src/data/testdata").join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// `shared/data/mnist-8k`, found from the workspace upwards: beside the workspace in CI, in a parent for a
/// worktree.
fn mnist_dir() -> PathBuf {
    manifest_dir()
        .ancestors()
        .map(|a| a.join("shared/data/mnist-8k"))
        .find(|p| p.join("images.npy").is_file())
        .expect("shared/data/mnist-8k/images.npy not found above the crate")
}

fn err_text<T: std::fmt::Debug>(r: Result<T, DataError>) -> String {
    match r {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(e) => e.to_string(),
    }
}

fn check_err<T: std::fmt::Debug>(r: Result<T, DataError>, expected: Expect) {
    expected.assert_eq(&err_text(r));
}

fn npy_bytes(info: &ArrayInfo, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    npy::write_raw(&mut out, info, data).unwrap();
    out
}

fn all_samples_f32<R: std::io::Read + std::io::Seek>(source: &mut SampleSource<R>) -> Vec<f32> {
    let info = source.info().clone();
    let mut raw = vec![0u8; source.sample_bytes() * info.len()];
    source.read_samples_le(0, &mut raw).unwrap();
    let mut out = vec![0f32; raw.len() / info.dtype.size()];
    to_f32(info.dtype, &raw, &Normalization::None, &mut out).unwrap();
    out
}

// ---- .npy ----

#[test]
fn npy_reads_every_dtype_in_both_byte_orders() {
    let cases = [
        ("u8", Dtype::U8),
        ("i8", Dtype::I8),
        ("u16", Dtype::U16),
        ("i16", Dtype::I16),
        ("i32", Dtype::I32),
        ("i64", Dtype::I64),
        ("f32", Dtype::F32),
        ("f64", Dtype::F64),
    ];
    let base = [0.0f32, 1.0, 2.0, 3.0, 100.0, 127.0];
    for (name, dtype) in cases {
        let factor = match name {
            "u8" | "u16" => 1.0,
            _ if dtype.is_integer() => -1.0,
            _ => 1.5,
        };
        let expected: Vec<f32> = base.iter().map(|v| v * factor).collect();
        let orders: &[(&str, ByteOrder)] = if dtype.size() == 1 {
            &[("le", ByteOrder::Little)]
        } else {
            &[("le", ByteOrder::Little), ("be", ByteOrder::Big)]
        };
        for &(tag, order) in orders {
            let file = format!("{name}_{tag}.npy");
            let mut source = SampleSource::npy(Cursor::new(fixture(&file)), &Limits::default()).unwrap();
            assert_eq!(source.info(), &ArrayInfo { dtype, shape: vec![2, 3], byte_order: order }, "{file}");
            assert_eq!(source.info().sample_shape(), &[3]);
            assert_eq!(source.info().len(), 2);
            assert_eq!(all_samples_f32(&mut source), expected, "{file}");
            let whole = npy::read(Cursor::new(fixture(&file)), &Limits::default()).unwrap();
            assert_eq!(whole.data.len(), 6 * dtype.size());
        }
    }
}

#[test]
fn npy_reads_version_2_and_3_headers() {
    for file in ["f32_v2.npy", "f32_v3.npy"] {
        let header = npy::read_header(&mut Cursor::new(fixture(file)), &Limits::default()).unwrap();
        assert_eq!(header.version.0, if file.contains("v2") { 2 } else { 3 });
        let mut source = SampleSource::npy(Cursor::new(fixture(file)), &Limits::default()).unwrap();
        assert_eq!(all_samples_f32(&mut source), [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);
    }
}

#[test]
fn npy_written_headers_read_back() {
    for shape in [vec![5], vec![2, 3], vec![1, 28, 28, 1]] {
        let info = ArrayInfo { dtype: Dtype::I16, shape, byte_order: ByteOrder::Big };
        let data = vec![7u8; usize::try_from(info.byte_len().unwrap()).unwrap()];
        let bytes = npy_bytes(&info, &data);
        let header = npy::read_header(&mut Cursor::new(&bytes), &Limits::default()).unwrap();
        assert_eq!(header.info, info);
        assert_eq!(header.data_offset % 64, 0);
    }
}

/// `npy::write` of `values`, read back by `npy::read`: the dtype, shape, little-endian bytes and file length.
fn npy_round_trip<T: npy::Element + std::fmt::Debug>(shape: &[usize], values: &[T], le: impl Fn(&T) -> Vec<u8>) {
    let bytes = npy::to_vec(shape, values).unwrap();
    let mut written = Vec::new();
    assert_eq!(npy::write(&mut written, shape, values).unwrap(), bytes.len() as u64);
    assert_eq!(written, bytes);
    let array = npy::read(Cursor::new(&bytes), &Limits::default()).unwrap();
    assert_eq!(array.info, ArrayInfo { dtype: T::DTYPE, shape: shape.to_vec(), byte_order: ByteOrder::Little });
    assert_eq!(array.data, values.iter().flat_map(le).collect::<Vec<u8>>(), "{values:?}");
    let header = npy::read_header(&mut Cursor::new(&bytes), &Limits::default()).unwrap();
    assert_eq!(header.data_offset % 64, 0);
    assert_eq!(bytes.len() as u64, header.data_offset + array.data.len() as u64);
}

#[test]
fn npy_writes_every_dtype_and_reads_it_back() {
    npy_round_trip(&[2, 3], &[0u8, 1, 2, 127, 128, 255], |v| v.to_le_bytes().to_vec());
    npy_round_trip(&[4], &[i8::MIN, -1, 0, i8::MAX], |v| v.to_le_bytes().to_vec());
    npy_round_trip(&[3], &[0u16, 258, u16::MAX], |v| v.to_le_bytes().to_vec());
    npy_round_trip(&[3, 1], &[i16::MIN, -2, i16::MAX], |v| v.to_le_bytes().to_vec());
    npy_round_trip(&[1, 3], &[i32::MIN, -3, i32::MAX], |v| v.to_le_bytes().to_vec());
    npy_round_trip(&[5], &[i64::MIN, -1, 0, 9, i64::MAX], |v| v.to_le_bytes().to_vec());
    npy_round_trip(&[2, 2, 1], &[0.0f32, -1.5, f32::MAX, f32::MIN_POSITIVE], |v| v.to_le_bytes().to_vec());
    npy_round_trip(&[2], &[std::f64::consts::PI, -0.0], |v| v.to_le_bytes().to_vec());
    npy_round_trip::<f32>(&[0, 4], &[], |v| v.to_le_bytes().to_vec());
    // Converted as a reader of any dtype converts it.
    let bytes = npy::to_vec(&[2, 2], &[1.0f32, 2.0, -3.0, 0.5]).unwrap();
    let mut source = SampleSource::npy(Cursor::new(bytes), &Limits::default()).unwrap();
    assert_eq!(all_samples_f32(&mut source), [1.0, 2.0, -3.0, 0.5]);
}

#[test]
fn npy_writes_raw_elements_in_their_byte_order() {
    let info = ArrayInfo { dtype: Dtype::I32, shape: vec![2], byte_order: ByteOrder::Big };
    let data: Vec<u8> = [1i32, -2].iter().flat_map(|v| v.to_be_bytes()).collect();
    let bytes = npy_bytes(&info, &data);
    let array = npy::read(Cursor::new(&bytes), &Limits::default()).unwrap();
    assert_eq!((array.info, array.data), (info, data));
}

#[test]
fn npy_writer_refuses_a_shape_that_does_not_hold_the_data() {
    let mut out = Vec::new();
    check_err(
        npy::write(&mut out, &[2, 3], &[0f32; 5]),
        expect![[r#"not a valid .npy file: the shape 2x3 holds 6 elements, not the 5 given"#]],
    );
    check_err(
        npy::to_vec(&[usize::MAX, 2], &[0u8]),
        expect![[r#"the shape 18446744073709551615x2 is too large to address: its size overflows 64 bits"#]],
    );
    let info = ArrayInfo { dtype: Dtype::I16, shape: vec![2], byte_order: ByteOrder::Little };
    check_err(
        npy::write_raw(&mut out, &info, &[0; 3]),
        expect![[r#"not a valid .npy file: the shape 2 holds 2 elements, not the 1 given"#]],
    );
    check_err(
        npy::write_raw(&mut out, &info, &[0; 5]),
        expect![[r#"not a valid .npy file: 5 bytes are not a whole number of int16 elements"#]],
    );
    assert!(out.is_empty(), "nothing is written before the check");
}

#[test]
fn npy_refuses_pickles_and_object_arrays() {
    let limits = Limits::default();
    check_err(
        SampleSource::npy(Cursor::new(fixture("object.npy")), &limits),
        expect![[
            r#"pickled/object arrays are refused: loading a pickle lets an upload run code (the array has dtype '|O' (Python objects)); save plain numeric arrays, e.g. np.save(path, x.astype(np.float32))"#
        ]],
    );
    check_err(
        npy::read(Cursor::new(fixture("pickle.npy")), &limits),
        expect![[
            r#"pickled/object arrays are refused: loading a pickle lets an upload run code (the file starts with the pickle opcode 0x80, not the .npy magic); save plain numeric arrays, e.g. np.save(path, x.astype(np.float32))"#
        ]],
    );
    check_err(
        NpzArchive::new(Cursor::new(fixture("object.npz")), &limits).unwrap().read_array("y"),
        expect![[
            r#"pickled/object arrays are refused: loading a pickle lets an upload run code (the entry 'y.npy': the array has dtype '|O' (Python objects)); save plain numeric arrays, e.g. np.save(path, x.astype(np.float32))"#
        ]],
    );
    check_err(
        idx::read(Cursor::new(fixture("pickle.npy")), &limits),
        expect![[
            r#"pickled/object arrays are refused: loading a pickle lets an upload run code (the file starts with the pickle opcode 0x80, not the IDX magic); save plain numeric arrays, e.g. np.save(path, x.astype(np.float32))"#
        ]],
    );
}

#[test]
fn npy_refuses_what_it_does_not_read() {
    let limits = Limits::default();
    check_err(
        SampleSource::npy(Cursor::new(fixture("fortran.npy")), &limits),
        expect![[
            r#"unsupported .npy data: the array is in Fortran order; save it in C order, e.g. np.save(path, np.ascontiguousarray(x))"#
        ]],
    );
    check_err(
        SampleSource::npy(Cursor::new(fixture("complex.npy")), &limits),
        expect![[
            r#"unsupported .npy data: dtype '<c8' is not read; use one of uint8, int8, uint16, int16, int32, int64, float32, float64"#
        ]],
    );
}

/// A `.npy` file whose header dict is `dict`, version 1.0.
fn npy_with_dict(dict: &str) -> Vec<u8> {
    let mut bytes = npy::MAGIC.to_vec();
    bytes.extend_from_slice(&[1, 0]);
    bytes.extend_from_slice(&u16::try_from(dict.len()).unwrap().to_le_bytes());
    bytes.extend_from_slice(dict.as_bytes());
    bytes
}

#[test]
fn npy_malformed_headers_are_explained() {
    let limits = Limits::default();
    let read = |bytes: Vec<u8>| SampleSource::npy(Cursor::new(bytes), &limits);
    check_err(
        read(b"hello world".to_vec()),
        expect![[r#"not a valid .npy file: it does not start with the .npy magic \x93NUMPY"#]],
    );
    check_err(
        read(b"\x93NUM".to_vec()),
        expect!["the data is truncated: the .npy magic and version needs 8 bytes but the input has 4"],
    );
    check_err(
        read(npy_with_dict("{'descr': '<f4', 'fortran_order': False}")),
        expect![[r#"not a valid .npy file: the header has no 'shape'"#]],
    );
    check_err(
        read(npy_with_dict("{'descr': '<f4', 'descr': '<f4', 'fortran_order': False, 'shape': (1,)}")),
        expect![[r#"not a valid .npy file: the header has the key 'descr' twice"#]],
    );
    check_err(
        read(npy_with_dict("{'descr': '<f4', 'fortran_order': False, 'shape': (1,), 'x': 1}")),
        expect![[r#"not a valid .npy file: unexpected key 'x' in the header"#]],
    );
    check_err(
        read(npy_with_dict("{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (1,)}")),
        expect![[
            r#"unsupported .npy data: the array has a structured dtype (a list of fields); save one plain numeric array per name"#
        ]],
    );
    check_err(
        read(npy_with_dict("{'descr': '<f4', 'fortran_order': False, 'shape': (-1,)}")),
        expect!["not a valid .npy file: expected a non-negative integer in 'shape' at byte 51 of the header dict"],
    );
    check_err(
        read(npy_with_dict("{'descr': '<f4', 'fortran_order': __import__('os'), 'shape': (1,)}")),
        expect![[r#"not a valid .npy file: 'fortran_order' is not True or False"#]],
    );
    check_err(
        read(npy_with_dict("{'descr': '<i4', 'fortran_order': False, 'shape': ()}")),
        expect![[
            r#"not a valid .npy file: the array is a scalar (shape ()); a dataset needs the samples along a first axis"#
        ]],
    );
    check_err(
        read(npy_with_dict("{'descr': '<i4', 'fortran_order': False, 'shape': (2, 3)}")),
        expect![[r#"the data is truncated: .npy data (int32 of shape 2x3) needs 24 bytes but the input has 0"#]],
    );
    let mut long = npy::MAGIC.to_vec();
    long.extend_from_slice(&[2, 0]);
    long.extend_from_slice(&u32::MAX.to_le_bytes());
    check_err(read(long), expect![[r#"the .npy header is too large: 4294967295 bytes, the limit is 65536"#]]);
    let mut trailing = fixture("u8_le.npy");
    trailing.push(0);
    check_err(
        read(trailing),
        expect![[
            r#".npy data (uint8 of shape 2x3) is followed by 1 unexpected bytes; is the dtype or shape in the header wrong?"#
        ]],
    );
    let mut truncated = fixture("f64_le.npy");
    truncated.truncate(truncated.len() - 3);
    check_err(
        npy::read(Cursor::new(truncated), &limits),
        expect![[r#"the data is truncated: the float64 array of shape 2x3 needs 48 bytes but the input has 45"#]],
    );
}

#[test]
fn npy_huge_declared_shapes_are_refused_before_allocating() {
    let limits = Limits::default();
    let read = |dict: &str| npy::read(Cursor::new(npy_with_dict(dict)), &limits);
    check_err(
        read("{'descr': '<f8', 'fortran_order': False, 'shape': (1000000000000, 1000000000000)}"),
        expect![[r#"the shape 1000000000000x1000000000000 is too large to address: its size overflows 64 bits"#]],
    );
    check_err(
        read("{'descr': '<f8', 'fortran_order': False, 'shape': (99999999999999999999,)}"),
        expect![[r#"not a valid .npy file: a dimension in 'shape' does not fit in 64 bits"#]],
    );
    check_err(
        read("{'descr': '|u1', 'fortran_order': False, 'shape': (1000000, 1000000)}"),
        expect![[
            r#"a uint8 array of shape 1000000x1000000 is too large: 1000000000000 bytes, the limit is 68719476736"#
        ]],
    );
    check_err(
        read("{'descr': '|u1', 'fortran_order': False, 'shape': (1000000000,)}"),
        expect![[
            r#"a uint8 array of shape 1000000000 read into memory is too large: 1000000000 bytes, the limit is 536870912"#
        ]],
    );
    // Within every limit but absent from the input: a seekable source compares with the real length, a stream
    // reads what is there and stops.
    let dict = "{'descr': '|u1', 'fortran_order': False, 'shape': (400000000,)}";
    check_err(
        SampleSource::npy(Cursor::new(npy_with_dict(dict)), &limits),
        expect![[
            r#"the data is truncated: .npy data (uint8 of shape 400000000) needs 400000000 bytes but the input has 0"#
        ]],
    );
    check_err(
        read(dict),
        expect![[
            r#"the data is truncated: the uint8 array of shape 400000000 needs 400000000 bytes but the input has 0"#
        ]],
    );
    let small = Limits { max_array_bytes: 1000, ..Limits::default() };
    check_err(
        SampleSource::npy(Cursor::new(fixture("f64_le.npy")), &Limits { max_array_bytes: 40, ..small }),
        expect![[r#"a float64 array of shape 2x3 is too large: 48 bytes, the limit is 40"#]],
    );
}

// ---- .npz ----

#[test]
fn npz_reads_stored_entries_in_place_and_spools_deflated_ones() {
    let limits = Limits::default();
    let expected_x: Vec<f32> = (0..16).map(|v| v as f32).collect();
    for (file, stored) in [("stored.npz", true), ("deflated.npz", false)] {
        let mut archive = NpzArchive::new(Cursor::new(fixture(file)), &limits).unwrap();
        assert_eq!(archive.names(), ["x", "y"]);
        assert_eq!(archive.find(&daig_shared::data::npz::FEATURE_NAMES).unwrap(), "x");
        assert_eq!(archive.find(&daig_shared::data::npz::LABEL_NAMES).unwrap(), "y");
        let entry = archive.entry("x").unwrap();
        assert_eq!(entry.stored, stored);
        assert_eq!(entry.info.shape, [4, 2, 2]);
        let y = archive.read_array("y").unwrap();
        assert_eq!(y.info.dtype, Dtype::I64);
        let labels = Labels::from_array(&y, &LabelRequirement::Classes { count: 3 }).unwrap();
        assert_eq!(labels, Labels::Classes { count: 3, values: vec![0, 1, 2, 1] });

        let mut spooled = tempfile::tempfile().unwrap();
        let info = archive.spool("x", &mut spooled).unwrap();
        let mut source = SampleSource::raw(spooled, info, 0, &limits).unwrap();
        assert_eq!(all_samples_f32(&mut source), expected_x, "{file} spooled");

        if stored {
            let mut source = archive.into_sample_source("x").unwrap();
            assert_eq!(all_samples_f32(&mut source), expected_x);
        } else {
            check_err(
                archive.into_sample_source("x"),
                expect![[
                    r#"unsupported .npz data: the array 'x' is compressed, so it cannot be read in place; spool it first"#
                ]],
            );
        }
    }
    let archive = NpzArchive::new(Cursor::new(fixture("stored.npz")), &limits).unwrap();
    check_err(archive.find(&["images"]), expect![[r#"the .npz has no array named 'images'; it has 'x', 'y'"#]]);
    check_err(
        NpzArchive::new(Cursor::new(fixture("u8_le.npy")), &limits),
        expect!["not a valid .npz file: the zip archive is unreadable: invalid Zip archive: Could not find EOCD"],
    );
}

// ---- CSV ----

const CSV: &str = "age,height,label\n30,1.80,1\n41,1.65,0\n25, 1.70 ,2\n";

fn read_csv(text: &str, options: &CsvOptions) -> Result<(daig_shared::data::csv::CsvData, Vec<f32>), DataError> {
    let mut out = Vec::new();
    let data = daig_shared::data::csv::read(text.as_bytes(), options, &mut out, &Limits::default())?;
    let mut source = SampleSource::raw(Cursor::new(out), data.features.clone(), 0, &Limits::default())?;
    let features = all_samples_f32(&mut source);
    Ok((data, features))
}

#[test]
fn csv_reads_labels_by_name_index_or_last() {
    let by_name = CsvOptions { label: LabelColumn::Name("label".into()), ..CsvOptions::default() };
    let (data, features) = read_csv(CSV, &by_name).unwrap();
    assert_eq!(data.features.shape, [3, 2]);
    assert_eq!(data.feature_names, ["1 ('age')", "2 ('height')"]);
    assert_eq!(features, [30.0, 1.8, 41.0, 1.65, 25.0, 1.7]);
    assert_eq!(data.labels.info.dtype, Dtype::I64);
    let labels = Labels::from_array(&data.labels, &LabelRequirement::Classes { count: 3 }).unwrap();
    assert_eq!(labels, Labels::Classes { count: 3, values: vec![1, 0, 2] });

    let (last, _) = read_csv(CSV, &CsvOptions::default()).unwrap();
    assert_eq!(last, data);
    let (with_bom, _) = read_csv(&format!("\u{feff}{CSV}"), &by_name).unwrap();
    assert_eq!(with_bom, data);

    let no_header = CsvOptions { has_header: false, label: LabelColumn::Index(0), delimiter: b';' };
    let (data, features) = read_csv("0.5;1;2\n1.5;3;4\n", &no_header).unwrap();
    assert_eq!(features, [1.0, 2.0, 3.0, 4.0]);
    assert_eq!(data.labels.info.dtype, Dtype::F64);
    let labels = Labels::from_array(&data.labels, &LabelRequirement::Values { shape: vec![1] }).unwrap();
    assert_eq!(labels, Labels::Values { shape: vec![1], values: vec![0.5, 1.5] });
}

#[test]
fn csv_errors_name_the_row_and_column() {
    let options = CsvOptions::default();
    check_err(
        read_csv("a,b,label\n1,2,0\n3,x7,1\n", &options),
        expect![[r#"CSV row 3, column 2 ('b'): 'x7' is not a finite number"#]],
    );
    check_err(
        read_csv("a,b,label\n1,2,0\n3,1\n", &options),
        expect![[r#"CSV row 3: the row has 2 fields but the header has 3"#]],
    );
    check_err(
        read_csv("1,2,0\n3,4\n", &CsvOptions { has_header: false, ..options.clone() }),
        expect![[r#"CSV row 2: the row has 2 fields but the first row has 3"#]],
    );
    check_err(
        read_csv("a,b,label\n1,nan,0\n", &options),
        expect![[r#"CSV row 2, column 2 ('b'): 'nan' is not a finite number"#]],
    );
    check_err(
        read_csv("a,b,label\n1,2,cat\n", &options),
        expect![[r#"CSV row 2, column 3 ('label'): 'cat' is not a finite number"#]],
    );
    check_err(
        read_csv(CSV, &CsvOptions { label: LabelColumn::Name("y".into()), ..options.clone() }),
        expect![[r#"the CSV has no column named 'y'; its columns are 'age', 'height', 'label'"#]],
    );
    check_err(
        read_csv(CSV, &CsvOptions { label: LabelColumn::Index(3), ..options.clone() }),
        expect![[r#"invalid option: the label column index 3 (from 0) is past the CSV's 3 columns"#]],
    );
    check_err(read_csv("a,b,label\n", &options), expect![[r#"not a valid CSV file: the file has no data rows"#]]);
}

/// An input that yields `prefix` and then `len` copies of `fill`, never holding more than one read's worth, and
/// counts what it handed out.
struct Endless<'a> {
    prefix: &'a [u8],
    fill: u8,
    len: u64,
    given: u64,
}

impl std::io::Read for Endless<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let total = self.prefix.len() as u64 + self.len;
        let mut n = 0;
        while n < buf.len() && self.given < total {
            buf[n] = self.prefix.get(self.given as usize).copied().unwrap_or(self.fill);
            n += 1;
            self.given += 1;
        }
        Ok(n)
    }
}

#[test]
fn csv_long_records_are_refused_before_they_are_held() {
    let limits = Limits { max_record_bytes: daig_shared::data::csv::record_bytes_for(2), ..Limits::default() };
    let bound = limits.max_record_bytes + daig_shared::data::csv::READ_BUFFER_BYTES as u64;
    let long = 20 << 20;
    // A long number, a long header name, an open quote swallowing the file, a wrong delimiter: each a record of
    // 20 MiB on line 1 or 3.
    let cases: [(&[u8], u8, u64); 4] = [
        (b"a,b,label\n1,2,0\n1,2,", b'7', 3),
        (b"a,b,", b'x', 1),
        (b"a,b,label\n1,2,0\n\"", b'\n', 3),
        (b"a;b;label\n", b';', 2),
    ];
    for (prefix, fill, line) in cases {
        let mut input = Endless { prefix, fill, len: long, given: 0 };
        let mut out = Vec::new();
        let err = daig_shared::data::csv::read(&mut input, &CsvOptions::default(), &mut out, &limits).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "CSV row {line}: the record is longer than 770 bytes, the most a row of this model's columns may \
                 take; is the delimiter right, or is a quote left open?"
            ),
            "{:?}",
            String::from_utf8_lossy(prefix)
        );
        assert!(input.given <= prefix.len() as u64 + bound, "read {} bytes of a {long}-byte record", input.given);
    }
    // Records within the bound are read.
    let fine = format!("a,b,label\n{},2,0\n", "0".repeat(700));
    let mut out = Vec::new();
    daig_shared::data::csv::read(fine.as_bytes(), &CsvOptions::default(), &mut out, &limits).unwrap();
}

#[test]
fn csv_features_stop_at_the_array_limit() {
    let limits = Limits { max_array_bytes: 80, ..Limits::default() };
    let text: String =
        std::iter::once("a,b,label\n".to_owned()).chain((0..100).map(|i| format!("{i},{i},0\n"))).collect();
    let mut out = Vec::new();
    check_err(
        daig_shared::data::csv::read(text.as_bytes(), &CsvOptions::default(), &mut out, &limits),
        expect!["the CSV, as float32 features up to row 12, is too large: 88 bytes, the limit is 80"],
    );
    assert!(out.len() <= 80, "{} bytes written", out.len());
}

/// A zip with one deflated entry `name` holding `bytes`, whose directory then says `declared` bytes instead of
/// the real size when given (a lying directory: both the local header and the central directory are patched).
fn deflated_zip(name: &str, bytes: &[u8], declared: Option<u32>) -> Vec<u8> {
    let mut zip = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
    zip.start_file(name, options).unwrap();
    zip.write_all(bytes).unwrap();
    let mut out = zip.finish().unwrap().into_inner();
    if let Some(declared) = declared {
        let real = u32::try_from(bytes.len()).unwrap().to_le_bytes();
        // The uncompressed size sits 22 bytes into a local header and 24 into a central directory header.
        for (signature, at) in [(b"PK\x03\x04", 22), (b"PK\x01\x02", 24)] {
            let start = out.windows(4).position(|w| w == signature).unwrap() + at;
            assert_eq!(out[start..start + 4], real);
            out[start..start + 4].copy_from_slice(&declared.to_le_bytes());
        }
    }
    out
}

/// A `.npy` header declaring `shape` of `descr` with no data after it.
fn npy_header_only(descr: &str, shape: &str) -> Vec<u8> {
    npy_with_dict(&format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}"))
}

#[test]
fn npz_bombs_are_refused_before_their_bodies_are_inflated() {
    let limits = Limits { max_array_bytes: 1 << 20, ..Limits::default() };
    let zeros = vec![0u8; 4 << 20];
    // A header declaring far more than the limit, with data behind it to match.
    let mut huge = npy_header_only("<f4", "(262144, 4)");
    huge.extend_from_slice(&zeros[..4 << 20]);
    let mut archive = NpzArchive::new(Cursor::new(deflated_zip("x.npy", &huge, None)), &Limits::default()).unwrap();
    check_err(
        NpzArchive::new(Cursor::new(deflated_zip("x.npy", &huge, None)), &limits).map(drop),
        expect![
            "the entry 'x.npy' as the archive's directory declares it is too large: 4194378 bytes, the limit is 1114124"
        ],
    );
    assert_eq!(archive.entry("x").unwrap().info.shape, [262144, 4]);

    // A header that declares a small array but whose entry inflates far past it: the directory, told the truth,
    // disagrees with the header; told a lie, the stream is cut where the header ends.
    let mut lying = npy_header_only("<f4", "(4, 4)");
    lying.extend_from_slice(&zeros[..1 << 20]);
    let mut archive = NpzArchive::new(Cursor::new(deflated_zip("x.npy", &lying, None)), &limits).unwrap();
    check_err(
        archive.entry("x"),
        expect![
            "the array 'x' (float32 of shape 4x4) is followed by 1048512 unexpected bytes; is the dtype or shape in the header wrong?"
        ],
    );
    let header_and_data = u32::try_from(lying.len() - (1 << 20) + 64).unwrap();
    let mut archive =
        NpzArchive::new(Cursor::new(deflated_zip("x.npy", &lying, Some(header_and_data))), &limits).unwrap();
    assert_eq!(archive.entry("x").unwrap().info.shape, [4, 4]);
    let mut out = Vec::new();
    let err = err_text(archive.spool("x", &mut out));
    assert!(err.starts_with("not a valid .npz file: the entry 'x.npy'"), "{err}");
    assert!(out.len() <= 64, "{} bytes spooled", out.len());
    let err = err_text(archive.read_array("x"));
    assert!(err.starts_with("not a valid .npz file: the entry 'x.npy'"), "{err}");

    // A directory that declares more than the header and data: refused before the body is read.
    let mut short = npy_header_only("<f4", "(4, 4)");
    short.extend_from_slice(&zeros[..64]);
    let mut archive = NpzArchive::new(Cursor::new(deflated_zip("x.npy", &short, Some(900_000))), &limits).unwrap();
    let err = err_text(archive.entry("x"));
    assert!(err.contains("followed by"), "{err}");
}

#[test]
fn headers_are_checked_against_the_model_alone() {
    let req = classes(3, &[4]);
    daig_shared::data::check_features(&info(Dtype::F32, &[10, 4]), &req).unwrap();
    check_err(
        daig_shared::data::check_features(&info(Dtype::F32, &[10, 5]), &req),
        expect![
            "the data does not fit the model: the features have sample shape 5 (5 values) but the model's input is 4 (4 values)"
        ],
    );
    daig_shared::data::check_labels(&info(Dtype::I64, &[10]), &req).unwrap();
    check_err(
        daig_shared::data::check_labels(&info(Dtype::F32, &[10]), &req),
        expect![
            "the data does not fit the model: the model's loss needs integer class labels (0 to 2) but these are float32; convert them, e.g. y.astype(np.int64)"
        ],
    );
}

// ---- IDX ----

fn idx_bytes(dtype: Dtype, shape: &[usize], data_be: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    idx::write_header(&mut out, &ArrayInfo { dtype, shape: shape.to_vec(), byte_order: ByteOrder::Big }).unwrap();
    out.extend_from_slice(data_be);
    out
}

#[test]
fn idx_reads_mnist_style_files() {
    let limits = Limits::default();
    let images = idx_bytes(Dtype::U8, &[3, 2, 2], &(0..12).collect::<Vec<u8>>());
    let mut source = SampleSource::idx(Cursor::new(images), &limits).unwrap();
    assert_eq!(source.info().shape, [3, 2, 2]);
    assert_eq!(source.info().sample_shape(), [2, 2]);
    let mut sample = [0u8; 4];
    source.read_samples_le(2, &mut sample).unwrap();
    assert_eq!(sample, [8, 9, 10, 11]);

    let values: Vec<u8> = [-2i16, 300, 7].iter().flat_map(|v| v.to_be_bytes()).collect();
    let mut source = SampleSource::idx(Cursor::new(idx_bytes(Dtype::I16, &[3], &values)), &limits).unwrap();
    assert_eq!(all_samples_f32(&mut source), [-2.0, 300.0, 7.0]);
    let values: Vec<u8> = [0.25f32, -1.5].iter().flat_map(|v| v.to_be_bytes()).collect();
    let mut source = SampleSource::idx(Cursor::new(idx_bytes(Dtype::F32, &[2, 1], &values)), &limits).unwrap();
    assert_eq!(all_samples_f32(&mut source), [0.25, -1.5]);
    let labels = idx::read(Cursor::new(idx_bytes(Dtype::U8, &[3], &[4, 0, 9])), &limits).unwrap();
    assert_eq!(Labels::from_array(&labels, &LabelRequirement::Classes { count: 10 }).unwrap().len(), 3);
}

#[test]
fn idx_bad_headers_are_explained() {
    let limits = Limits::default();
    let read = |bytes: &[u8]| SampleSource::idx(Cursor::new(bytes.to_vec()), &limits);
    check_err(
        read(&[0, 0, 0x0A, 1, 0, 0, 0, 1, 0]),
        expect![[r#"unsupported IDX data: dtype code 0x0A; IDX codes are 0x08, 0x09, 0x0B, 0x0C, 0x0D and 0x0E"#]],
    );
    check_err(
        read(&[1, 2, 8, 1]),
        expect![[r#"not a valid IDX file: it starts with 01 02, not the two zero bytes of the IDX magic"#]],
    );
    check_err(
        read(&[0, 0, 8, 0]),
        expect![[r#"not a valid IDX file: it declares 0 dimensions; between 1 and 32 are accepted"#]],
    );
    check_err(
        read(&[0, 0, 8, 2, 0, 0]),
        expect![[r#"the data is truncated: the IDX dimensions needs 4 bytes but the input has 2"#]],
    );
    check_err(
        read(&[0, 0, 0x0E, 3, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255]),
        expect!["the shape 4294967295x4294967295x4294967295 is too large to address: its size overflows 64 bits"],
    );
    check_err(
        read(&idx_bytes(Dtype::U8, &[60000, 28, 28], &[1, 2, 3])),
        expect![[
            r#"the data is truncated: IDX data (uint8 of shape 60000x28x28) needs 47040000 bytes but the input has 3"#
        ]],
    );
}

// ---- checks against the model ----

fn info(dtype: Dtype, shape: &[usize]) -> ArrayInfo {
    ArrayInfo { dtype, shape: shape.to_vec(), byte_order: ByteOrder::Little }
}

fn classes(count: usize, sample_shape: &[usize]) -> DataRequirements {
    DataRequirements { sample_shape: sample_shape.to_vec(), labels: LabelRequirement::Classes { count } }
}

#[test]
fn check_accepts_matching_and_reshapeable_data() {
    let labels = info(Dtype::U8, &[100]);
    check(&info(Dtype::U8, &[100, 28, 28, 1]), &labels, &classes(10, &[28, 28, 1])).unwrap();
    check(&info(Dtype::U8, &[100, 784]), &labels, &classes(10, &[28, 28, 1])).unwrap();
    check(&info(Dtype::F32, &[100, 28, 28]), &info(Dtype::I64, &[100, 1]), &classes(10, &[28, 28, 1])).unwrap();
    let values = DataRequirements { sample_shape: vec![3], labels: LabelRequirement::Values { shape: vec![1] } };
    check(&info(Dtype::F32, &[5, 3]), &info(Dtype::F32, &[5]), &values).unwrap();
    check(&info(Dtype::F32, &[5, 3]), &info(Dtype::F64, &[5, 1]), &values).unwrap();
}

#[test]
fn check_explains_mismatches() {
    let req = classes(10, &[32, 32, 3]);
    check_err(
        check(&info(Dtype::U8, &[100, 28, 28]), &info(Dtype::U8, &[100]), &req),
        expect![[
            r#"the data does not fit the model: the features have sample shape 28x28 (784 values) but the model's input is 32x32x3 (3072 values)"#
        ]],
    );
    let req = classes(10, &[28, 28]);
    check_err(
        check(&info(Dtype::U8, &[100, 28, 28]), &info(Dtype::U8, &[99]), &req),
        expect![[r#"the data does not fit the model: there are 100 samples of features but 99 labels"#]],
    );
    check_err(
        check(&info(Dtype::U8, &[100, 28, 28]), &info(Dtype::F32, &[100]), &req),
        expect![[
            r#"the data does not fit the model: the model's loss needs integer class labels (0 to 9) but these are float32; convert them, e.g. y.astype(np.int64)"#
        ]],
    );
    check_err(
        check(&info(Dtype::U8, &[100, 28, 28]), &info(Dtype::U8, &[100, 10]), &req),
        expect![[
            r#"the data does not fit the model: class labels must have shape (n,) or (n, 1) but these have shape 100x10; for one-hot labels pass the class indices, e.g. y.argmax(axis=1)"#
        ]],
    );
    check_err(
        check(&info(Dtype::U8, &[0, 28, 28]), &info(Dtype::U8, &[0]), &req),
        expect![[r#"the data does not fit the model: the features have no samples"#]],
    );
    let values = DataRequirements { sample_shape: vec![3], labels: LabelRequirement::Values { shape: vec![2] } };
    check_err(
        check(&info(Dtype::F32, &[5, 3]), &info(Dtype::U8, &[5, 2]), &values),
        expect![[
            r#"the data does not fit the model: the model's loss needs float targets but these labels are uint8; convert them, e.g. y.astype(np.float32)"#
        ]],
    );
    check_err(
        check(&info(Dtype::F32, &[5, 3]), &info(Dtype::F32, &[5, 3]), &values),
        expect![[
            r#"the data does not fit the model: the labels have sample shape 3 (3 values) but the model's output is 2 (2 values)"#
        ]],
    );
}

fn raw_labels<T: Copy>(dtype: Dtype, values: &[T], to_le: impl Fn(T) -> Vec<u8>) -> RawArray {
    RawArray { info: info(dtype, &[values.len()]), data: values.iter().flat_map(|&v| to_le(v)).collect() }
}

#[test]
fn label_values_are_range_checked() {
    let req = LabelRequirement::Classes { count: 10 };
    check_err(
        Labels::from_array(&raw_labels(Dtype::U8, &[3u8, 9, 10, 1], |v| vec![v]), &req),
        expect![[r#"label of sample 2: 10 is not a class of the model, whose 10 classes are 0 to 9"#]],
    );
    check_err(
        Labels::from_array(&raw_labels(Dtype::I32, &[0i32, -1], |v| v.to_le_bytes().to_vec()), &req),
        expect![[r#"label of sample 1: -1 is not a class of the model, whose 10 classes are 0 to 9"#]],
    );
    let big_endian = RawArray {
        info: ArrayInfo { dtype: Dtype::I64, shape: vec![2], byte_order: ByteOrder::Big },
        data: [7i64, 2].iter().flat_map(|v| v.to_be_bytes()).collect(),
    };
    assert_eq!(Labels::from_array(&big_endian, &req).unwrap(), Labels::Classes { count: 10, values: vec![7, 2] });
    check_err(
        Labels::from_array(
            &raw_labels(Dtype::F64, &[0.5f64, f64::INFINITY], |v| v.to_le_bytes().to_vec()),
            &LabelRequirement::Values { shape: vec![] },
        ),
        expect![[r#"label of sample 1: the target inf is not a finite float32"#]],
    );
}

// ---- normalisation ----

#[test]
fn normalisation_maps_raw_values_to_f32() {
    let mut out = [0f32; 3];
    to_f32(Dtype::U8, &[0, 51, 255], &Normalization::Scale { min: None, max: None }, &mut out).unwrap();
    assert_eq!(out, [0.0, 0.2, 1.0]);
    let raw: Vec<u8> = [-10i16, 0, 10].iter().flat_map(|v| v.to_le_bytes()).collect();
    to_f32(Dtype::I16, &raw, &Normalization::Scale { min: Some(-10.0), max: Some(10.0) }, &mut out).unwrap();
    assert_eq!(out, [0.0, 0.5, 1.0]);
    let raw: Vec<u8> = [1.0f64, 3.0, 5.0].iter().flat_map(|v| v.to_le_bytes()).collect();
    to_f32(Dtype::F64, &raw, &Normalization::Standardize { mean: 3.0, std: 2.0 }, &mut out).unwrap();
    assert_eq!(out, [-1.0, 0.0, 1.0]);
    to_f32(Dtype::F64, &raw, &Normalization::None, &mut out).unwrap();
    assert_eq!(out, [1.0, 3.0, 5.0]);

    check_err(
        to_f32(Dtype::F32, &[0; 12], &Normalization::Scale { min: None, max: Some(1.0) }, &mut out),
        expect![[r#"invalid option: scaling float32 data needs both min and max: floats have no fixed range"#]],
    );
    check_err(
        to_f32(Dtype::U8, &[0; 3], &Normalization::Standardize { mean: 0.0, std: 0.0 }, &mut out),
        expect![[r#"invalid option: standardising needs a finite mean and a positive std, not 0 and 0"#]],
    );
    check_err(
        to_f32(Dtype::U16, &[0; 5], &Normalization::None, &mut out),
        expect![[r#"invalid option: 5 bytes of uint16 do not make 3 values"#]],
    );
}

#[test]
fn normalisation_is_serialisable() {
    let options = [
        Normalization::None,
        Normalization::Scale { min: None, max: None },
        Normalization::Scale { min: Some(-1.0), max: Some(1.0) },
        Normalization::Standardize { mean: 0.1307, std: 0.3081 },
    ];
    let json = serde_json::to_string(&options).unwrap();
    expect![[r#"[{"kind":"none"},{"kind":"scale"},{"kind":"scale","min":-1.0,"max":1.0},{"kind":"standardize","mean":0.1307,"std":0.3081}]"#]]
        .assert_eq(&json);
    let back: Vec<Normalization> = serde_json::from_str(&json).unwrap();
    assert_eq!(back, options);
}

#[test]
fn running_stats_match_a_direct_computation() {
    let values: Vec<f64> = (0..1000).map(|i| f64::from((i * 37) % 101) * 0.5 + 3.0).collect();
    let mean = values.iter().sum::<f64>() / values.len() as f64;
    let std = (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / values.len() as f64).sqrt();
    let mut stats = RunningStats::default();
    let raw: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    stats.push_raw(Dtype::F64, &raw);
    assert_eq!(stats.count(), 1000);
    assert!((stats.mean() - mean).abs() < 1e-9 && (stats.std() - std).abs() < 1e-9);
    let Normalization::Standardize { mean: m, std: s } = stats.standardize().unwrap() else {
        panic!("not standardize")
    };
    assert!((f64::from(m) - mean).abs() < 1e-4 && (f64::from(s) - std).abs() < 1e-4);

    let mut constant = RunningStats::default();
    constant.push_raw(Dtype::U8, &[4, 4, 4]);
    check_err(
        constant.standardize(),
        expect![[r#"invalid option: cannot standardise 3 values with standard deviation 0: they need to vary"#]],
    );
}

// ---- shards ----

fn class_header(count: usize) -> ShardHeader {
    ShardHeader {
        feature_dtype: Dtype::I16,
        sample_shape: vec![2],
        sample_count: count,
        labels: ShardLabels::Classes { count: 5 },
    }
}

fn small_shard() -> Vec<u8> {
    let mut writer = ShardWriter::new(Vec::new(), class_header(2)).unwrap();
    writer.push(&[1, 0, 0xFF, 0xFF], LabelRef::Class(4)).unwrap();
    writer.push(&[0, 1, 2, 0], LabelRef::Class(0)).unwrap();
    writer.finish().unwrap()
}

#[test]
fn shard_layout_is_stable() {
    let bytes = small_shard();
    let hex: Vec<String> = bytes.chunks(8).map(|c| c.iter().map(|b| format!("{b:02x}")).collect()).collect();
    expect![[r#"
        4441494753484431
        0100040102000000
        0500000001000000
        020000000100ffff
        0001020004000000
        00000000
    "#]]
    .assert_eq(&(hex.join("\n") + "\n"));
}

#[test]
fn shard_round_trips() {
    let bytes = small_shard();
    let view = ShardView::decode(&bytes).unwrap();
    assert_eq!(view.header(), &class_header(2));
    assert_eq!(view.len(), 2);
    let mut out = [0f32; 2];
    view.sample_f32(0, &Normalization::None, &mut out).unwrap();
    assert_eq!(out, [1.0, -1.0]);
    view.sample_f32(1, &Normalization::Scale { min: Some(0.0), max: Some(512.0) }, &mut out).unwrap();
    assert_eq!(out, [0.5, 0.00390625]);
    assert_eq!(view.label(0).unwrap(), ShardLabel::Class(4));
    assert_eq!(view.label(1).unwrap().class(), Some(0));
    check_err(view.label(2), expect![[r#"invalid option: sample 2 is past the shard's 2 samples"#]]);
    check_err(
        view.sample_f32(2, &Normalization::None, &mut out),
        expect![[r#"invalid option: sample 2 is past the shard's 2 samples"#]],
    );

    let header = ShardHeader {
        feature_dtype: Dtype::F64,
        sample_shape: vec![1, 1],
        sample_count: 1,
        labels: ShardLabels::Values { shape: vec![3] },
    };
    let mut writer = ShardWriter::new(Vec::new(), header.clone()).unwrap();
    writer.push(&2.5f64.to_le_bytes(), LabelRef::Values(&[0.5, -1.0, 2.0])).unwrap();
    let bytes = writer.finish().unwrap();
    assert_eq!(bytes.len(), header.total_bytes().unwrap());
    let view = ShardView::decode(&bytes).unwrap();
    assert_eq!(view.header(), &header);
    assert_eq!(view.label(0).unwrap().values(), [0.5, -1.0, 2.0]);
}

#[test]
fn shard_writer_refuses_what_does_not_fit_its_header() {
    let mut writer = ShardWriter::new(Vec::new(), class_header(1)).unwrap();
    check_err(
        writer.push(&[0; 3], LabelRef::Class(0)),
        expect![[r#"invalid shard: a sample of 3 bytes where the header says 4"#]],
    );
    check_err(
        writer.push(&[0; 4], LabelRef::Class(5)),
        expect![[r#"invalid shard: label Class(5) does not fit the header's Classes { count: 5 }"#]],
    );
    check_err(
        ShardWriter::new(Vec::new(), class_header(2)).unwrap().finish(),
        expect![[r#"invalid shard: 0 samples were written but the header declares 2"#]],
    );
    check_err(
        ShardWriter::new(Vec::new(), class_header(0)),
        expect![[r#"invalid shard: a shard holds 1 to 2^32-1 samples, not 0"#]],
    );
}

#[test]
fn shard_decode_refuses_bad_blobs() {
    let good = small_shard();
    let edit = |at: usize, bytes: &[u8]| {
        let mut b = good.clone();
        b[at..at + bytes.len()].copy_from_slice(bytes);
        b
    };
    let decode = |b: &[u8]| ShardView::decode(b).map(|v| v.len());
    check_err(decode(&good[..10]), expect![[r#"invalid shard: 10 bytes is shorter than the 24-byte header"#]]);
    check_err(
        decode(&good[..good.len() - 1]),
        expect!["invalid shard: the blob has 43 bytes but its header declares 44 (2 int16 samples of shape 2)"],
    );
    check_err(
        decode(&[good.clone(), vec![0]].concat()),
        expect!["invalid shard: the blob has 45 bytes but its header declares 44 (2 int16 samples of shape 2)"],
    );
    check_err(decode(&edit(0, b"X")), expect![[r#"invalid shard: it does not start with the magic DAIGSHD1"#]]);
    check_err(decode(&edit(8, &[2, 0])), expect![[r#"invalid shard: format version 2; this build reads version 1"#]]);
    check_err(decode(&edit(10, &[9])), expect![[r#"invalid shard: unknown feature dtype code 9"#]]);
    check_err(decode(&edit(11, &[3])), expect![[r#"invalid shard: unknown label kind 3"#]]);
    check_err(decode(&edit(20, &[9])), expect![[r#"invalid shard: ranks 9 and 0; at most 8 are supported"#]]);
    check_err(
        decode(&edit(24, &[0, 0, 0, 0])),
        expect![[r#"invalid shard: sample dimensions must be 1 to 2^32-1, not 0 and ()"#]],
    );
    check_err(
        decode(&edit(40, &[5])),
        expect![[r#"invalid shard: sample 1 has class 5, not below the class count 5"#]],
    );
    // Headers declaring 2^32-1 samples are refused against the blob's length, or as overflowing, not allocated.
    check_err(
        decode(&edit(12, &[255; 4])),
        expect![
            "invalid shard: the blob has 44 bytes but its header declares 34359738388 (4294967295 int16 samples of shape 2)"
        ],
    );
    check_err(
        decode(&edit(12, &[255; 4]).into_iter().take(24).chain(u32::MAX.to_le_bytes()).collect::<Vec<_>>()),
        expect!["invalid shard: the declared sizes overflow"],
    );
}

// ---- sharding ----

#[test]
fn permutation_is_seeded_and_stable() {
    let p = permutation(10, 42).unwrap();
    expect!["[0, 5, 3, 7, 9, 4, 8, 1, 6, 2]"].assert_eq(&format!("{p:?}"));
    assert_eq!(permutation(10, 42).unwrap(), p);
    assert_ne!(permutation(10, 43).unwrap(), p);
    let mut sorted = permutation(1000, 7).unwrap();
    sorted.sort_unstable();
    assert_eq!(sorted, (0..1000).collect::<Vec<u32>>());
}

#[test]
fn split_sizes() {
    assert_eq!(split(8000, 0.1).unwrap(), (7200, 800));
    assert_eq!(split(10, 0.0).unwrap(), (10, 0));
    assert_eq!(split(3, 0.5).unwrap(), (1, 2));
    check_err(
        split(10, 1.0),
        expect![[r#"invalid option: the validation fraction must be at least 0 and below 1, not 1"#]],
    );
    check_err(
        split(1, 0.6),
        expect![[r#"invalid option: a validation fraction of 0.6 leaves none of the 1 samples for training"#]],
    );
}

/// Shards a big-endian int16 array whose sample `i` is `[i, -i]`, labelled `i % 3`, and checks every sample
/// arrives exactly once, converted to little-endian, with its label.
#[test]
fn shard_dataset_emits_every_sample_once() {
    let n = 103usize;
    let data: Vec<u8> = (0..n as i16).flat_map(|i| [i.to_be_bytes(), (-i).to_be_bytes()]).flatten().collect();
    let info = ArrayInfo { dtype: Dtype::I16, shape: vec![n, 2], byte_order: ByteOrder::Big };
    let file = npy_bytes(&info, &data);
    let labels = Labels::Classes { count: 3, values: (0..n as u32).map(|i| i % 3).collect() };
    let plan = ShardPlan { seed: 5, validation_fraction: 0.2, samples_per_shard: 10 };
    let run = || {
        let mut source = SampleSource::npy(Cursor::new(file.clone()), &Limits::default()).unwrap();
        let mut shards = Vec::new();
        let summary = shard_dataset(&mut source, &labels, &plan, |role, bytes| {
            shards.push((role, bytes));
            Ok::<_, DataError>(())
        })
        .unwrap();
        (summary, shards)
    };
    let (summary, shards) = run();
    assert_eq!((summary.train_samples, summary.validation_samples), (82, 21));
    assert_eq!((summary.train_shards, summary.validation_shards), (9, 3));
    let roles: Vec<ShardRole> = shards.iter().map(|s| s.0).collect();
    assert_eq!(roles[..2], [ShardRole::Train(0), ShardRole::Train(1)]);
    assert_eq!(
        roles[8..],
        [ShardRole::Train(8), ShardRole::Validation(0), ShardRole::Validation(1), ShardRole::Validation(2)]
    );
    assert_eq!(run().1, shards, "the same seed gives the same shards");

    let mut seen = HashSet::new();
    let mut train_order = Vec::new();
    for (role, bytes) in &shards {
        let view = ShardView::decode(bytes).unwrap();
        assert_eq!(view.header().sample_shape, [2]);
        for i in 0..view.len() {
            let mut values = [0f32; 2];
            view.sample_f32(i, &Normalization::None, &mut values).unwrap();
            assert_eq!(values[1], -values[0]);
            let index = values[0] as u32;
            assert_eq!(view.label(i).unwrap(), ShardLabel::Class(index % 3));
            assert!(seen.insert(index), "sample {index} twice");
            if matches!(role, ShardRole::Train(_)) {
                train_order.push(index);
            }
        }
    }
    assert_eq!(seen.len(), n);
    assert_eq!(train_order, permutation(n, 5).unwrap()[..82], "shards follow the seeded permutation");

    // Written to outputs as they are read: the same bytes, and no write larger than a sample, a header or a
    // shard's labels (a shard is never built whole in memory on the way to its output).
    struct Recording {
        out: Cursor<Vec<u8>>,
        largest_write: usize,
    }
    impl Write for Recording {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.largest_write = self.largest_write.max(buf.len());
            self.out.write(buf)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    impl std::io::Seek for Recording {
        fn seek(&mut self, to: std::io::SeekFrom) -> std::io::Result<u64> {
            self.out.seek(to)
        }
    }
    let mut source = SampleSource::npy(Cursor::new(file.clone()), &Limits::default()).unwrap();
    let mut streamed = Vec::new();
    let open = |_: ShardRole, header: &ShardHeader| {
        assert!(header.shard_bytes().unwrap() > 0);
        Ok::<_, DataError>(Recording { out: Cursor::new(Vec::new()), largest_write: 0 })
    };
    let finish = |role, header: &ShardHeader, written: Recording| {
        assert!(written.largest_write <= (header.sample_count * 4).max(64), "{}", written.largest_write);
        assert_eq!(written.out.get_ref().len() as u64, header.shard_bytes().unwrap());
        streamed.push((role, written.out.into_inner()));
        Ok(())
    };
    shard_dataset_into(&mut source, &labels, &plan, open, finish).unwrap();
    assert_eq!(streamed, shards);

    let short = Labels::Classes { count: 3, values: vec![0; 5] };
    let mut source = SampleSource::npy(Cursor::new(file.clone()), &Limits::default()).unwrap();
    check_err(
        shard_dataset(&mut source, &short, &plan, |_, _| Ok::<_, DataError>(())),
        expect![[r#"the data does not fit the model: there are 103 samples of features but 5 labels"#]],
    );
}

#[test]
fn mnist_subset_reads_checks_and_shards() {
    let dir = mnist_dir();
    let limits = Limits::default();
    let mut images = SampleSource::npy(std::fs::File::open(dir.join("images.npy")).unwrap(), &limits).unwrap();
    let labels = npy::read(std::fs::File::open(dir.join("labels.npy")).unwrap(), &limits).unwrap();
    assert_eq!(
        images.info(),
        &ArrayInfo { dtype: Dtype::U8, shape: vec![8000, 28, 28], byte_order: ByteOrder::Little }
    );
    assert_eq!(labels.info.shape, [8000]);
    let req = classes(10, &[28, 28, 1]);
    check(images.info(), &labels.info, &req).unwrap();
    let labels = Labels::from_array(&labels, &req.labels).unwrap();
    let Labels::Classes { values, .. } = &labels else { panic!("class labels expected") };
    assert_eq!(values.iter().copied().collect::<HashSet<u32>>().len(), 10, "every digit occurs");

    let mut stats = RunningStats::default();
    stats.push_source(&mut images, 8000).unwrap();
    // MNIST's well-known statistics, in raw units.
    assert!((stats.mean() / 255.0 - 0.1307).abs() < 0.01, "{}", stats.mean());
    assert!((stats.std() / 255.0 - 0.3081).abs() < 0.01, "{}", stats.std());

    let plan = ShardPlan { seed: 1, validation_fraction: 0.1, samples_per_shard: 1000 };
    let mut sizes = Vec::new();
    let mut sample = vec![0u8; 784];
    let mut checked = 0;
    let order = permutation(8000, 1).unwrap();
    let mut position = 0;
    let mut source = SampleSource::npy(std::fs::File::open(dir.join("images.npy")).unwrap(), &limits).unwrap();
    let summary = shard_dataset(&mut images, &labels, &plan, |role, bytes| {
        let view = ShardView::decode(&bytes)?;
        sizes.push((role, view.len()));
        assert_eq!(bytes.len(), 24 + 8 + view.len() * (784 + 4));
        for i in 0..view.len() {
            let original = order[position + i] as usize;
            source.read_samples_le(original, &mut sample)?;
            assert_eq!(view.features_raw(i).unwrap(), sample);
            assert_eq!(view.label(i)?.class(), Some(values[original]));
            checked += 1;
        }
        position += view.len();
        Ok::<_, DataError>(())
    })
    .unwrap();
    assert_eq!(checked, 8000);
    assert_eq!(
        (summary.train_samples, summary.validation_samples, summary.train_shards, summary.validation_shards),
        (7200, 800, 8, 1)
    );
    assert_eq!(sizes[7], (ShardRole::Train(7), 200));
    assert_eq!(sizes[8], (ShardRole::Validation(0), 800));
}

// ---- no panics on damaged input ----

/// Every prefix of every fixture, and every fixture with one byte changed, gives a value or an error from every
/// reader: none panics (the test would fail) and none allocates what a damaged header declares (it would abort).
#[test]
fn damaged_inputs_give_errors_not_panics() {
    let limits = Limits::default();
    let mut files: Vec<Vec<u8>> =
        ["u8_le.npy", "i64_be.npy", "f32_v3.npy", "stored.npz", "deflated.npz"].iter().map(|f| fixture(f)).collect();
    files.push(idx_bytes(Dtype::I32, &[2, 3], &[1; 24]));
    files.push(small_shard());
    let mut damaged = Vec::new();
    for file in &files {
        for len in 0..file.len() {
            damaged.push(file[..len].to_vec());
        }
        for at in 0..file.len() {
            for value in [0x00, 0x7F, 0xFF] {
                let mut copy = file.clone();
                copy[at] = value;
                damaged.push(copy);
            }
        }
    }
    for bytes in &damaged {
        let _ = SampleSource::npy(Cursor::new(bytes), &limits).map(|mut s| all_samples_f32(&mut s));
        let _ = npy::read(Cursor::new(bytes), &limits);
        let _ = SampleSource::idx(Cursor::new(bytes), &limits).map(|mut s| all_samples_f32(&mut s));
        let _ = idx::read(Cursor::new(bytes), &limits);
        if let Ok(view) = ShardView::decode(bytes) {
            let mut values = vec![0f32; view.sample_elements()];
            for i in 0..view.len() {
                let _ = view.label(i).map(|l| l.values());
                let _ = view.sample_f32(i, &Normalization::None, &mut values);
            }
        }
        if let Ok(mut archive) = NpzArchive::new(Cursor::new(bytes), &limits) {
            for name in ["x", "y"] {
                let _ = archive.read_array(name);
                let _ = archive.spool(name, std::io::sink());
            }
            let _ = archive.into_sample_source("x");
        }
    }
}

// ---- streaming under a memory bound ----

const CHILD_ENV: &str = "DAIG_DATA_MEMORY_CHILD";
const SAMPLES: usize = 100_000;
const SAMPLE_BYTES: usize = 32 * 32 * 3;

/// Runs `memory_child` in a fresh process of this test binary and checks its peak resident set: sharding a
/// 307 MB file must not hold it in memory.
#[cfg(target_os = "linux")]
#[test]
fn sharding_a_large_file_stays_under_100_mb() {
    let output = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["memory_child", "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "child failed: {stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    let peak_kb: u64 = stdout
        .split("PEAK_RSS_KB=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no PEAK_RSS_KB in {stdout}"))
        .parse()
        .unwrap();
    assert!(stdout.contains(&format!("SHARDED={SAMPLES}")), "{stdout}");
    assert!(peak_kb < 100 * 1024, "peak RSS {peak_kb} kB while sharding a {} MiB file", (SAMPLES * SAMPLE_BYTES) >> 20);
}

/// The child side of `sharding_a_large_file_stays_under_100_mb`: does nothing unless that test started it.
#[test]
fn memory_child() {
    if std::env::var_os(CHILD_ENV).is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.npy");
    {
        let info = ArrayInfo { dtype: Dtype::U8, shape: vec![SAMPLES, 32, 32, 3], byte_order: ByteOrder::Little };
        let mut file = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
        npy::write_header(&mut file, &info).unwrap();
        let mut sample = vec![0u8; SAMPLE_BYTES];
        for i in 0..SAMPLES {
            sample.fill(i as u8);
            sample[..4].copy_from_slice(&(i as u32).to_le_bytes());
            file.write_all(&sample).unwrap();
        }
        file.flush().unwrap();
    }
    let limits = Limits::default();
    let mut source = SampleSource::npy(std::fs::File::open(&path).unwrap(), &limits).unwrap();
    let labels = Labels::Classes { count: 10, values: (0..SAMPLES as u32).map(|i| i % 10).collect() };
    let plan = ShardPlan { seed: 9, validation_fraction: 0.05, samples_per_shard: 4096 };
    let mut seen = vec![false; SAMPLES];
    let mut count = 0;
    shard_dataset(&mut source, &labels, &plan, |_, bytes| {
        let view = ShardView::decode(&bytes)?;
        for i in 0..view.len() {
            let raw = view.features_raw(i).unwrap();
            let index = u32::from_le_bytes(raw[..4].try_into().unwrap()) as usize;
            assert!(raw[4..].iter().all(|&b| b == index as u8), "sample {index} corrupted");
            assert_eq!(view.label(i)?.class(), Some(index as u32 % 10));
            assert!(!std::mem::replace(&mut seen[index], true), "sample {index} twice");
            count += 1;
        }
        Ok::<_, DataError>(())
    })
    .unwrap();
    drop(source);
    std::fs::remove_file(&path).unwrap();
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let peak = status.lines().find_map(|l| l.strip_prefix("VmHWM:")).unwrap().trim().trim_end_matches(" kB");
    println!("PEAK_RSS_KB={peak}");
    println!("SHARDED={count}");
}

/// This crate's directory in the checkout the test runs in: read when it runs (cargo sets it for tests), not
/// compiled in, since with a shared target directory a test binary built in one clone may run in another.
fn manifest_dir() -> PathBuf {
    PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo test sets CARGO_MANIFEST_DIR"))
}

/// Fuzzing finding 1 (BENCHMARKS.md): one-byte dtypes read with any byte-order mark (`>i1`, `<u1`, `|i1`, `=u1`,
/// none) are recorded as little-endian, and write back to the same array.
#[test]
fn one_byte_npy_dtypes_have_no_byte_order_and_round_trip() {
    for descr in [">i1", "<i1", "|i1", "=i1", "i1", ">u1", "<u1", "|u1", "=u1", "u1", ">b", "B"] {
        let header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': (2, 3), }}");
        let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
        let padded = (10 + header.len() + 1).div_ceil(64) * 64 - 10;
        bytes.extend_from_slice(&u16::try_from(padded).unwrap().to_le_bytes());
        bytes.extend_from_slice(header.as_bytes());
        bytes.resize(10 + padded - 1, b' ');
        bytes.push(b'\n');
        bytes.extend_from_slice(&[1, 2, 3, 250, 251, 252]);
        let limits = Limits::default();
        let array = npy::read(Cursor::new(&bytes), &limits).unwrap_or_else(|e| panic!("{descr}: {e}"));
        assert_eq!(array.info.byte_order, ByteOrder::Little, "{descr}");
        let mut written = Vec::new();
        npy::write_raw(&mut written, &array.info, &array.data).unwrap();
        assert_eq!(npy::read(Cursor::new(&written), &limits).unwrap(), array, "{descr} writes back as it read");
    }
}

//! Shard blobs, as a provider receives them from the server.
//!
//! A shard that decodes must have the length its header declares, give every sample's features and label (and
//! nothing past the end), and write back, sample by sample through `ShardWriter`, to the same bytes.

#![no_main]

use daig_shared::data::{LabelRef, Normalization, ShardLabel, ShardView, ShardWriter};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(view) = ShardView::decode(data) else { return };
    let header = view.header().clone();
    assert_eq!(header.total_bytes().expect("a decoded header has a size"), data.len());
    let n = view.len();
    assert!(n >= 1 && !view.is_empty());
    let sample_bytes = view.sample_elements() * header.feature_dtype.size();
    assert_eq!(view.all_features_raw().len(), n * sample_bytes);

    let mut values = vec![0f32; view.sample_elements()];
    view.sample_f32(n - 1, &Normalization::None, &mut values).expect("the last sample converts");
    assert!(view.features_raw(n).is_none() && view.label(n).is_err(), "a sample past the end");

    let mut writer = ShardWriter::new(Vec::with_capacity(data.len()), header).expect("a decoded header encodes");
    for i in 0..n {
        let features = view.features_raw(i).expect("a sample inside the shard");
        assert_eq!(features.len(), sample_bytes);
        let label = view.label(i).expect("a label inside the shard");
        let targets = label.values();
        let label = match label {
            ShardLabel::Class(c) => LabelRef::Class(c),
            ShardLabel::Values(_) => LabelRef::Values(&targets),
        };
        writer.push(features, label).expect("a decoded sample writes");
    }
    assert_eq!(writer.finish().expect("a full shard finishes"), data, "a shard does not write back the same");
});

//! Tests of the wire protocol: round trips, wire-format snapshots, chunking and reassembly, limits, and
//! hostile or random input.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::path::PathBuf;

use daig_shared::wire::{
    Ack, AckOutcome, Backend, CancelLease, Chunk, ContributionInfo, DecodeError, DeviceCapacity, Frame, Goodbye,
    GoodbyeReason, Heartbeat, Hello, Lease, LeaseId, LeaseProgress, MAX_CHUNK_BYTES, MAX_FRAME_BYTES, Normalisation,
    PROTOCOL_VERSION, ParseShardHashError, PayloadError, ProjectId, ProviderId, ProviderKey, Reassembler,
    ReassemblyError, RefusalReason, SampleSelection, ShardHash, ShardRequest, ShardSamples, TrainingInfo, Transfer,
    TransferId, TransferKind, TransferStart, Welcome, f32s_from_le_bytes, f32s_to_le_bytes, peek_hello_version,
    transfer_frames,
};
use expect_test::expect;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Records the largest single allocation each thread makes, to prove that hostile input allocates little.
mod alloc_probe {
    #![allow(unsafe_code)] // A global allocator cannot be written without `unsafe`.

    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;

    thread_local! {
        // Const-initialised and without a destructor, so the allocator can touch it without allocating.
        static LARGEST_BYTES: Cell<usize> = const { Cell::new(0) };
    }

    fn record(bytes: usize) {
        // `try_with` because allocations also happen while a thread's locals are torn down.
        let _ = LARGEST_BYTES.try_with(|largest| largest.set(largest.get().max(bytes)));
    }

    pub struct Probe;

    // SAFETY: every method forwards to `System` with the caller's arguments, which upholds the contract.
    unsafe impl GlobalAlloc for Probe {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            record(layout.size());
            // SAFETY: forwarded unchanged.
            unsafe { System.alloc(layout) }
        }

        unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
            record(layout.size());
            // SAFETY: forwarded unchanged.
            unsafe { System.alloc_zeroed(layout) }
        }

        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            // SAFETY: forwarded unchanged.
            unsafe { System.dealloc(ptr, layout) }
        }

        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            record(new_size);
            // SAFETY: forwarded unchanged.
            unsafe { System.realloc(ptr, layout, new_size) }
        }
    }

    #[global_allocator]
    static PROBE: Probe = Probe;

    /// Runs `f` and returns its result with the largest single allocation it made on this thread.
    pub fn largest_allocation<R>(f: impl FnOnce() -> R) -> (R, usize) {
        LARGEST_BYTES.with(|largest| largest.set(0));
        let result = f();
        (result, LARGEST_BYTES.with(Cell::get))
    }
}

use alloc_probe::largest_allocation;

fn hash(seed: u8) -> ShardHash {
    ShardHash(std::array::from_fn(|i| seed.wrapping_add(i as u8)))
}

#[test]
fn shard_hashes_parse_from_the_hex_they_display() {
    let h = hash(0xf0);
    let text = h.to_string();
    assert_eq!(text, "f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff000102030405060708090a0b0c0d0e0f");
    assert_eq!(text.parse::<ShardHash>(), Ok(h));
    assert_eq!(format!("{h:?}"), format!("ShardHash({text})"));
    assert_eq!("00".repeat(32).parse::<ShardHash>(), Ok(ShardHash::default()));
}

#[test]
fn shard_hashes_of_the_wrong_length_are_refused() {
    for text in ["", "ab", &"a".repeat(63), &"a".repeat(65), &"ab".repeat(64)] {
        assert_eq!(text.parse::<ShardHash>(), Err(ParseShardHashError::WrongLength(text.len())), "{text:?}");
    }
    // Length is counted in bytes: 32 two-byte characters are not 64 digits.
    assert_eq!("é".repeat(32).parse::<ShardHash>(), Err(ParseShardHashError::NotHex));
    assert_eq!("é".repeat(31).parse::<ShardHash>(), Err(ParseShardHashError::WrongLength(62)));
}

#[test]
fn shard_hashes_that_are_not_lowercase_hex_are_refused() {
    let good = hash(1).to_string();
    for bad in ["g", "G", "A", "F", " ", "+", "-", "x"] {
        for at in [0, 31, 63] {
            let mut text = good.clone();
            text.replace_range(at..at + 1, bad);
            assert_eq!(text.parse::<ShardHash>(), Err(ParseShardHashError::NotHex), "{text:?}");
        }
    }
    // `u8::from_str_radix` would take a sign; the parser does not.
    assert_eq!(format!("+1{}", &good[2..]).parse::<ShardHash>(), Err(ParseShardHashError::NotHex));
    assert_eq!(ParseShardHashError::WrongLength(3).to_string(), "a shard hash is 64 hex digits, not 3 characters");
}

/// One frame of every variant (and of each inner enum's variants), small enough to read as hex.
fn sample_frames() -> Vec<(&'static str, Frame<'static>)> {
    vec![
        (
            "hello",
            Frame::Hello(Hello {
                protocol_version: PROTOCOL_VERSION,
                backend: Backend::WebGpu,
                adapter: "gpu".into(),
                samples_per_sec: 1500.0,
                cached_shards: vec![hash(0xa0)],
                site_key: Some("key".into()),
                project_id: Some(ProjectId(7)),
                provider_key: Some(ProviderKey([0x5a; 32])),
                device: DeviceCapacity { max_buffer_bytes: 1 << 28, memory_bytes: 1 << 31 },
            }),
        ),
        (
            "hello_minimal",
            Frame::Hello(Hello {
                protocol_version: PROTOCOL_VERSION,
                backend: Backend::Cpu,
                adapter: String::new(),
                samples_per_sec: 0.0,
                cached_shards: Vec::new(),
                site_key: None,
                project_id: None,
                provider_key: None,
                device: DeviceCapacity::default(),
            }),
        ),
        (
            "welcome",
            Frame::Welcome(Welcome {
                provider_id: ProviderId(300),
                project_id: ProjectId(7),
                model_json: "{}".into(),
                training: TrainingInfo {
                    param_count: 101_770,
                    batch_size: 32,
                    heartbeat_interval_ms: 5000,
                    normalisation: Normalisation::Global { offset: 0.0, scale: 1.0 / 255.0 },
                },
            }),
        ),
        (
            "welcome_per_feature",
            Frame::Welcome(Welcome {
                provider_id: ProviderId(1),
                project_id: ProjectId(2),
                model_json: String::new(),
                training: TrainingInfo {
                    param_count: 3,
                    batch_size: 1,
                    heartbeat_interval_ms: 1,
                    normalisation: Normalisation::PerFeature { offset: vec![1.0, -1.0], scale: vec![0.5, 2.0] },
                },
            }),
        ),
        (
            "lease_indices",
            Frame::Lease(Lease {
                lease_id: LeaseId(9),
                project_id: ProjectId(7),
                params_version: 3,
                samples: SampleSelection::Indices(vec![0, 1, 127, 128, 70_000]),
                local_steps: 4,
                learning_rate: 0.01,
                deadline_ms: 30_000,
            }),
        ),
        (
            "lease_shards",
            Frame::Lease(Lease {
                lease_id: LeaseId(10),
                project_id: ProjectId(7),
                params_version: 3,
                samples: SampleSelection::Shards(vec![ShardSamples { shard: hash(0x10), indices: vec![5, 6] }]),
                local_steps: 1,
                learning_rate: 0.5,
                deadline_ms: 1,
            }),
        ),
        (
            "heartbeat",
            Frame::Heartbeat(Heartbeat { leases: vec![LeaseProgress { lease_id: LeaseId(9), steps_done: 2 }] }),
        ),
        ("shard_request", Frame::ShardRequest(ShardRequest { shard: hash(0x10) })),
        ("cancel_lease", Frame::CancelLease(CancelLease { lease_id: LeaseId(9), reason: "expired".into() })),
        ("ack_applied", Frame::Ack(Ack { lease_id: LeaseId(9), outcome: AckOutcome::Applied { new_version: 4 } })),
        ("ack_stale", Frame::Ack(Ack { lease_id: LeaseId(9), outcome: AckOutcome::Stale { current_version: 12 } })),
        (
            "ack_refused",
            Frame::Ack(Ack {
                lease_id: LeaseId(9),
                outcome: AckOutcome::Refused { reason: RefusalReason::NonFinite, detail: "NaN".into() },
            }),
        ),
        (
            "transfer_params",
            Frame::TransferStart(TransferStart {
                transfer_id: TransferId(1),
                kind: TransferKind::Params { version: 3 },
                total_bytes: 4 << 20,
            }),
        ),
        (
            "transfer_shard",
            Frame::TransferStart(TransferStart {
                transfer_id: TransferId(2),
                kind: TransferKind::Shard { shard: hash(0x10) },
                total_bytes: 1000,
            }),
        ),
        (
            "transfer_contribution",
            Frame::TransferStart(TransferStart {
                transfer_id: TransferId(3),
                kind: TransferKind::Contribution(ContributionInfo {
                    lease_id: LeaseId(9),
                    base_version: 3,
                    sample_count: 128,
                    mean_loss: 0.25,
                }),
                total_bytes: 8,
            }),
        ),
        (
            "chunk",
            Frame::Chunk(Chunk {
                transfer_id: TransferId(3),
                index: 0,
                bytes: Cow::Owned(f32s_to_le_bytes(&[1.0, -2.0]).into_owned()),
            }),
        ),
        ("goodbye", Frame::Goodbye(Goodbye { reason: GoodbyeReason::Normal, detail: String::new() })),
        ("goodbye_device", Frame::Goodbye(Goodbye { reason: GoodbyeReason::DeviceTooSmall, detail: "buffer".into() })),
        (
            "goodbye_version",
            Frame::Goodbye(Goodbye {
                reason: GoodbyeReason::UnsupportedVersion { supported: PROTOCOL_VERSION },
                detail: "update".into(),
            }),
        ),
    ]
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut out, byte| {
        let _ = write!(out, "{byte:02x}");
        out
    })
}

#[test]
fn every_frame_round_trips() {
    for (name, frame) in sample_frames() {
        let bytes = frame.encode();
        assert_eq!(bytes.len(), frame.encoded_len(), "{name}");
        assert_eq!(Frame::decode(&bytes).as_ref(), Ok(&frame), "{name}");
        let mut reused = vec![0xee];
        frame.encode_into(&mut reused);
        assert_eq!(reused[1..], bytes[..], "{name}: encode_into appends");
    }
}

#[test]
fn encoded_frames_match_snapshot() {
    // A change here is a change of the wire format: bump PROTOCOL_VERSION unless it only adds variants at
    // the end of an enum. Then refresh with UPDATE_EXPECT=1 (which also rewrites the fuzz seed corpus).
    let listing = sample_frames().iter().fold(String::new(), |mut out, (name, frame)| {
        let _ = writeln!(out, "{name:<22} {}", hex(&frame.encode()));
        out
    });
    expect![[r#"
        hello                  000300036770750080bb4401a0a1a2a3a4a5a6a7a8a9aaabacadaeafb0b1b2b3b4b5b6b7b8b9babbbcbdbebf01036b65790107015a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a80808080018080808008
        hello_minimal          0003050000000000000000000000
        welcome                01ac0207027b7d8a9b0620882701000000008180803b
        welcome_per_feature    0101020003010102020000803f000080bf020000003f00000040
        lease_indices          02090703000500017f8001f0a204040ad7233cb0ea01
        lease_shards           020a07030101101112131415161718191a1b1c1d1e1f202122232425262728292a2b2c2d2e2f020506010000003f01
        heartbeat              03010902
        shard_request          04101112131415161718191a1b1c1d1e1f202122232425262728292a2b2c2d2e2f
        cancel_lease           05090765787069726564
        ack_applied            06090004
        ack_stale              0609010c
        ack_refused            06090203034e614e
        transfer_params        0701000380808002
        transfer_shard         070201101112131415161718191a1b1c1d1e1f202122232425262728292a2b2c2d2e2fe807
        transfer_contribution  070302090380010000803e08
        chunk                  080300080000803f000000c0
        goodbye                090000
        goodbye_device         090a06627566666572
        goodbye_version        09020306757064617465
    "#]]
    .assert_eq(&listing);
}

/// The frame fuzz target's seeds (`fuzz/seeds/decode_frame`): every sample frame and a small parameter transfer.
fn corpus_frames() -> Vec<(String, Frame<'static>)> {
    let mut frames: Vec<(String, Frame<'static>)> =
        sample_frames().into_iter().map(|(name, frame)| (name.to_owned(), frame)).collect();
    let transfer = transfer_frames(TransferId(5), TransferKind::Params { version: 1 }, &[7; 12]);
    frames.extend(transfer.enumerate().map(|(i, frame)| (format!("transfer_small_{i}"), frame.into_owned())));
    frames
}

#[test]
fn fuzz_seed_corpus_matches_sample_frames() {
    let dir = manifest_dir().join("../fuzz/seeds/decode_frame");
    let update = std::env::var_os("UPDATE_EXPECT").is_some();
    if update {
        std::fs::create_dir_all(&dir).unwrap();
    }
    for (name, frame) in corpus_frames() {
        let path = dir.join(format!("{name}.bin"));
        if update {
            std::fs::write(&path, frame.encode()).unwrap();
        } else {
            let stored = std::fs::read(&path).unwrap_or_else(|e| {
                panic!("cannot read {}: {e}; run with UPDATE_EXPECT=1 to write the corpus", path.display())
            });
            assert_eq!(stored, frame.encode(), "{} is stale; run with UPDATE_EXPECT=1", path.display());
        }
    }
}

#[test]
fn error_messages_match_snapshot() {
    let errors: Vec<String> = [
        DecodeError::Incomplete,
        DecodeError::Malformed { reason: "a bool is neither 0 nor 1".into() },
        DecodeError::TooLarge { len: 2_000_000, max: MAX_FRAME_BYTES },
        DecodeError::UnsupportedVersion { got: 2, supported: 1 },
        DecodeError::TrailingBytes { count: 3 },
    ]
    .iter()
    .map(ToString::to_string)
    .chain(
        [
            ReassemblyError::TooLarge { transfer_id: TransferId(1), declared_bytes: 1 << 40, limit_bytes: 1 << 30 },
            ReassemblyError::NotF32 { transfer_id: TransferId(1), declared_bytes: 7 },
            ReassemblyError::OutOfMemory { transfer_id: TransferId(1), declared_bytes: 1 << 30 },
            ReassemblyError::AlreadyOpen { open: TransferId(1), new: TransferId(2) },
            ReassemblyError::NoOpenTransfer { transfer_id: TransferId(1), index: 0 },
            ReassemblyError::WrongTransfer { expected: TransferId(1), got: TransferId(2) },
            ReassemblyError::BadChunkLength { transfer_id: TransferId(1), index: 0, len: 0 },
            ReassemblyError::Duplicate { transfer_id: TransferId(1), index: 0, expected: 1 },
            ReassemblyError::OutOfOrder { transfer_id: TransferId(1), index: 2, expected: 1 },
            ReassemblyError::Overflow { transfer_id: TransferId(1), index: 1, would_be_bytes: 12, declared_bytes: 8 },
        ]
        .iter()
        .map(ToString::to_string),
    )
    .chain([PayloadError::NotF32 { len: 5 }.to_string()])
    .collect();
    expect![[r#"
        frame is truncated: the bytes end before the frame does
        frame is malformed: a bool is neither 0 nor 1
        frame is 2000000 bytes, over the limit of 1048640 bytes; send payloads in chunks of at most 1048576 bytes
        peer speaks protocol version 2 but this side supports only version 1; update the older side
        frame is followed by 3 unexpected bytes; send one frame per message
        transfer 1 declares 1099511627776 bytes, over this side's limit of 1073741824 bytes
        transfer 1 carries f32 values but declares 7 bytes, not a multiple of 4
        cannot allocate 1073741824 bytes for transfer 1; lower the transfer limit
        transfer 2 started while transfer 1 was still open; send one transfer at a time
        chunk 0 of transfer 1 arrived with no transfer open; send TransferStart first
        chunk names transfer 2 but transfer 1 is open
        chunk 0 of transfer 1 is 0 bytes; chunks must be 1 to 1048576 bytes
        chunk 0 of transfer 1 is a duplicate; chunk 1 was expected next
        chunk 2 of transfer 1 arrived out of order; chunk 1 was expected next
        chunk 1 of transfer 1 brings it to 12 bytes, past the declared 8
        f32 payload is 5 bytes, which is not a multiple of 4; the sender must send whole f32 values"#]]
    .assert_eq(&errors.join("\n"));
}

/// Sends `payload` through encode, decode and a reassembler, as a connection would.
fn send_through(kind: TransferKind, payload: &[u8]) -> (usize, Transfer) {
    let mut reassembler = Reassembler::new(64 << 20);
    let mut frames = 0;
    let mut done = None;
    for frame in transfer_frames(TransferId(42), kind, payload) {
        frames += 1;
        let bytes = frame.encode();
        assert!(bytes.len() <= MAX_FRAME_BYTES, "a chunk frame of {} bytes is over the limit", bytes.len());
        let decoded = Frame::decode(&bytes).unwrap();
        assert!(done.is_none(), "the transfer completed before its last frame");
        done = reassembler.feed(&decoded).unwrap();
    }
    assert!(reassembler.open_transfer().is_none());
    (frames, done.expect("the transfer completed"))
}

#[test]
fn params_of_4_mib_arrive_in_4_chunks() {
    let params: Vec<f32> = (0..(1 << 20)).map(|i| i as f32 * 0.5 - 3.0).collect();
    let bytes = f32s_to_le_bytes(&params);
    assert_eq!(bytes.len(), 4 << 20);
    let (frames, transfer) = send_through(TransferKind::Params { version: 8 }, &bytes);
    assert_eq!(frames, 1 + 4);
    assert_eq!(transfer.transfer_id, TransferId(42));
    assert_eq!(transfer.kind, TransferKind::Params { version: 8 });
    assert_eq!(transfer.f32s().unwrap(), params);
}

#[test]
fn odd_sizes_reassemble() {
    let shard = TransferKind::Shard { shard: hash(1) };
    for (len, chunks) in [
        (0, 0),
        (1, 1),
        (MAX_CHUNK_BYTES - 1, 1),
        (MAX_CHUNK_BYTES, 1),
        (MAX_CHUNK_BYTES + 1, 2),
        (3 * MAX_CHUNK_BYTES + 12_345, 4),
    ] {
        let payload: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
        let (frames, transfer) = send_through(shard.clone(), &payload);
        assert_eq!(frames, 1 + chunks, "{len} bytes");
        assert_eq!(transfer.bytes, payload, "{len} bytes");
    }
}

#[test]
fn f32_payloads_need_whole_values_and_any_alignment() {
    let values = [1.5f32, -0.0, f32::MAX, f32::MIN_POSITIVE];
    let mut padded = vec![0u8];
    padded.extend_from_slice(&f32s_to_le_bytes(&values));
    // The payload starts at an odd address: a cast in place would fail, the copy does not.
    assert_eq!(f32s_from_le_bytes(&padded[1..]).unwrap(), values);
    assert_eq!(f32s_to_le_bytes(&[1.0]).as_ref(), &[0x00, 0x00, 0x80, 0x3f]);
    assert_eq!(f32s_from_le_bytes(&padded[..6]), Err(PayloadError::NotF32 { len: 6 }));
}

fn start(id: u32, total_bytes: u64) -> TransferStart {
    TransferStart { transfer_id: TransferId(id), kind: TransferKind::Shard { shard: hash(0) }, total_bytes }
}

fn chunk(id: u32, index: u32, bytes: &[u8]) -> Chunk<'_> {
    Chunk { transfer_id: TransferId(id), index, bytes: Cow::Borrowed(bytes) }
}

#[test]
fn declared_size_over_limit_fails_before_allocating() {
    let mut reassembler = Reassembler::new(1 << 20);
    let (result, largest) = largest_allocation(|| reassembler.start(&start(1, 1 << 40)));
    assert_eq!(
        result,
        Err(ReassemblyError::TooLarge { transfer_id: TransferId(1), declared_bytes: 1 << 40, limit_bytes: 1 << 20 })
    );
    assert_eq!(largest, 0, "refusing a transfer allocates nothing");
    assert!(reassembler.open_transfer().is_none());
    // Just over and exactly at the limit.
    assert!(matches!(reassembler.start(&start(2, (1 << 20) + 1)), Err(ReassemblyError::TooLarge { .. })));
    // A transfer within the limit reserves its size at once, which also shows that the probe works.
    let (result, largest) = largest_allocation(|| reassembler.start(&start(3, 1 << 20)));
    assert_eq!(result, Ok(None));
    assert_eq!(largest, 1 << 20);
    assert_eq!(
        reassembler.open_transfer().map(|(id, _, got, total)| (id, got, total)),
        Some((TransferId(3), 0, 1 << 20))
    );
}

#[test]
fn f32_transfers_must_declare_whole_values() {
    let mut reassembler = Reassembler::new(1 << 20);
    let params =
        TransferStart { transfer_id: TransferId(1), kind: TransferKind::Params { version: 1 }, total_bytes: 6 };
    assert_eq!(
        reassembler.start(&params),
        Err(ReassemblyError::NotF32 { transfer_id: TransferId(1), declared_bytes: 6 })
    );
}

#[test]
fn chunk_rule_violations_are_refused_and_discard_the_transfer() {
    let data = [1u8; 8];
    let cases: Vec<(&str, Vec<Chunk<'_>>, ReassemblyError)> = vec![
        (
            "overflow",
            vec![chunk(1, 0, &data), chunk(1, 1, &data[..3])],
            ReassemblyError::Overflow { transfer_id: TransferId(1), index: 1, would_be_bytes: 11, declared_bytes: 10 },
        ),
        (
            "out of order",
            vec![chunk(1, 1, &data)],
            ReassemblyError::OutOfOrder { transfer_id: TransferId(1), index: 1, expected: 0 },
        ),
        (
            "gap",
            vec![chunk(1, 0, &data[..2]), chunk(1, 2, &data[..2])],
            ReassemblyError::OutOfOrder { transfer_id: TransferId(1), index: 2, expected: 1 },
        ),
        (
            "duplicate",
            vec![chunk(1, 0, &data[..2]), chunk(1, 0, &data[..2])],
            ReassemblyError::Duplicate { transfer_id: TransferId(1), index: 0, expected: 1 },
        ),
        (
            "wrong transfer id",
            vec![chunk(2, 0, &data)],
            ReassemblyError::WrongTransfer { expected: TransferId(1), got: TransferId(2) },
        ),
        (
            "empty chunk",
            vec![chunk(1, 0, &[])],
            ReassemblyError::BadChunkLength { transfer_id: TransferId(1), index: 0, len: 0 },
        ),
    ];
    for (name, chunks, expected) in cases {
        let mut reassembler = Reassembler::new(1 << 20);
        assert_eq!(reassembler.start(&start(1, 10)), Ok(None), "{name}");
        let (last, first) = chunks.split_last().unwrap();
        for c in first {
            assert_eq!(reassembler.push(c), Ok(None), "{name}");
        }
        assert_eq!(reassembler.push(last), Err(expected), "{name}");
        assert!(reassembler.open_transfer().is_none(), "{name}: the transfer is discarded");
        // The stream goes on with a fresh transfer.
        assert_eq!(reassembler.start(&start(7, 1)), Ok(None), "{name}");
        assert!(reassembler.push(&chunk(7, 0, &[9])).unwrap().is_some(), "{name}");
    }
}

#[test]
fn oversized_chunk_is_refused() {
    let mut reassembler = Reassembler::new(1 << 30);
    let big = vec![0u8; MAX_CHUNK_BYTES + 1];
    reassembler.start(&start(1, 2 << 20)).unwrap();
    assert_eq!(
        reassembler.push(&chunk(1, 0, &big)),
        Err(ReassemblyError::BadChunkLength { transfer_id: TransferId(1), index: 0, len: MAX_CHUNK_BYTES + 1 })
    );
}

#[test]
fn transfers_are_one_at_a_time_and_need_a_start() {
    let mut reassembler = Reassembler::new(1 << 20);
    assert_eq!(
        reassembler.push(&chunk(1, 0, &[1])),
        Err(ReassemblyError::NoOpenTransfer { transfer_id: TransferId(1), index: 0 })
    );
    reassembler.start(&start(1, 4)).unwrap();
    assert_eq!(
        reassembler.start(&start(2, 4)),
        Err(ReassemblyError::AlreadyOpen { open: TransferId(1), new: TransferId(2) })
    );
    assert!(reassembler.open_transfer().is_none());
    reassembler.start(&start(3, 4)).unwrap();
    assert_eq!(reassembler.abort(), Some(TransferId(3)));
    assert_eq!(reassembler.abort(), None);
}

#[test]
fn the_result_is_only_available_when_complete() {
    let mut reassembler = Reassembler::new(1 << 20);
    assert_eq!(reassembler.start(&start(1, 5)), Ok(None));
    assert_eq!(reassembler.push(&chunk(1, 0, &[1, 2])), Ok(None));
    assert_eq!(reassembler.push(&chunk(1, 1, &[3, 4])), Ok(None));
    let done = reassembler.push(&chunk(1, 2, &[5])).unwrap().unwrap();
    assert_eq!(done.bytes, [1, 2, 3, 4, 5]);
    // A zero-byte transfer is complete at its start.
    let empty = reassembler.start(&start(2, 0)).unwrap().unwrap();
    assert!(empty.bytes.is_empty());
    // Frames other than transfers pass by.
    assert_eq!(reassembler.feed(&sample_frames()[0].1), Ok(None));
}

#[test]
fn decode_errors_are_told_apart() {
    let hello = sample_frames()[0].1.encode();
    assert_eq!(Frame::decode(&[]), Err(DecodeError::Incomplete));
    for len in 1..hello.len() {
        assert_eq!(Frame::decode(&hello[..len]), Err(DecodeError::Incomplete), "truncated to {len}");
    }
    // Tag 0x7f is no frame.
    assert_eq!(
        Frame::decode(&[0x7f]),
        Err(DecodeError::Malformed { reason: "a value is out of range, e.g. an unknown frame or enum variant".into() })
    );
    // A Goodbye whose detail is not UTF-8.
    assert_eq!(
        Frame::decode(&[0x09, 0x00, 0x01, 0xff]),
        Err(DecodeError::Malformed { reason: "a string is not valid UTF-8".into() })
    );
    let mut trailing = hello.clone();
    trailing.extend_from_slice(&[0, 0]);
    assert_eq!(Frame::decode(&trailing), Err(DecodeError::TrailingBytes { count: 2 }));

    let too_long = vec![0u8; MAX_FRAME_BYTES + 1];
    assert_eq!(Frame::decode(&too_long), Err(DecodeError::TooLarge { len: MAX_FRAME_BYTES + 1, max: MAX_FRAME_BYTES }));
    assert_eq!(Frame::decode_with_limit(&hello, 4), Err(DecodeError::TooLarge { len: hello.len(), max: 4 }));
}

#[test]
fn a_hello_of_another_version_is_recognised_whatever_follows() {
    // The next version as a varint after the Hello tag, then a layout this version cannot read.
    let next = PROTOCOL_VERSION + 1;
    let future = [0x00, u8::try_from(next).unwrap_or(0x7f), 0xff, 0xff, 0xff];
    assert_eq!(peek_hello_version(&future), Ok(Some(next)));
    assert_eq!(Frame::decode(&future), Err(DecodeError::UnsupportedVersion { got: next, supported: PROTOCOL_VERSION }));
    // A large version number takes three varint bytes.
    assert_eq!(peek_hello_version(&[0x00, 0xff, 0xff, 0x03]), Ok(Some(u16::MAX)));
    assert_eq!(peek_hello_version(&[0x00, 0xff]), Err(DecodeError::Incomplete));
    assert_eq!(peek_hello_version(&sample_frames()[0].1.encode()), Ok(Some(PROTOCOL_VERSION)));
    assert_eq!(peek_hello_version(&sample_frames()[2].1.encode()), Ok(None));
    // Found by the fuzz target: `80 00` is a longer encoding of the Hello tag that postcard accepts, so
    // the version check must read the tag as a varint, not compare the first byte.
    let overlong_tag = [0x80, 0x00, 0x00, 0x00, 0x00, 0x00, 0x09, 0x07, 0x0b, 0x00, 0x00, 0x00];
    assert_eq!(peek_hello_version(&overlong_tag), Ok(Some(0)));
    assert_eq!(
        Frame::decode(&overlong_tag),
        Err(DecodeError::UnsupportedVersion { got: 0, supported: PROTOCOL_VERSION })
    );
}

/// A varint of `value` as postcard writes it.
fn varint(mut value: u64) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            out.push(byte);
            return out;
        }
        out.push(byte | 0x80);
    }
}

#[test]
fn hostile_length_prefixes_allocate_nothing_large() {
    let huge = varint(4_000_000_000);
    let mut cases: Vec<(&str, Vec<u8>)> = Vec::new();
    // Chunk { transfer_id: 1, index: 0, bytes: <4 GB> } in a few bytes.
    cases.push(("chunk bytes", [&[0x08, 0x01, 0x00][..], &huge, &[0xaa; 12]].concat()));
    // Hello with 4 G cached shard hashes.
    let version = u8::try_from(PROTOCOL_VERSION).unwrap_or(0x7f);
    cases.push(("hello shards", [&[0x00, version, 0x00, 0x00, 0, 0, 0, 0][..], &huge, &[0x11; 40]].concat()));
    // Hello with a 4 GB adapter string.
    cases.push(("hello adapter", [&[0x00, version, 0x00][..], &huge, b"abcdefgh"].concat()));
    // Lease with 4 G sample indices: lease id, project id, version, Indices tag, then the length.
    cases.push(("lease indices", [&[0x02, 0x01, 0x01, 0x01, 0x00][..], &huge, &[0x05; 16]].concat()));
    // Welcome with per-feature normalisation of 4 G values.
    cases.push((
        "welcome offsets",
        [&[0x01, 0x01, 0x01, 0x00, 0x01, 0x01, 0x01, 0x02][..], &huge, &[0x00; 16]].concat(),
    ));
    // Heartbeat with 4 G lease progress entries.
    cases.push(("heartbeat", [&[0x03][..], &huge, &[0x01; 16]].concat()));
    for (name, bytes) in cases {
        assert!(bytes.len() <= 64, "{name}");
        let (result, largest) = largest_allocation(|| Frame::decode(&bytes));
        assert_eq!(result, Err(DecodeError::Incomplete), "{name}");
        assert!(largest <= 4096, "{name}: decoding {} bytes allocated {largest} bytes at once", bytes.len());
    }
}

#[test]
fn decoding_a_chunk_borrows_its_bytes() {
    let payload = vec![3u8; MAX_CHUNK_BYTES];
    let frame = transfer_frames(TransferId(1), TransferKind::Shard { shard: hash(0) }, &payload).nth(1).unwrap();
    let bytes = frame.encode();
    let (decoded, largest) = largest_allocation(|| Frame::decode(&bytes).unwrap());
    assert_eq!(largest, 0, "decoding a chunk copies nothing");
    let Frame::Chunk(chunk) = decoded else { panic!("not a chunk: {}", decoded.name()) };
    assert!(matches!(chunk.bytes, Cow::Borrowed(_)));
    assert_eq!(chunk.bytes.len(), MAX_CHUNK_BYTES);
}

/// Mutates a valid encoding the way a broken or hostile peer might.
fn mutate(rng: &mut ChaCha8Rng, bytes: &mut Vec<u8>) {
    for _ in 0..rng.random_range(1..=3) {
        let len = bytes.len();
        match rng.random_range(0..6) {
            0 if len > 0 => {
                let at = rng.random_range(0..len);
                bytes[at] ^= 1 << rng.random_range(0..8);
            }
            1 if len > 0 => bytes.truncate(rng.random_range(0..len)),
            2 => {
                let at = rng.random_range(0..=len);
                let count = rng.random_range(1..=8);
                let noise: Vec<u8> = (0..count).map(|_| rng.random()).collect();
                bytes.splice(at..at, noise);
            }
            3 if len > 0 => {
                // Overwrite a byte with a long varint, as a tampered length prefix.
                let at = rng.random_range(0..len);
                let prefix = varint(rng.random_range(0..=u64::from(u32::MAX)) << rng.random_range(0..32));
                bytes.splice(at..=at, prefix);
            }
            4 if len > 0 => {
                let at = rng.random_range(0..len);
                bytes.remove(at);
            }
            _ => bytes.push(rng.random()),
        }
    }
}

#[test]
fn random_and_mutated_input_never_panics() {
    let mut rng = ChaCha8Rng::seed_from_u64(0xda16);
    let mut bases: Vec<Vec<u8>> = sample_frames().iter().map(|(_, f)| f.encode()).collect();
    bases.extend(
        transfer_frames(TransferId(4), TransferKind::Params { version: 2 }, &[0x42; 4 * 300]).map(|f| f.encode()),
    );
    let mut reassembler = Reassembler::new(1 << 20);
    let (mut decoded, mut transfers) = (0, 0);
    for round in 0..20_000 {
        let input = if round % 4 == 0 {
            let len = rng.random_range(0..64);
            (0..len).map(|_| rng.random()).collect()
        } else {
            let mut bytes = bases[rng.random_range(0..bases.len())].clone();
            mutate(&mut rng, &mut bytes);
            bytes
        };
        // Interleave an untouched transfer so that the reassembler also sees valid sequences.
        let input = match round % 10 {
            1 => bases[bases.len() - 2].clone(),
            2 => bases[bases.len() - 1].clone(),
            _ => input,
        };
        let (result, largest) = largest_allocation(|| Frame::decode(&input));
        assert!(largest <= 64 << 10, "round {round}: {} bytes allocated {largest} at once", input.len());
        if let Ok(frame) = result {
            decoded += 1;
            // Whatever decodes re-encodes to bytes that decode and encode the same; compared as bytes
            // because a frame holding NaN is not equal to itself.
            let encoded = frame.encode();
            let again = Frame::decode(&encoded).map(|again| again.encode());
            assert_eq!(again, Ok(encoded), "round {round}");
            if let Ok(Some(_)) = reassembler.feed(&frame) {
                transfers += 1;
            }
        }
    }
    // The mutations are not so harsh that nothing decodes.
    assert!(decoded > 2_000, "only {decoded} inputs decoded");
    assert!(transfers > 0);
}

/// This crate's directory in the checkout the test runs in: read when it runs (cargo sets it for tests), not
/// compiled in, since with a shared target directory a test binary built in one clone may run in another.
fn manifest_dir() -> PathBuf {
    PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo test sets CARGO_MANIFEST_DIR"))
}

#[test]
fn provider_keys_read_back_from_their_hex_and_refuse_anything_else() {
    let key = ProviderKey(std::array::from_fn(|i| u8::try_from(i * 7).unwrap_or(0)));
    assert_eq!(ProviderKey::from_hex(&key.to_hex()), Some(key));
    assert_eq!(ProviderKey::from_hex(&key.to_hex().to_uppercase()), Some(key));
    assert_eq!(
        ProviderKey::from_hex(&format!("{}\n", key.to_hex())),
        Some(key),
        "a trailing newline is kept by editors"
    );
    let hex = key.to_hex();
    for bad in
        [String::new(), hex[..62].to_owned(), format!("{hex}00"), format!("g{}", &hex[1..]), format!("+{}", &hex[1..])]
    {
        assert_eq!(ProviderKey::from_hex(&bad), None, "{bad:?}");
    }
    assert_eq!(format!("{key:?}"), "ProviderKey(..)", "the key is a secret and never printed");
}

//! Replays every saved fuzz input (seeds, and any input that once crashed a target)
//! through the same code the fuzz targets run, plus a little random fuzzing in every
//! test run. See fuzz/README.md.

use std::path::Path;

fn replay(dir: &str, run: fn(&[u8])) -> usize {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/regressions")
        .join(dir);
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        let outcome = std::panic::catch_unwind(|| run(&data));
        assert!(outcome.is_ok(), "{} panics again", path.display());
        n += 1;
    }
    n
}

#[test]
fn saved_frame_inputs_never_panic() {
    assert!(replay("frames", crate::hub::testkit::fuzz_frames) > 0);
}

#[test]
fn saved_hub_inputs_never_panic() {
    assert!(replay("hub", crate::hub::testkit::fuzz_hub) > 0);
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(128))]

    /// A little of the fuzzer's work in every test run: random scripts against the hub.
    #[test]
    fn random_client_scripts_never_panic(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)) {
        crate::hub::testkit::fuzz_hub(&data);
    }

    #[test]
    fn random_bytes_never_panic_the_decoder(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..2048)) {
        crate::hub::testkit::fuzz_frames(&data);
    }
}

//! Arbitrary bytes through the frame decoder and the message parsers.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| chat::hub::testkit::fuzz_frames(data));

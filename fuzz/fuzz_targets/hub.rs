//! Arbitrary client behaviour against the whole connection state machine and handlers.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| chat::hub::testkit::fuzz_hub(data));

#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzzing::program_config(data));

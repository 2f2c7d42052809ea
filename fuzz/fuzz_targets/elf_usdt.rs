#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzzing::elf_usdt(data));

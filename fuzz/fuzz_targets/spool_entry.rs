//! Spool entries read back from the capture worker's volume (after a crash, a full disk or a
//! foreign file): any bytes parse to an entry or give an error, never a panic.
#![no_main]

use autotuner_capture::spool::parse_entry;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(entry) = parse_entry(data) {
        let pictures: usize = entry.crops.iter().map(Vec::len).sum::<usize>() + entry.frame.len();
        assert!(
            pictures <= data.len(),
            "the pictures come from the entry's own bytes"
        );
    }
});

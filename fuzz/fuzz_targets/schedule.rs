//! `--interval`, `--debounce` and friends, and `--schedule` cron
//! expressions, as typed by users and read from the environment.
#![no_main]

use credsync::daemon::trigger::schedule::{Schedule, parse_duration};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = parse_duration(text);
    if let Ok(schedule) = Schedule::cron(text) {
        let _ = schedule.next_delay();
    }
});

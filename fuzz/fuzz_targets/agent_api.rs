//! What agents and operators send the server: every JSON body the two APIs
//! decode, then driven through the scheduler. Decoding never panics, and no
//! sequence of decoded requests panics the scheduler.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rackcast_engine::sched::api::{JobSpec, PollRequest, RegisterRequest, ReportRequest};
use rackcast_engine::sched::{SchedConfig, Scheduler, State};

fuzz_target!(|data: &[u8]| {
    let mut s = Scheduler::new(SchedConfig::default(), State::default(), 0);
    s.set_image("golden", Some("ab".repeat(32)));
    let _ = s.add_target(0, "52:54:00:00:00:01", "t1");
    let mut now = 1;
    // Input: JSON documents separated by NUL bytes, each tried as every body.
    for doc in data.split(|b| *b == 0).take(64) {
        now += 1_000;
        if let Ok(r) = serde_json::from_slice::<RegisterRequest>(doc) {
            let _ = s.register(now, &r.mac, &r.env, r.inventory, r.running);
        }
        if let Ok(p) = serde_json::from_slice::<PollRequest>(doc) {
            let _ = s.poll(now, &p.mac, p.running);
        }
        if let Ok(r) = serde_json::from_slice::<ReportRequest>(doc) {
            let _ = s.report(now, &r.mac, r.task, r.report);
        }
        if let Ok(j) = serde_json::from_slice::<JobSpec>(doc) {
            let _ = s.submit(now, j);
        }
        let _ = s.poll(now, "52:54:00:00:00:01", None);
        s.handle_timeout(now);
        while s.poll_action().is_some() {}
        let _ = s.drain_changes();
    }
});

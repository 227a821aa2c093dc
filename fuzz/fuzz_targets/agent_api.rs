//! What agents and operators send the server: every JSON body the two APIs
//! decode, then driven through the scheduler. Decoding never panics, and no
//! sequence of decoded requests panics the scheduler.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rackcast_engine::sched::api::{JobSpec, PollRequest, RegisterRequest, ReportRequest};
use rackcast_engine::sched::{MacAddr, SchedConfig, Scheduler, State};

fuzz_target!(|data: &[u8]| {
    let mut s = Scheduler::new(SchedConfig::default(), State::default(), 0);
    s.set_image("golden", Some("ab".repeat(32)));
    let known = MacAddr([0x52, 0x54, 0, 0, 0, 1]);
    let _ = s.add_target(0, known, "t1");
    let mut now = 1;
    // Input: JSON documents separated by NUL bytes, each tried as every body.
    for doc in data.split(|b| *b == 0).take(64) {
        now += 1_000;
        if let Ok(r) = serde_json::from_slice::<RegisterRequest>(doc) {
            // The server parses the claimed MAC at its edge, as here.
            if let Ok(mac) = MacAddr::parse(&r.mac) {
                let _ = s.register(now, mac, &r.env, r.inventory, r.running);
            }
        }
        if let Ok(p) = serde_json::from_slice::<PollRequest>(doc) {
            if let Ok(mac) = MacAddr::parse(&p.mac) {
                let _ = s.poll(now, mac, p.running);
            }
        }
        if let Ok(r) = serde_json::from_slice::<ReportRequest>(doc) {
            if let Ok(mac) = MacAddr::parse(&r.mac) {
                let _ = s.report(now, mac, r.task, r.report);
            }
        }
        if let Ok(j) = serde_json::from_slice::<JobSpec>(doc) {
            let _ = s.submit(now, j);
        }
        let _ = s.poll(now, known, None);
        s.handle_timeout(now);
        while s.poll_action().is_some() {}
        let _ = s.drain_changes();
    }
});

//! criterion benches live in `benches/`, one file per subject; run them with
//! `cargo bench -p bench`. This library holds what they share with the
//! instruction counter (`src/bin/frame_instructions.rs`) and `loadgen`:
//!
//! * [`rig`]: the in-memory batch datapath, judged as a relay worker judges
//!   a batch, and a quick wall-clock timing of it;
//! * [`instructions`]: the instructions per frame callgrind counted,
//!   committed in `bench/instructions.json`, and their comparison;
//! * [`hw`]: the CPU's own instruction and cycle counters, where the
//!   machine exposes them (`perf_event_open`);
//! * [`cost`]: the policy's cost side by side (ns, instructions) for
//!   `loadgen`'s report.

pub mod cost;
pub mod hw;
pub mod instructions;
pub mod rig;

//! criterion benches live in `benches/`, one file per subject; run them with
//! `cargo bench -p bench`. This library holds nothing but shared fixtures.

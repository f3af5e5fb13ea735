//! `frame_instructions`: instructions per frame of the in-memory datapath
//! ([`bench::rig`]), counted by callgrind.
//!
//! `frame_instructions run CASE FRAMES` judges FRAMES frames of CASE
//! through the rig and checks their verdicts: the program callgrind runs.
//! `frame_instructions measure` runs it under
//! `valgrind --tool=callgrind --toggle-collect=<Rig::process_batch>` for
//! every case at two frame counts, and takes the difference over the
//! difference of frames: the instructions of setup, arming and the first
//! calls cancel, what is left is the steady cost of one frame in
//! `process_batch`. It then compares the figures with
//! `bench/instructions.json` (exit status 2 when one grew by more than
//! `--threshold` percent) or, with `--write`, records them there.
//! `scripts/instructions.sh` builds it and runs `measure`.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::{bail, ensure, Context as _};
use bench::instructions::{Comparison, Figure, Figures};
use bench::rig::{Case, Rig, BATCH};
use clap::{Parser, Subcommand};

/// Exit status when a figure grew by more than the threshold.
const EXIT_REGRESSION: u8 = 2;

/// The function whose instructions callgrind counts (a pattern of its
/// demangled name).
const MEASURED: &str = "bench::rig::Rig::process_batch*";

#[derive(Debug, Parser)]
#[command(about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Judge FRAMES frames (a multiple of 64) of CASE through the rig and
    /// check their verdicts (what callgrind runs).
    Run {
        /// A case: forward/64B, vpn/1400B, ztna-deny10/1400B...
        case: Case,
        /// Frames to judge.
        frames: u64,
    },
    /// Count every case under callgrind and compare with the recorded
    /// figures (or record them with --write).
    Measure {
        /// Record the figures in the figures file instead of comparing.
        #[arg(long)]
        write: bool,
        /// Fail when a figure grew by more than this percent.
        #[arg(long, default_value_t = 2.0)]
        threshold: f64,
        /// The figures file.
        #[arg(long, default_value = "bench/instructions.json")]
        figures: PathBuf,
        /// Where callgrind writes its output files.
        #[arg(long, default_value = "target/callgrind")]
        out_dir: PathBuf,
        /// The two frame counts per case (multiples of 64).
        #[arg(long, value_delimiter = ',', default_value = "2560,12800")]
        frames: Vec<u64>,
        /// Count everything twice and fail unless both counts of every
        /// case agree within 0.1 %.
        #[arg(long)]
        check_stable: bool,
        /// Only these cases (comma separated; default: all).
        #[arg(long, value_delimiter = ',')]
        cases: Vec<Case>,
    },
}

fn main() -> ExitCode {
    match real_main() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("frame_instructions: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn real_main() -> anyhow::Result<ExitCode> {
    match Cli::parse().command {
        Cmd::Run { case, frames } => {
            run(case, frames)?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Measure {
            write,
            threshold,
            figures,
            out_dir,
            frames,
            check_stable,
            cases,
        } => {
            ensure!(
                threshold.is_finite() && threshold >= 0.0,
                "--threshold must be a percentage, not {threshold}"
            );
            let [n1, n2] = frames[..] else {
                bail!("--frames takes two frame counts, not {}", frames.len());
            };
            ensure!(
                n1 < n2 && n1 % BATCH as u64 == 0 && n2 % BATCH as u64 == 0,
                "--frames: {n1} < {n2} must hold, both multiples of {BATCH}"
            );
            let cases = if cases.is_empty() {
                Case::ALL.to_vec()
            } else {
                cases
            };
            let baseline = if write {
                None
            } else {
                let text = std::fs::read_to_string(&figures)
                    .with_context(|| format!("cannot read {}", figures.display()))?;
                Some(Figures::parse(&text)?)
            };
            std::fs::create_dir_all(&out_dir)
                .with_context(|| format!("cannot create {}", out_dir.display()))?;
            let now = measure(&cases, n1, n2, &out_dir)?;
            if check_stable {
                let again = measure(&cases, n1, n2, &out_dir)?;
                stable(&now, &again)?;
            }
            match baseline {
                None => {
                    let text = serde_json::to_string_pretty(&now)? + "\n";
                    std::fs::write(&figures, text)
                        .with_context(|| format!("cannot write {}", figures.display()))?;
                    for f in &now.cases {
                        println!("{:<20} {:>10.1}", f.case, f.instructions_per_frame);
                    }
                    eprintln!("recorded in {} ({})", figures.display(), now.commit);
                    if now.commit.ends_with("-dirty") {
                        eprintln!("note: the worktree has uncommitted changes; record again from a commit");
                    }
                    Ok(ExitCode::SUCCESS)
                }
                Some(base) => {
                    let cmp = Comparison::new(&base, &now, threshold);
                    println!(
                        "instructions per frame (callgrind), baseline {} ({}) against now {}:",
                        base.commit, base.date, now.commit
                    );
                    print!("{cmp}");
                    let regressed: Vec<String> = cmp
                        .regressions()
                        .map(|c| format!("{} {:+.2} %", c.case, c.percent().unwrap_or(0.0)))
                        .collect();
                    if regressed.is_empty() {
                        println!("no figure grew by more than {threshold} %");
                        Ok(ExitCode::SUCCESS)
                    } else {
                        eprintln!(
                            "frame_instructions: instructions per frame grew by more than {threshold} %: {}",
                            regressed.join(", ")
                        );
                        Ok(ExitCode::from(EXIT_REGRESSION))
                    }
                }
            }
        }
    }
}

/// Judges `frames` frames of `case` and checks every verdict.
fn run(case: Case, frames: u64) -> anyhow::Result<()> {
    ensure!(
        frames % BATCH as u64 == 0,
        "frames must be a multiple of {BATCH}, not {frames}"
    );
    let mut rig = Rig::new(case);
    for _ in 0..frames / BATCH as u64 {
        rig.arm();
        std::hint::black_box(rig.process_batch());
    }
    rig.check()?;
    ensure!(
        rig.counters().frames == frames,
        "{}: judged {} frames, not {frames}",
        case.label(),
        rig.counters().frames
    );
    Ok(())
}

/// Counts every case at `n1` and `n2` frames.
fn measure(cases: &[Case], n1: u64, n2: u64, out_dir: &Path) -> anyhow::Result<Figures> {
    let exe = std::env::current_exe().context("cannot find this program's path")?;
    let mut figures = Vec::new();
    for &case in cases {
        let i1 = callgrind(&exe, case, n1, out_dir)?;
        let i2 = callgrind(&exe, case, n2, out_dir)?;
        ensure!(
            i1 > 0 && i2 > i1,
            "{}: callgrind counted {i1} instructions at {n1} frames and {i2} at {n2}: \
             does `{MEASURED}` still exist (not inlined, not renamed)?",
            case.label()
        );
        let per_frame = (i2 - i1) as f64 / (n2 - n1) as f64;
        eprintln!(
            "{:<20} {i1} instructions at {n1} frames, {i2} at {n2}: {per_frame:.2} per frame",
            case.label()
        );
        figures.push(Figure {
            case: case.label(),
            instructions_per_frame: (per_frame * 100.0).round() / 100.0,
        });
    }
    Ok(Figures {
        commit: output("git", &["describe", "--always", "--dirty", "--abbrev=12"]),
        date: output("date", &["+%F"]),
        rustc: output("rustc", &["--version"]),
        valgrind: output("valgrind", &["--version"]),
        method: format!(
            "valgrind --tool=callgrind --toggle-collect='{MEASURED}', release profile; \
             (I({n2}) - I({n1})) / ({n2} - {n1} frames)"
        ),
        cases: figures,
    })
}

/// The instructions callgrind counted in [`MEASURED`] over `frames` frames
/// of `case`.
fn callgrind(exe: &Path, case: Case, frames: u64, out_dir: &Path) -> anyhow::Result<u64> {
    let out = out_dir.join(format!("{}.{frames}.out", case.label().replace('/', "_")));
    let status = Command::new("valgrind")
        .arg("--tool=callgrind")
        .arg("--quiet")
        .arg(format!("--toggle-collect={MEASURED}"))
        .arg(format!("--callgrind-out-file={}", out.display()))
        .arg(exe)
        .args(["run", &case.label(), &frames.to_string()])
        .status()
        .context("cannot run valgrind (Debian: apt-get install valgrind)")?;
    ensure!(
        status.success(),
        "{}: the run under callgrind failed ({status})",
        case.label()
    );
    let text =
        std::fs::read_to_string(&out).with_context(|| format!("cannot read {}", out.display()))?;
    parse_total(&text).with_context(|| format!("{}: no instruction total", out.display()))
}

/// The `totals:` (or else `summary:`) line of a callgrind output file: the
/// instructions collected, with the default event set (`Ir` only).
fn parse_total(text: &str) -> anyhow::Result<u64> {
    let line = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next())
            .map(str::to_owned)
    };
    let value = line("totals:")
        .or_else(|| line("summary:"))
        .context("callgrind wrote neither totals: nor summary:")?;
    value
        .parse()
        .with_context(|| format!("{value:?} is not a count"))
}

/// Fails unless both sets agree within 0.1 % on every case.
fn stable(a: &Figures, b: &Figures) -> anyhow::Result<()> {
    for (x, y) in a.cases.iter().zip(&b.cases) {
        let diff = (x.instructions_per_frame - y.instructions_per_frame).abs()
            / x.instructions_per_frame
            * 100.0;
        eprintln!(
            "{:<20} {:.2} then {:.2}: {diff:.4} % apart",
            x.case, x.instructions_per_frame, y.instructions_per_frame
        );
        ensure!(diff <= 0.1, "{}: two counts {diff:.3} % apart", x.case);
    }
    Ok(())
}

/// A command's first line of output, or "unknown".
fn output(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.lines().next().map(str::to_owned))
        .unwrap_or_else(|| "unknown".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_total_of_a_callgrind_file() {
        let text =
            "version: 1\ncmd: x\nevents: Ir\nsummary: 1234\nfl=(1) a.rs\n0 5\ntotals: 1234\n";
        assert_eq!(parse_total(text).unwrap(), 1234);
        assert_eq!(parse_total("events: Ir\nsummary: 77\n").unwrap(), 77);
        assert!(parse_total("events: Ir\n").is_err());
        assert!(parse_total("totals: many\n").is_err());
    }
}

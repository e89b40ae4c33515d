//! The `projector` binary as users call it.
#![allow(clippy::unwrap_used, missing_docs)]

use std::path::Path;
use std::process::{Command, Output};

fn projector(args: &[&str], dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_projector")).args(args).current_dir(dir).output().unwrap()
}

fn shipped() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../pipelines.yaml").display().to_string()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn help_names_every_command() {
    let dir = tempfile::tempdir().unwrap();
    let out = projector(&["--help"], dir.path());
    assert!(out.status.success());
    let help = text(&out.stdout);
    for command in ["demo", "run", "check", "generate"] {
        assert!(help.contains(command), "{help}");
    }
    let run_help = text(&projector(&["run", "--help"], dir.path()).stdout);
    for flag in ["--config", "--input", "--output-dir", "--workers", "--until-idle"] {
        assert!(run_help.contains(flag), "{run_help}");
    }
}

#[test]
fn file_runs_give_identical_files_for_any_worker_count() {
    let dir = tempfile::tempdir().unwrap();
    let generated = projector(
        &["generate", "--events", "4000", "--bad-ratio", "0.02", "--seed", "3", "-o", "events.jsonl"],
        dir.path(),
    );
    assert!(generated.status.success(), "{}", text(&generated.stderr));
    let config = shipped();
    let one =
        projector(&["run", "-c", &config, "--input", "events.jsonl", "--output-dir", "one", "-w", "1"], dir.path());
    assert!(one.status.success(), "{}", text(&one.stderr));
    let two = projector(
        &["run", "-c", &config, "--input", "events.jsonl", "--output-dir", "two", "-w", "2", "--batch-records", "300"],
        dir.path(),
    );
    assert!(two.status.success(), "{}", text(&two.stderr));
    for file in ["order_summary.jsonl", "product_sales.jsonl", "customer_ltv.jsonl", "dead_letters.jsonl"] {
        let a = std::fs::read(dir.path().join("one").join(file)).unwrap();
        let b = std::fs::read(dir.path().join("two").join(file)).unwrap();
        assert!(!a.is_empty(), "{file} is empty");
        assert!(a == b, "{file} differs between -w 1 and -w 2");
    }
    let summary = text(&one.stderr);
    assert!(summary.contains("dead letters"), "{summary}");
}

#[test]
fn check_reports_errors_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("bad.yaml"),
        "views:\n  v:\n    from: order\n    measures:\n      n: { cnt: \"*\" }\n",
    )
    .unwrap();
    let out = projector(&["check", "-c", "bad.yaml"], dir.path());
    assert_eq!(out.status.code(), Some(2));
    let errors = text(&out.stderr);
    assert!(errors.contains("bad.yaml:3:11: view \"v\": 'from' names \"order\", which is not a relation"), "{errors}");
    assert!(errors.contains("bad.yaml:5:12: view \"v\": 'measures.n.cnt' is not a known key"), "{errors}");
    let ok = projector(&["check", "-c", &shipped()], dir.path());
    assert!(ok.status.success(), "{}", text(&ok.stderr));
    assert!(text(&ok.stdout).contains("ok (1 sources, 3 views, 3 sinks)"));
    for example in ["kafka.yaml", "sinks.yaml"] {
        let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples").join(example).display().to_string();
        let ok = projector(&["check", "-c", &example], dir.path());
        assert!(ok.status.success(), "{example}: {}", text(&ok.stderr));
    }
}

#[test]
fn bad_input_paths_fail_with_a_message() {
    let dir = tempfile::tempdir().unwrap();
    let out = projector(&["run", "-c", &shipped(), "--input", "missing.jsonl", "--output-dir", "out"], dir.path());
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("missing.jsonl: no such file"), "{}", text(&out.stderr));
    let out = projector(&["run", "-c", "nowhere.yaml", "--input", "x", "--output-dir", "out"], dir.path());
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("nowhere.yaml:0:0: config: cannot be read"), "{}", text(&out.stderr));
}

#[test]
fn yaml_file_source_and_sinks_run_until_idle() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(shipped(), dir.path().join("pipelines.yaml")).unwrap();
    let generated =
        projector(&["generate", "--events", "2000", "--bad-ratio", "0.01", "-o", "events.jsonl"], dir.path());
    assert!(generated.status.success());
    let out = projector(&["run", "-c", "pipelines.yaml", "--until-idle", "-w", "2"], dir.path());
    assert!(out.status.success(), "{}", text(&out.stderr));
    for file in ["order_summary.jsonl", "product_sales.jsonl", "customer_ltv.jsonl", "dead_letters.jsonl"] {
        let written = std::fs::read_to_string(dir.path().join("out").join(file)).unwrap();
        assert!(written.lines().count() > 0, "{file}");
    }
    // The same rows as a file run of the same input.
    let file_run =
        projector(&["run", "-c", "pipelines.yaml", "--input", "events.jsonl", "--output-dir", "direct"], dir.path());
    assert!(file_run.status.success());
    for file in ["order_summary.jsonl", "customer_ltv.jsonl"] {
        assert_eq!(
            std::fs::read(dir.path().join("out").join(file)).unwrap(),
            std::fs::read(dir.path().join("direct").join(file)).unwrap()
        );
    }
}

#[test]
fn demo_runs_without_services() {
    let dir = tempfile::tempdir().unwrap();
    let out = projector(&["demo", "--seconds", "4", "--rate", "200", "--listen", "127.0.0.1:0"], dir.path());
    assert!(out.status.success(), "{}", text(&out.stderr));
    let screen = text(&out.stdout);
    assert!(screen.contains("top stores by revenue on"), "{screen}");
    assert!(screen.contains("events/s"), "{screen}");
    // Orders went through the API into the views.
    let placed: u64 = screen
        .lines()
        .rev()
        .find_map(|line| line.strip_prefix("commands: ")?.split(' ').next()?.parse().ok())
        .unwrap_or(0);
    assert!(placed > 100, "{screen}");
    let summary = text(&out.stderr);
    assert!(summary.contains("view order_summary: 10 rows"), "{summary}");
}

#[test]
fn sigterm_finishes_the_batch_flushes_and_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(shipped(), dir.path().join("pipelines.yaml")).unwrap();
    let generated = projector(&["generate", "--events", "3000", "-o", "events.jsonl"], dir.path());
    assert!(generated.status.success());
    // Without --until-idle the run keeps serving after the file is read.
    let mut child = Command::new(env!("CARGO_BIN_EXE_projector"))
        .args(["run", "-c", "pipelines.yaml", "-w", "2"])
        .current_dir(dir.path())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !dir.path().join("out/order_summary.jsonl").exists() {
        assert!(std::time::Instant::now() < deadline, "the run wrote nothing");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(child.try_wait().unwrap().is_none(), "the run should keep going until stopped");
    let killed = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(killed.success());
    let output = child.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    assert!(text(&output.stderr).contains("view order_summary:"), "{}", text(&output.stderr));
    let direct =
        projector(&["run", "-c", "pipelines.yaml", "--input", "events.jsonl", "--output-dir", "direct"], dir.path());
    assert!(direct.status.success());
    assert_eq!(
        std::fs::read(dir.path().join("out/customer_ltv.jsonl")).unwrap(),
        std::fs::read(dir.path().join("direct/customer_ltv.jsonl")).unwrap()
    );
}

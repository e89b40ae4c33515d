//! Runs a file run with the system allocator (for heap profilers such as
//! valgrind's massif): `plain_alloc_run CONFIG EVENTS OUT_DIR`.
fn main() {
    let args: Vec<String> = std::env::args().collect();
    let plan = projector::commands::load(std::path::Path::new(&args[1])).expect("config");
    let options = projector_dataflows::runner::RunOptions { workers: 1, ..Default::default() };
    projector::commands::run_file(
        plan,
        std::path::Path::new(&args[2]),
        std::path::Path::new(&args[3]),
        1_000_000,
        options,
    )
    .expect("run");
}

//! The `gantry` command line: a thin layer over the gantry-host library.

fn main() -> std::process::ExitCode {
    // SIGPIPE stays ignored (Rust's default): a closed stdout is an EPIPE that `report::out` turns
    // into silence, so `gantry run … | head -1` finishes the run instead of dying mid-step.
    gantry_host::cli::main()
}

//! The `gantry` command line: a thin layer over the gantry-host library.

fn main() -> std::process::ExitCode {
    gantry_host::cli::main()
}

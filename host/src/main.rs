//! The `gantry` command line: a thin layer over the gantry-host library.

fn main() -> std::process::ExitCode {
    // Rust ignores SIGPIPE, so `gantry plan p.yaml | head` would panic on a closed pipe;
    // a command-line tool should simply stop, as other Unix tools do.
    #[cfg(unix)]
    // SAFETY: restoring the default disposition of one signal before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    gantry_host::cli::main()
}

//! `cargo-rmlx`: the command-line front-end. All logic lives in the `rmlx` library.
fn main() -> std::process::ExitCode {
    rmlx::template::sandbox::init(); // renders chat templates in limited worker processes
    rmlx::cli::main()
}

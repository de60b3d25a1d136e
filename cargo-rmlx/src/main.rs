//! `cargo-rmlx`: the command-line front-end. All logic lives in the `rmlx` library.
fn main() -> std::process::ExitCode {
    rmlx::engine::blas::quiet_at_start(); // no OpenBLAS worker spinning while the model loads
    rmlx::template::sandbox::init(); // renders chat templates in limited worker processes
    rmlx::cli::main()
}

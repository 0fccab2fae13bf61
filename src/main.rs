//! The `bake` binary: everything is in the library; this only hands over to [`bake::cli`].

fn main() -> std::process::ExitCode {
    bake::cli::main()
}

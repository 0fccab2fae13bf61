fn main() -> std::process::ExitCode {
    bake::cli::main()
}

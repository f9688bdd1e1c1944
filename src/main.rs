fn main() -> std::process::ExitCode {
    onefs::cli::main()
}

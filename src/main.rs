fn main() -> std::process::ExitCode {
    ecl_gate::cli::run()
}

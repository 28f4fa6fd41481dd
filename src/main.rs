//! The `parkade` binary: everything lives in the library; see `parkade::cli`.

fn main() -> std::process::ExitCode {
    parkade::cli::main()
}

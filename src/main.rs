use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    credsync::cli::main().await
}

//! `cargo run -p berth-tests --bin berth-test-image`: builds the test
//! workload image (`berth-test-workload:dev`) in the local Docker engine —
//! a static `berth-workload` in a `FROM scratch` image, no registry needed.
//! The Docker tests build it themselves when it is missing.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match berth_tests::docker::ensure_test_image().await {
        Ok(()) => {
            println!("{} is ready", berth_tests::docker::TEST_IMAGE);
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("berth-test-image: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

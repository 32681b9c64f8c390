//! The `rune` binary: parse the command line, run it, exit with the documented code.

use clap::Parser;

fn main() {
    let cli = rune::cli::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            std::process::exit(rune::cli::EXIT_USAGE);
        }
    };
    let code = runtime.block_on(rune::cli::main(cli));
    std::process::exit(code);
}

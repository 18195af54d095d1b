//! `firefleet`: the one binary. Parses the command line into a command enum and dispatches
//! (`up`, `server`, `agent`, `vm`, `node`, `token`, `join-token`, `image`). Thin glue over the
//! library crates; `anyhow` lives only here.

mod args;
mod cmd_audit;
mod cmd_bench;
mod cmd_eval;
mod cmd_fn;
mod cmd_guard;
mod cmd_image;
mod cmd_run;
mod cmd_vm;
mod output;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = args::Cli::parse();
    // A client command piped into `head` or `grep -q` ends quietly when its reader goes, like
    // any Unix tool (Rust ignores SIGPIPE, so print! would panic on EPIPE). The long-running
    // processes keep ignoring it: their sockets report EPIPE as errors.
    if !matches!(
        cli.command,
        args::Command::Up(_) | args::Command::Server(_) | args::Command::Agent(_)
    ) {
        // SAFETY: restoring a signal's default disposition at start-up, before any thread.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    let filter = std::env::var("FIREFLEET_LOG").unwrap_or_else(|_| "info".to_owned());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .try_init();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(dispatch(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            for cause in e.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::FAILURE
        }
    }
}

async fn dispatch(cli: args::Cli) -> anyhow::Result<()> {
    use args::Command;
    let g = cli.global;
    match cli.command {
        Command::Up(a) => cmd_run::up(a).await,
        Command::Server(a) => cmd_run::server(a).await,
        Command::Agent(a) => cmd_run::agent(a).await,
        Command::Vm(c) => cmd_vm::vm(&g, c).await,
        Command::Plan(a) => cmd_vm::plan(&g, a).await,
        Command::Node(args::NodeCommand::Ls) => cmd_vm::node_ls(&g).await,
        Command::Node(args::NodeCommand::Cordon { node }) => {
            cmd_vm::node_cordon(&g, &node, true).await
        }
        Command::Node(args::NodeCommand::Uncordon { node }) => {
            cmd_vm::node_cordon(&g, &node, false).await
        }
        Command::Node(args::NodeCommand::Drain { node, wait }) => {
            cmd_vm::node_drain(&g, &node, wait).await
        }
        Command::Token(args::TokenCommand::Create { tenant }) => {
            cmd_vm::token_create(&g, &tenant).await
        }
        Command::JoinToken(args::JoinTokenCommand::Create { ttl_secs }) => {
            cmd_vm::join_token_create(&g, ttl_secs).await
        }
        Command::Image(c) => cmd_image::image(&g, c).await,
        Command::Bench(args::BenchCommand::VmRun { count, memory }) => {
            cmd_bench::vm_run(&g, count, memory).await
        }
        Command::Bench(args::BenchCommand::Fn {
            count,
            warm,
            memory,
        }) => cmd_bench::function(&g, count, warm, memory).await,
        Command::Bench(args::BenchCommand::Restore { count, state_dir }) => {
            cmd_bench::restore(&g, count, state_dir).await
        }
        Command::Fn(c) => cmd_fn::function(&g, c).await,
        Command::Guard(c) => cmd_guard::run(&g, c),
        Command::Threat(c) => cmd_guard::threat(&g, c).await,
        Command::Audit(c) => cmd_audit::run(&g, c).await,
        Command::Eval(c) => cmd_eval::run(&g, c),
    }
}

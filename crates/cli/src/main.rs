//! `firefleet`: the one binary. Parses the command line into a command enum and dispatches
//! (`up`, `server`, `agent`, `vm`, `node`, `token`, `join-token`, `image`, `policy`, ...).
//! Thin glue over the library crates; `anyhow` lives only here.

mod args;
mod cmd_audit;
mod cmd_bench;
mod cmd_bench_admission;
mod cmd_cluster;
mod cmd_eval;
mod cmd_fn;
mod cmd_guard;
mod cmd_image;
mod cmd_policy;
mod cmd_run;
mod cmd_tenant;
mod cmd_token;
mod cmd_vm;
mod output;

use std::process::ExitCode;

use clap::Parser;

/// Turns the panic of a `print!` to a closed stdout into a quiet exit (status 141).
fn quiet_on_closed_stdout() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let msg = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        if msg.starts_with("failed printing to stdout") && msg.contains("Broken pipe") {
            std::process::exit(141);
        }
        default(info);
    }));
}

fn main() -> ExitCode {
    let cli = args::Cli::parse();
    // A command piped into `head` or `grep -q` ends quietly when its reader goes, like any Unix
    // tool. SIGPIPE stays ignored (Rust's default): this process also writes into pipes of its
    // own children (decompressors while building an image), which may close them early, and
    // must see EPIPE there, not die. So only a print to our stdout that fails on a closed pipe
    // (print! panics then) ends the process, with the status a shell gives SIGPIPE.
    quiet_on_closed_stdout();
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
        Command::Cluster(c) => cmd_cluster::cluster(&g, c).await,
        Command::Store(c) => cmd_cluster::store(&g, c).await,
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
        Command::Node(args::NodeCommand::Rm { node }) => cmd_vm::node_rm(&g, &node).await,
        Command::Node(args::NodeCommand::Drain { node, wait }) => {
            cmd_vm::node_drain(&g, &node, wait).await
        }
        Command::Token(c) => cmd_token::token(&g, c).await,
        Command::JoinToken(args::JoinTokenCommand::Create {
            ttl_secs,
            node,
            cordon,
            uncordon,
        }) => {
            let cordon = (cordon || uncordon).then_some(cordon);
            cmd_vm::join_token_create(&g, ttl_secs, node.as_deref(), cordon).await
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
        Command::Bench(args::BenchCommand::Admission { count, api }) => {
            cmd_bench_admission::admission(&g, count, api).await
        }
        Command::Bench(args::BenchCommand::Creates { count }) => {
            cmd_bench_admission::creates(&g, count).await
        }
        Command::Bench(args::BenchCommand::Restore { count, state_dir }) => {
            cmd_bench::restore(&g, count, state_dir).await
        }
        Command::Fn(c) => cmd_fn::function(&g, c).await,
        Command::Guard(c) => cmd_guard::run(&g, c),
        Command::Threat(c) => cmd_guard::threat(&g, c).await,
        Command::Audit(c) => cmd_audit::run(&g, c).await,
        Command::Eval(c) => cmd_eval::run(&g, c),
        Command::Policy(c) => cmd_policy::policy(&g, c).await,
        Command::Tenant(c) => cmd_tenant::tenant(&g, c).await,
        Command::Compliance(c) => cmd_policy::compliance(&g, c).await,
    }
}

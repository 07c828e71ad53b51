//! `etch`: run one etch member. Flags follow etcd's (`etch --help`).

use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

use etch_node::{Config, Flags, Listeners};

/// mimalloc instead of glibc's malloc: the request path allocates per message (gRPC frames,
/// protobuf, futures) on several threads, and glibc's arenas spent about a tenth of a
/// member's CPU under write load on this machine (malloc, free, consolidation). Built with
/// mimalloc's `no_thp` feature (workspace `Cargo.toml`): mimalloc would otherwise ask for
/// transparent huge pages on its arenas, and every page it returns and takes again is then
/// faulted back as 2 MiB that the kernel zeroes (`clear_page_erms`: about a tenth of a
/// member's CPU under write load here, docs/performance.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let thp = disable_transparent_huge_pages();
    // A panic on one of etch's own threads (the lessor on the main thread; the consensus
    // thread with the WAL and the peer transport, its connection and stream tasks included;
    // the apply and watch threads; the store's workers) stops the process with exit status
    // 2, as a Go panic ends etcd: the runtime would otherwise catch it and leave the member
    // half alive, holding its ports and answering nothing. A panic in a client connection's task
    // (tokio's worker threads) still ends that task only; the member's own long-lived tasks
    // there stop it through `NodeState::spawn_essential`. The default hook prints the message
    // first.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default_hook(info);
        let task_thread = std::thread::current()
            .name()
            .is_some_and(|n| n.starts_with("tokio-"));
        if !task_thread {
            std::process::exit(2);
        }
    }));
    // etcd's environment variables and YAML configuration file become flags first.
    let env: Vec<(String, String)> = std::env::vars().collect();
    let (args, warnings) =
        match etch_node::config::sources::effective_args(std::env::args_os().collect(), &env) {
            Ok(a) => a,
            Err(e) => {
                eprintln!("etch: {e}");
                return ExitCode::from(2);
            }
        };
    let flags = Flags::parse_from(args);
    if flags.version {
        print!("{}", etch_node::config::version_text());
        return ExitCode::SUCCESS;
    }
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(format!("{},raft=warn", flags.log_level)));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match flags.log_format {
        etch_node::config::LogFormat::Json => builder.json().flatten_event(true).init(),
        etch_node::config::LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
    }
    for w in warnings {
        tracing::warn!("{w}");
    }
    if let Err(e) = thp {
        tracing::warn!(error = %e, "cannot turn transparent huge pages off for etch's process");
    }
    let config = match Config::from_flags(&flags) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("etch: {e}");
            return ExitCode::from(2);
        }
    };
    // JWT keys are read here, before anything starts, so a key that does not load is a bad
    // flag (exit 2) as in etcd; the config room itself reads no key files.
    if let etch_node::config::AuthToken::Jwt { .. } = &config.auth_token
        && let Err(reason) = etch_node::service::auth::Jwt::load(&config.auth_token)
    {
        let e = etch_node::config::ConfigError {
            flag: "auth-token",
            value: flags.auth_token.clone(),
            reason,
        };
        eprintln!("etch: {e}");
        return ExitCode::from(2);
    }
    let mut listeners = Listeners::default();
    for (addrs, into) in [
        (&config.listen_native, &mut listeners.native),
        (&config.listen_client, &mut listeners.client),
        (&config.listen_metrics, &mut listeners.metrics),
    ] {
        for addr in addrs {
            match std::net::TcpListener::bind(addr) {
                Ok(l) => into.push(l),
                Err(e) => {
                    eprintln!("etch: cannot listen on {addr}: {e}");
                    return ExitCode::from(1);
                }
            }
        }
    }
    for path in &config.listen_client_unix {
        // etcd removes a socket file left by an earlier run before listening.
        let _ = std::fs::remove_file(path);
        match std::os::unix::net::UnixListener::bind(path) {
            Ok(l) => listeners.client_unix.push(l),
            Err(e) => {
                eprintln!("etch: cannot listen on unix socket {}: {e}", path.display());
                return ExitCode::from(1);
            }
        }
    }
    // A one-member cluster listens for peers too (members may be added), but starts without
    // when the port is taken.
    match std::net::UdpSocket::bind(config.listen_peer) {
        Ok(s) => listeners.peer = Some(s),
        Err(e) if config.peers.is_empty() => {
            eprintln!(
                "etch: not listening for peers on {}: {e} (members cannot be added)",
                config.listen_peer
            );
        }
        Err(e) => {
            eprintln!(
                "etch: cannot listen for peers on {}: {e}",
                config.listen_peer
            );
            return ExitCode::from(1);
        }
    }
    let system = actix_rt::System::with_tokio_rt(|| {
        let mut runtime = tokio::runtime::Builder::new_multi_thread();
        runtime.enable_all();
        // tokio's LIFO slot runs a task woken by the running one next: a connection's h2 task,
        // woken by each response a stream task hands it, then wrote every response on its own
        // (one writev per put). Without the slot the woken connection task queues behind the
        // stream tasks a batch of applied writes woke, and writes their responses together
        // (3 members, alternated pairs: 4-8% more puts/s and 5-8% less CPU per write at 10/100,
        // 9% and 9% at 100/1000).
        // The option needs `--cfg tokio_unstable` (.cargo/config.toml); a build with its own
        // RUSTFLAGS keeps the slot.
        #[cfg(tokio_unstable)]
        runtime.disable_lifo_slot();
        // Client connections get the cores that raft's thread (with the WAL and the peer
        // transport) and apply's do not keep busy under load: one worker on 2 or 3 cores.
        // Key-range reads and other long store work go to the blocking pool, so a worker
        // carries gRPC, HTTP and native requests and single-key reads alone. On this 2-core
        // machine a second worker cost more in wake-ups and work stealing than it added (3
        // members, docs/performance.md). `TOKIO_WORKER_THREADS` still sets the number.
        if std::env::var_os("TOKIO_WORKER_THREADS").is_none() {
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            runtime.worker_threads(cores.saturating_sub(2).max(1));
        }
        runtime
            .build()
            // Without a runtime there is nothing to run; the error is printed by the panic.
            .expect("cannot build the tokio runtime")
    });
    let sockets = config.listen_client_unix.clone();
    let result = system.block_on(etch_node::run(config, listeners, shutdown_signal()));
    // etcd removes its unix socket files when it stops.
    for path in sockets {
        let _ = std::fs::remove_file(path);
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "etch stopped with an error");
            eprintln!("etch: {e}");
            ExitCode::from(1)
        }
    }
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot install a SIGTERM handler");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// Turns transparent huge pages off for this process (Linux `prctl(PR_SET_THP_DISABLE)`; the
/// kernel checks it at each page fault, so it covers the allocator's arenas mapped before
/// `main` too). mimalloc's `no_thp` feature only stops it asking for huge pages; on a host
/// whose `/sys/kernel/mm/transparent_hugepage/enabled` is `always` the kernel would still back
/// its arenas with 2 MiB pages, zeroing one each time a returned page is taken again. With that
/// setting on this machine, three members at 100/1000 (`bench-ab.sh`, the same binary with
/// and without the flag, docs/performance.md) ran 20,851 puts/s at 63 us of CPU per write
/// without the flag and 27,651 at 45 us with it, as with the `madvise` setting.
///
/// # Errors
/// The `prctl` error (a kernel older than 3.15); the caller logs it and goes on.
fn disable_transparent_huge_pages() -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    return rustix::thread::disable_transparent_huge_pages(true).map_err(std::io::Error::from);
    #[cfg(not(target_os = "linux"))]
    Ok(())
}

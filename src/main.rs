use std::process::ExitCode;

fn main() -> ExitCode {
    limit_malloc_arenas();
    raise_open_file_limit();
    // The one TLS crypto provider (Cargo.toml says why ring); set before any
    // client exists, so no dependency can pick another.
    let _ = rustls::crypto::ring::default_provider().install_default();
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime.block_on(credsync::cli::main()),
        Err(err) => {
            eprintln!("error: cannot start the async runtime (threads or epoll refused): {err}");
            ExitCode::FAILURE
        }
    }
}

/// glibc gives every thread that allocates its own malloc arena, and each
/// arena keeps the pages it once held: after a sync the process holds the
/// sum of the arenas' peaks, not the peak of its live heap. One arena keeps
/// RSS near the live heap (measured at 10000 items: 73 MiB -> 58 MiB); the
/// work is network-bound, so the shared lock costs nothing measurable.
/// MALLOC_ARENA_MAX set by the user wins.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn limit_malloc_arenas() {
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only changes a malloc tunable, and runs before
        // any other thread of this process exists.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 1);
        }
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn limit_malloc_arenas() {}

/// Containers often start with a soft limit of 1024 open files while the
/// hard limit is far higher; the HTTP server's connection cap (and the
/// clients' pools) need more headroom than that, so the soft limit is
/// raised to the hard one, as Go's runtime does for every program.
fn raise_open_file_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: get/setrlimit read or write the one struct passed in.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

//! The `tollgate` command: `run`, `check`, `explain`, `keys`, `hash-key`, `inject`,
//! `inject-webhook`, `probe`, `demo-upstream`. Nothing else
//! lives here: each subcommand calls into the library.

use clap::{Parser, Subcommand};

// Pingora allocates per request (headers, buffers, tasks); mimalloc's thread-local free lists
// make that cheaper than glibc malloc, which showed ~11% of CPU in a pass-through profile.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Runs before `main` and before the first allocation (an ELF constructor): mimalloc reserves
/// its arena at the first allocation, and the option must be set before that.
#[cfg(target_os = "linux")]
#[used]
#[link_section = ".init_array"]
static COMMIT_ON_DEMAND: extern "C" fn() = {
    extern "C" fn commit_on_demand() {
        tollgate::memory::commit_on_demand();
    }
    commit_on_demand
};

use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "tollgate",
    version,
    about = "tollgate: a sidecar reverse proxy on Pingora, driven by one validated YAML file"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy on a config file (reloaded on SIGHUP and when the file changes).
    Run {
        /// Config file.
        #[arg(short, long, default_value = "conf/tollgate.yaml")]
        config: PathBuf,
        /// Take over the listening sockets of the tollgate running on the same config (through
        /// `server.upgrade_sock`) instead of binding them: start this one, then send the old one
        /// SIGQUIT. No connection is refused during the swap.
        #[arg(long)]
        upgrade: bool,
    },
    /// Validate a config file: print every problem and exit 1, or a summary and exit 0.
    Check {
        /// Config file.
        #[arg(value_name = "FILE", required_unless_present = "config")]
        file: Option<PathBuf>,
        /// Config file (same as FILE).
        #[arg(short, long, conflicts_with = "file")]
        config: Option<PathBuf>,
    },
    /// Show the tier and the effective limits a caller gets on every route.
    Explain {
        /// Config file.
        #[arg(short, long, default_value = "conf/tollgate.yaml")]
        config: PathBuf,
        /// The caller's API key (`-` reads it from stdin, keeping it out of `ps`).
        #[arg(long, conflicts_with_all = ["tenant", "anonymous"])]
        key: Option<String>,
        /// The tenant id.
        #[arg(long, conflicts_with = "anonymous")]
        tenant: Option<String>,
        /// A caller with no key.
        #[arg(long)]
        anonymous: bool,
        /// Also show what the store holds for the tenant now (remaining burst and daily
        /// counts), asked of the running proxy's admin listener (`admin.listen`).
        #[arg(long)]
        live: bool,
    },
    /// Provision, revoke and list API keys in the fleet's Redis (`identity.key_store: redis`).
    Keys {
        /// Config file (its `redis:` section says where).
        #[arg(short, long, default_value = "conf/tollgate.yaml")]
        config: PathBuf,
        #[command(subcommand)]
        action: KeysAction,
    },
    /// Print the `sha256:<hex>` digest of an API key for `tenants.*.api_keys` (key from the
    /// argument, or from stdin when absent).
    HashKey {
        /// The key; omit to read it from stdin.
        key: Option<String>,
    },
    /// Add tollgate as a native sidecar to the pods of Kubernetes manifests (Pod, Deployment,
    /// StatefulSet, DaemonSet, ReplicaSet, Job, CronJob, List), like `linkerd inject`: the
    /// result on stdout, one line per workload on stderr. Exit 1 if a workload was refused.
    Inject {
        /// Manifest file (`-`: stdin).
        #[arg(short, long, default_value = "-")]
        file: PathBuf,
        /// Injector settings (image, ports, resources, ...); absent: the defaults.
        #[arg(long)]
        settings: Option<PathBuf>,
    },
    /// Serve the Kubernetes mutating admission webhook that injects tollgate (HTTPS
    /// `POST /mutate`, `GET /healthz`), with `/metrics` and `/healthz` on the admin listener.
    InjectWebhook {
        /// HTTPS listener for the API server.
        #[arg(long, default_value = "0.0.0.0:8443")]
        listen: String,
        /// Serving certificate (PEM, chain first to last); re-read when it changes.
        #[arg(long)]
        tls_cert: PathBuf,
        /// Its private key (PEM); re-read when it changes.
        #[arg(long)]
        tls_key: PathBuf,
        /// Injector settings; absent: the defaults.
        #[arg(long)]
        settings: Option<PathBuf>,
        /// Plain-HTTP admin listener: `/healthz`, `/metrics`.
        #[arg(long, default_value = "0.0.0.0:9901")]
        admin: String,
    },
    /// Run the bundled demo upstream (something to put tollgate in front of and curl).
    DemoUpstream {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:3000")]
        listen: String,
        /// A name for this instance, sent in `X-Served-By` (to tell two of them apart).
        #[arg(long)]
        name: Option<String>,
    },
    /// Check a running tollgate through its admin listener (a container HEALTHCHECK with no curl
    /// in the image): exit 0 when `GET PATH` answers 200, 1 otherwise.
    Probe {
        /// The admin listener (`admin.listen`).
        #[arg(long, default_value = "127.0.0.1:9901")]
        admin: String,
        /// The path to ask: `/readyz` (ready for traffic) or `/healthz` (alive).
        #[arg(long, default_value = "/readyz")]
        path: String,
        /// How long the whole check may take (e.g. `2s`, `500ms`).
        #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
    },
}

#[derive(Subcommand)]
enum KeysAction {
    /// Store a key for a tenant: `--key -` reads it from stdin; without `--key` a new random key
    /// is generated and printed once. Only its digest is stored.
    Add {
        /// Tenant id.
        #[arg(long)]
        tenant: String,
        /// Tier (must exist in the config).
        #[arg(long)]
        tier: String,
        /// The key (`-`: read from stdin). Absent: generate one.
        #[arg(long)]
        key: Option<String>,
        /// Override the tier's rps.
        #[arg(long)]
        rps: Option<f64>,
        /// Override the tier's burst.
        #[arg(long)]
        burst: Option<u32>,
        /// Override the tier's daily quota.
        #[arg(long)]
        daily: Option<u64>,
        /// Override the tier's shadow mode.
        #[arg(long)]
        shadow: Option<bool>,
    },
    /// Delete a key: the plain key (`-`: from stdin) or `sha256:<hex digest>`.
    Revoke {
        /// The key or its digest.
        key: String,
    },
    /// List the provisioned keys by digest, with tenant, tier and overrides.
    List,
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("TOLLGATE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    {
        use std::io::IsTerminal;
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(std::io::stderr().is_terminal())
            .with_writer(std::io::stderr)
            .init();
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { file, config } => {
            let path = file.or(config).expect("clap requires one");
            match tollgate::config::load(&path) {
                Ok(c) => {
                    println!("{}: ok: {}", path.display(), c.summary());
                    ExitCode::SUCCESS
                }
                Err(errors) => {
                    eprintln!("{errors}");
                    ExitCode::from(1)
                }
            }
        }
        Command::Run { config, upgrade } => {
            // Before any thread or TLS context exists: both read the environment it sets.
            let trust = tollgate::trust_store::use_hashed_directory();
            init_logging();
            if let tollgate::trust_store::TrustStore::Hashed(dirs) = &trust {
                tracing::info!(
                    "TLS trust: CA certificates looked up in {} as needed (SSL_CERT_FILE is unset; set it to a bundle to load that whole file instead)",
                    dirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(":")
                );
            }
            let runtime = match tollgate::config::load(&config) {
                Ok(c) => c,
                Err(errors) => {
                    eprintln!("{errors}");
                    return ExitCode::from(1);
                }
            };
            // An upgrade takes the ports over from the running process: they are in use.
            if !upgrade {
                if let Err(e) = tollgate::server::check_listeners(&runtime) {
                    eprintln!("tollgate: {e}");
                    return ExitCode::from(1);
                }
            } else {
                tracing::info!(
                    "waiting for the running tollgate's listening sockets on {} (send it SIGQUIT)",
                    runtime.startup.server.upgrade_sock
                );
            }
            tracing::info!(
                "tollgate {} starting: {}",
                env!("CARGO_PKG_VERSION"),
                runtime.summary()
            );
            if let Some(redis) = &runtime.startup.redis {
                if let Err(e) = tollgate::fleet::link::check_at_start(redis) {
                    if redis.required {
                        eprintln!(
                            "tollgate: redis {} cannot be reached ({e}) and `redis.required` is true: not starting",
                            redis.describe()
                        );
                        return ExitCode::from(1);
                    }
                    tracing::warn!(
                        "redis {} cannot be reached ({e}): starting in fallback (rate_limit.on_store_error); limits are shared once it answers",
                        redis.describe()
                    );
                }
            }
            let mut server = match tollgate::build_server(runtime, Some(config), upgrade) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("tollgate: {e}");
                    return ExitCode::from(1);
                }
            };
            server.bootstrap();
            server.run_forever()
        }
        Command::Keys { config, action } => {
            let runtime = match tollgate::config::load(&config) {
                Ok(c) => c,
                Err(errors) => {
                    eprintln!("{errors}");
                    return ExitCode::from(1);
                }
            };
            let stdin_or = |k: String| if k == "-" { read_stdin_line() } else { k };
            let action = match action {
                KeysAction::Add {
                    tenant,
                    tier,
                    key,
                    rps,
                    burst,
                    daily,
                    shadow,
                } => tollgate::keys_command::Action::Add {
                    key: key.map(stdin_or),
                    record: tollgate::fleet::keys::KeyRecord {
                        tenant,
                        tier,
                        rps,
                        burst,
                        daily,
                        shadow,
                    },
                },
                KeysAction::Revoke { key } => tollgate::keys_command::Action::Revoke(stdin_or(key)),
                KeysAction::List => tollgate::keys_command::Action::List,
            };
            match tollgate::keys_command::run(&runtime, action) {
                Ok(out) => {
                    print!("{out}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("tollgate keys: {e}");
                    ExitCode::from(1)
                }
            }
        }
        Command::HashKey { key } => {
            let key = key.unwrap_or_else(read_stdin_line);
            println!("sha256:{}", tollgate::tenant::key_digest_hex(key.trim()));
            ExitCode::SUCCESS
        }
        Command::Explain {
            config,
            key,
            tenant,
            anonymous,
            live,
        } => {
            let runtime = match tollgate::config::load(&config) {
                Ok(c) => c,
                Err(errors) => {
                    eprintln!("{errors}");
                    return ExitCode::from(1);
                }
            };
            let key = key.map(|k| if k == "-" { read_stdin_line() } else { k });
            let subject = match (&key, &tenant, anonymous) {
                (Some(k), _, _) => tollgate::explain::Subject::Key(k.trim()),
                (_, Some(t), _) => tollgate::explain::Subject::Tenant(t),
                (_, _, true) => tollgate::explain::Subject::Anonymous,
                _ => {
                    eprintln!("tollgate explain: give --key KEY, --tenant ID or --anonymous");
                    return ExitCode::from(2);
                }
            };
            match tollgate::explain::explain(&runtime, subject) {
                Ok(report) => {
                    print!("{report}");
                    if live {
                        let Some(id) = tenant.as_deref() else {
                            eprintln!("tollgate explain: --live needs --tenant ID");
                            return ExitCode::from(2);
                        };
                        let admin = runtime.startup.admin_listen;
                        match tollgate::explain::fetch_live(admin, id) {
                            Ok(state) => {
                                println!("live (from the proxy's admin on {admin}):\n{state}")
                            }
                            Err(e) => {
                                eprintln!("tollgate explain --live: {e}");
                                return ExitCode::from(1);
                            }
                        }
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("tollgate explain: {e}");
                    ExitCode::from(1)
                }
            }
        }
        Command::Inject { file, settings } => {
            let settings = match load_injector_settings(settings.as_deref()) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("tollgate inject: {e}");
                    return ExitCode::from(1);
                }
            };
            let text = if file.as_os_str() == "-" {
                let mut text = String::new();
                if let Err(e) = std::io::Read::read_to_string(&mut std::io::stdin(), &mut text) {
                    eprintln!("tollgate inject: stdin: {e}");
                    return ExitCode::from(1);
                }
                text
            } else {
                match std::fs::read_to_string(&file) {
                    Ok(t) => t,
                    Err(e) => {
                        eprintln!("tollgate inject: {}: {e}", file.display());
                        return ExitCode::from(1);
                    }
                }
            };
            match tollgate::inject::manifest::inject_manifests(&text, &settings) {
                Ok(out) => {
                    print!("{}", out.yaml);
                    let mut refused = false;
                    for r in &out.reports {
                        use tollgate::inject::mutate::Outcome;
                        let what = match &r.outcome {
                            Outcome::Injected => "injected".to_string(),
                            Outcome::AlreadyInjected => "already injected, unchanged".to_string(),
                            Outcome::OptedOut => {
                                "opted out (tollgate.io/inject: false), unchanged".to_string()
                            }
                            Outcome::Refused(why) => {
                                refused = true;
                                format!("NOT injected: {why}")
                            }
                        };
                        eprintln!("{} {what}", r.workload);
                    }
                    if refused {
                        ExitCode::from(1)
                    } else {
                        ExitCode::SUCCESS
                    }
                }
                Err(e) => {
                    eprintln!("tollgate inject: {}: {e}", file.display());
                    ExitCode::from(1)
                }
            }
        }
        Command::InjectWebhook {
            listen,
            tls_cert,
            tls_key,
            settings,
            admin,
        } => {
            init_logging();
            let settings = match load_injector_settings(settings.as_deref()) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("tollgate inject-webhook: {e}");
                    return ExitCode::from(1);
                }
            };
            match tollgate::inject::webhook::serve(&listen, &admin, tls_cert, tls_key, settings) {
                Ok(never) => match never {},
                Err(e) => {
                    eprintln!("tollgate inject-webhook: {e}");
                    ExitCode::from(1)
                }
            }
        }
        Command::Probe {
            admin,
            path,
            timeout,
        } => match tollgate::admin_client::probe(&admin, &path, timeout) {
            Ok(line) => {
                println!("{line}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("tollgate probe: {e}");
                ExitCode::from(1)
            }
        },
        Command::DemoUpstream { listen, name } => {
            init_logging();
            let mut server = pingora_core::server::Server::new_with_opt_and_conf(
                pingora_core::server::configuration::Opt::default(),
                pingora_core::server::configuration::ServerConf {
                    threads: 1,
                    grace_period_seconds: Some(0),
                    graceful_shutdown_timeout_seconds: Some(1),
                    ..Default::default()
                },
            );
            let mut svc = pingora_core::services::listening::Service::new(
                "demo upstream".to_string(),
                tollgate::demo::DemoUpstream { name },
            );
            svc.add_tcp(&listen);
            server.add_service(svc);
            server.bootstrap();
            tracing::info!("demo upstream listening on http://{listen}/");
            server.run_forever()
        }
    }
}

fn load_injector_settings(
    path: Option<&std::path::Path>,
) -> Result<tollgate::inject::settings::Settings, String> {
    match path {
        Some(p) => tollgate::inject::settings::Settings::load(p),
        None => Ok(tollgate::inject::settings::Settings::default()),
    }
}

fn read_stdin_line() -> String {
    let mut line = String::new();
    let _ = std::io::stdin().read_line(&mut line);
    line.trim().to_string()
}

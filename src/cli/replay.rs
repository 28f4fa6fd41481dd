//! `parkade replay`: rebuild a projection from offset zero, here or on a running server.

use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::Args;

use super::{database_url, open_read_only, progress_bar, runtime, Common};
use crate::api::wire;
use crate::config::Config;
use crate::projections::archive::Archive;
use crate::projections::{db, rebuild, ProjectionName, RebuildStats, Stores};

#[derive(Args)]
pub(super) struct ReplayArgs {
    #[command(flatten)]
    pub(super) common: Common,
    /// The projection to rebuild: occupancy or features (PostgreSQL), or archive (Parquet
    /// lake).
    #[arg(long, default_value = "occupancy", value_parser = ProjectionName::rebuildable)]
    pub(super) projection: ProjectionName,
    /// Ask a running server to rebuild (POST /v1/admin/replay) instead of doing it here.
    #[arg(long)]
    pub(super) url: Option<String>,
    /// Bearer token (admin) for --url.
    #[arg(long, env = "PARKADE_TOKEN", hide_env_values = true)]
    pub(super) token: Option<String>,
}

/// Rebuild `name` here, from this node's log (or copy) into the stores the
/// configuration names.
fn replay_here(c: &Config, name: ProjectionName) -> anyhow::Result<ExitCode> {
    let log = open_read_only(c)?;
    let bar = progress_bar(log.durable_end(), name.as_str());
    let progress = bar.clone();
    let stats = runtime()?.block_on(async move {
        let pool = match name {
            ProjectionName::Archive => None,
            _ => Some(db::connect(database_url(c)?).await?),
        };
        let archive = match name {
            ProjectionName::Archive => Some(Archive::from_config(&c.archive, &c.data_dir).await),
            _ => None,
        };
        let stores = Stores {
            db: pool.as_ref(),
            archive: archive.as_ref(),
            features_lateness_secs: c.projections.features_lateness_secs,
        };
        let tick = move |done, _| progress.set_position(done);
        anyhow::Ok(rebuild(name, log, stores, tick).await?)
    })?;
    bar.finish_and_clear();
    println!("{}", rebuilt(name.as_str(), &stats));
    Ok(ExitCode::SUCCESS)
}

/// One line of what a rebuild did, here or on a server.
fn rebuilt(name: &str, s: &RebuildStats) -> String {
    let late = match s.too_late {
        0 => String::new(),
        n => format!(", {n} events too late to fold"),
    };
    let swapped = match &s.generation {
        Some(g) => format!("generation {g} is now the current one"),
        None => "table swapped in".to_owned(),
    };
    format!(
        "rebuilt {name} from {} events: {} {} in {:.3} s ({:.0} events/s{late}); {swapped}",
        s.events,
        s.written,
        s.unit,
        s.seconds,
        s.events_per_second()
    )
}

pub(super) fn replay_remote(
    url: &str,
    projection: ProjectionName,
    token: Option<&str>,
) -> anyhow::Result<ExitCode> {
    let target = format!(
        "{}/v1/admin/replay?projection={projection}",
        url.trim_end_matches('/')
    );
    actix_web::rt::System::new().block_on(async move {
        let mut client = awc::Client::builder().timeout(std::time::Duration::from_secs(3600));
        if let Some(t) = token {
            client = client.bearer_auth(t);
        }
        let client = client.finish();
        // JSON, like every write a browser form cannot make (the server refuses others
        // that carry no token).
        let mut resp = client
            .post(&target)
            .insert_header(("content-type", "application/json"))
            .send_body("{}")
            .await
            .map_err(|e| anyhow::anyhow!("cannot reach {target}: {e}"))?;
        let body = resp.body().limit(1 << 20).await?;
        let text = String::from_utf8_lossy(&body);
        if resp.status().is_success() {
            let reply: wire::Replayed = serde_json::from_slice(&body)
                .with_context(|| format!("the server's reply is not a replay's: {text}"))?;
            let stats: RebuildStats = serde_json::from_value(reply.stats)
                .with_context(|| format!("the server's reply is not a replay's: {text}"))?;
            println!("{}", rebuilt(&reply.projection, &stats));
            Ok(ExitCode::SUCCESS)
        } else {
            bail!("the server answered {}: {text}", resp.status())
        }
    })
}

pub(super) fn run(a: ReplayArgs) -> anyhow::Result<ExitCode> {
    let c = a.common.config()?;
    crate::telemetry::init(c.log_format);
    match a.url {
        Some(url) => replay_remote(&url, a.projection, a.token.as_deref()),
        None => replay_here(&c, a.projection),
    }
}

//! `parkade token new`: a new access token and the tokens-file entry for it.

use std::process::ExitCode;

use anyhow::bail;
use clap::Args;

#[derive(Args)]
pub(super) struct TokenArgs {
    /// `new` (the only action).
    pub(super) action: String,
    /// The token's name, shown in audit lines.
    #[arg(long)]
    pub(super) name: String,
    /// read, ingest or admin.
    #[arg(long)]
    pub(super) role: String,
    /// Lots an ingest token may move (comma-separated); default all.
    #[arg(long, value_delimiter = ',')]
    pub(super) lots: Vec<String>,
}

pub(super) fn token(a: TokenArgs) -> anyhow::Result<ExitCode> {
    if a.action != "new" {
        bail!("unknown action {:?} (known: new)", a.action);
    }
    if !["read", "ingest", "admin"].contains(&a.role.as_str()) {
        bail!("--role must be read, ingest or admin (got {:?})", a.role);
    }
    if a.name.trim().is_empty() || a.name.contains(['"', '\\', '\n']) {
        bail!("--name must be non-empty, without quotes, backslashes or line breaks");
    }
    let mut lots = Vec::new();
    for l in &a.lots {
        lots.push(
            crate::domain::LotId::parse(l)
                .map_err(|e| anyhow::anyhow!("--lots: {l:?}: {e}"))?
                .to_string(),
        );
    }
    let (token, hash) = crate::api::auth::new_token()
        .map_err(|e| anyhow::anyhow!("no randomness from the operating system: {e}"))?;
    println!("token (shown once; give it to the client as `Authorization: Bearer <token>`):");
    println!("  {token}");
    println!();
    println!("add to the tokens file ([auth] tokens_file; reloaded within 2 s):");
    println!();
    println!("[[token]]");
    println!("name = \"{}\"", a.name.trim());
    println!("role = \"{}\"", a.role);
    if !lots.is_empty() {
        let quoted: Vec<String> = lots.iter().map(|l| format!("\"{l}\"")).collect();
        println!("lots = [{}]", quoted.join(", "));
    } else if a.role == "ingest" {
        println!("lots = \"*\"");
    }
    println!("sha256 = \"{hash}\"");
    Ok(ExitCode::SUCCESS)
}

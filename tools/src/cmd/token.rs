//! `rackcast token`: named operator tokens. `admin` tokens do everything,
//! `viewer` tokens only read (every state-changing route answers 403).
//! The built-in `admin` token is the server's DATA/admin.token.

use std::process::ExitCode;

use clap::{Args, Subcommand};
use rackcast_engine::sched::api::{Role, TokenCreated, TokenRequest, TokenView};

use super::client::show::Table;
use super::client::{path_segment, Client, ClientArgs};

/// `rackcast token ...`
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a named token and print it: the token alone on the last line
    /// (the server keeps only its hash, so this is the only time it is shown).
    #[command(
        after_help = "Example:\n  rackcast token create grafana --role viewer\n  \
        rackcast token create alice --role admin | tail -1 > alice.token"
    )]
    Create(CreateArgs),
    /// List the named tokens: name, role, created, revoked.
    #[command(after_help = "Example:\n  rackcast token list")]
    List(ListArgs),
    /// Revoke a named token: it stops working at once; its name stays taken.
    #[command(after_help = "Example:\n  rackcast token revoke grafana")]
    Revoke(RevokeArgs),
}

/// Options of `rackcast token create`.
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Its name, as the audit log shows it (letters, digits, '.', '_', '-').
    pub name: String,
    /// `admin` (everything) or `viewer` (read only).
    #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(["admin", "viewer"]))]
    pub role: String,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// Options of `rackcast token list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Print the server's JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// Options of `rackcast token revoke`.
#[derive(Debug, Args)]
pub struct RevokeArgs {
    /// The token's name.
    pub name: String,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// Runs `rackcast token ...`.
pub fn run(c: TokenCommand) -> anyhow::Result<ExitCode> {
    match c {
        TokenCommand::Create(a) => {
            let client = Client::new(&a.client)?;
            let role: Role = a.role.parse().map_err(anyhow::Error::msg)?;
            let body = TokenRequest { name: a.name, role };
            let t: TokenCreated = client.post("/api/v1/tokens", &body)?;
            eprintln!(
                "token {:?} ({}) created: keep it now, the server shows it only once",
                t.name,
                t.role.word()
            );
            println!("{}", t.token);
        }
        TokenCommand::List(a) => {
            let client = Client::new(&a.client)?;
            if a.json {
                let v: serde_json::Value = client.get("/api/v1/tokens")?;
                println!("{}", serde_json::to_string_pretty(&v)?);
                return Ok(ExitCode::SUCCESS);
            }
            let tokens: Vec<TokenView> = client.get("/api/v1/tokens")?;
            if tokens.is_empty() {
                eprintln!("no named tokens (the built-in admin token is DATA/admin.token): rackcast token create NAME --role viewer");
                return Ok(ExitCode::SUCCESS);
            }
            let mut t = Table::new(&["NAME", "ROLE", "CREATED", "REVOKED"]);
            for v in tokens {
                t.row(vec![
                    v.name,
                    v.role.word().to_string(),
                    super::audit::when(v.created),
                    v.revoked.map_or("-".into(), super::audit::when),
                ]);
            }
            print!("{}", t.render());
        }
        TokenCommand::Revoke(a) => {
            let client = Client::new(&a.client)?;
            let path = format!("/api/v1/tokens/{}", path_segment(&a.name));
            let v: TokenView = client.delete(&path)?;
            eprintln!("token {:?} revoked", v.name);
        }
    }
    Ok(ExitCode::SUCCESS)
}

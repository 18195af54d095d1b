//! `firefleet token create|ls|revoke`: bearer tokens (admin).

use firefleet_api::{CreateTokenRequest, Role};

use crate::{
    args::{Global, Output, TokenCommand, TokenRole},
    cmd_vm::client,
    output::{opt, print, span, wire},
};

pub async fn token(g: &Global, cmd: TokenCommand) -> anyhow::Result<()> {
    let c = client(g)?;
    match cmd {
        TokenCommand::Create {
            tenant,
            role,
            ttl_secs,
            note,
        } => {
            let role = match role {
                TokenRole::Tenant => Role::Tenant,
                TokenRole::Metrics => Role::Metrics,
                TokenRole::Admin => Role::Admin,
            };
            let tenant = match (tenant, role) {
                (Some(t), _) => t,
                (None, Role::Admin) => firefleet_api::ADMIN_TENANT.to_owned(),
                (None, _) => anyhow::bail!("--tenant is required for a {} token", wire(&role)),
            };
            let t = c
                .token_create(&CreateTokenRequest {
                    tenant: tenant.parse()?,
                    role: Some(role),
                    ttl_secs,
                    note,
                })
                .await?;
            match g.output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&t)?),
                Output::Table => println!("{}", t.token),
            }
            Ok(())
        }
        TokenCommand::Ls { tenant } => {
            let list = c.token_list(tenant.as_deref()).await?;
            let now = crate::output::now_ms();
            let rows = list
                .items
                .iter()
                .map(|t| {
                    vec![
                        t.id.clone(),
                        t.tenant.to_string(),
                        wire(&t.role),
                        crate::output::ago(now, t.created_ms),
                        match (t.expires_ms, t.expired) {
                            (_, true) => "expired".to_owned(),
                            (Some(e), false) => format!("in {}", span(e.saturating_sub(now))),
                            (None, false) => "never".to_owned(),
                        },
                        opt(&t.note),
                    ]
                })
                .collect();
            print(
                g.output,
                &list,
                &["ID", "TENANT", "ROLE", "AGE", "EXPIRES", "NOTE"],
                rows,
            )
        }
        TokenCommand::Revoke { id } => {
            let t = c.token_revoke(&id).await?;
            match g.output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&t)?),
                Output::Table => {
                    println!("revoked token {} ({} {})", t.id, wire(&t.role), t.tenant)
                }
            }
            Ok(())
        }
    }
}

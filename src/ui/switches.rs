//! The Switches page: the switches in force, and (admin role) one form to pause or
//! resume all traffic, an agent, a tool pattern or a tenant, turn draft-only mode on or
//! off, or disable or enable an agent — confirmed, with a required note, recorded with
//! the operator's name through the same function as the admin API.

use super::{html, Chrome};
use crate::app::App;
use crate::body::Body;
use crate::error::Error;
use crate::store::{Scope, SwitchChange, SwitchState};
use askama::Template;
use http::{Response, StatusCode};
use std::collections::HashMap;

#[derive(Template)]
#[template(path = "ui/switches.html")]
struct SwitchesPage {
    c: Chrome,
    s: SwitchState,
    agents: Vec<String>,
    message: Option<String>,
}

pub async fn page(app: &App, c: Chrome, message: Option<String>) -> Result<Response<Body>, Error> {
    let s = app.store.switches().await?;
    let mut agents: Vec<String> = app.live.load().snap.agents.keys().cloned().collect();
    agents.sort();
    html(
        StatusCode::OK,
        &SwitchesPage {
            c,
            s,
            agents,
            message,
        },
    )
}

fn bad(detail: &str) -> Error {
    Error::BadRequest {
        reason: "bad_switch",
        detail: detail.into(),
    }
}

/// The change a form asks for; every refusal is fixed server text.
fn change_of(f: &HashMap<String, String>, agents: &[String]) -> Result<SwitchChange, Error> {
    let get = |k: &str| f.get(k).map(|v| v.trim().to_string()).unwrap_or_default();
    let target = get("target");
    let agent = || {
        agents
            .iter()
            .find(|a| **a == target)
            .cloned()
            .ok_or_else(|| bad("that is not a configured agent"))
    };
    let scoped = || -> Result<(Scope, String), Error> {
        let scope = Scope::parse(&get("scope")).ok_or_else(|| bad("choose a scope"))?;
        match scope {
            Scope::All => Ok((Scope::All, String::new())),
            Scope::Agent => Ok((Scope::Agent, agent()?)),
            _ if target.is_empty() => Err(bad("this scope needs a tool pattern or tenant")),
            s => Ok((s, target.clone())),
        }
    };
    Ok(match get("action").as_str() {
        "pause" => {
            let (s, t) = scoped()?;
            SwitchChange::Pause(s, t)
        }
        "resume" => {
            let (s, t) = scoped()?;
            SwitchChange::Resume(s, t)
        }
        "disable" => SwitchChange::Disable(agent()?),
        "enable" => SwitchChange::Enable(agent()?),
        "draft-on" => SwitchChange::DraftOnly(true),
        "draft-off" => SwitchChange::DraftOnly(false),
        _ => return Err(bad("choose an action")),
    })
}

fn said(ch: &SwitchChange) -> String {
    match ch {
        SwitchChange::Pause(Scope::All, _) => "Paused all traffic.".into(),
        SwitchChange::Resume(Scope::All, _) => "Resumed all traffic.".into(),
        SwitchChange::Pause(s, t) => format!("Paused {} {t}.", s.as_str()),
        SwitchChange::Resume(s, t) => format!("Resumed {} {t}.", s.as_str()),
        SwitchChange::Disable(a) => format!("Disabled agent {a}."),
        SwitchChange::Enable(a) => format!("Enabled agent {a}."),
        SwitchChange::DraftOnly(on) => {
            format!("Draft-only mode {}.", if *on { "on" } else { "off" })
        }
    }
}

pub async fn change(
    app: &App,
    c: Chrome,
    f: &HashMap<String, String>,
) -> Result<Response<Body>, Error> {
    if !c.admin {
        return Err(Error::Forbidden(format!(
            "`{}` lacks the admin role",
            c.operator
        )));
    }
    let note = f
        .get("note")
        .map(|n| n.trim().to_string())
        .unwrap_or_default();
    if note.is_empty() || f.get("confirm").map(String::as_str) != Some("yes") {
        return page(
            app,
            c,
            Some("Not changed: confirm the change and give a note.".into()),
        )
        .await;
    }
    let mut agents: Vec<String> = app.live.load().snap.agents.keys().cloned().collect();
    agents.sort();
    let ch = match change_of(f, &agents) {
        Ok(ch) => ch,
        Err(e) => return page(app, c, Some(format!("Not changed: {e}."))).await,
    };
    crate::admin::apply_switch(app, &c.operator, ch.clone(), Some(&note)).await?;
    // The target is echoed only as the server accepted it (a configured agent, or the
    // tool pattern or tenant now stored in the switches).
    page(
        app,
        c,
        Some(format!("{} Recorded with your name.", said(&ch))),
    )
    .await
}

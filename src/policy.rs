//! `decide`: the one pure function that says allow, deny or park. No I/O; every entry
//! point (proxy, replay, explain, policy tests) calls it with the same inputs.

use crate::classify::{Pattern, Risk, Tool};
use crate::conditions::{Condition, Evaluated, Outcome};
use std::collections::HashSet;
use std::sync::Arc;

/// A tool-name pattern: exact, or `*` for any run of characters (dots included).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glob(pub String);

impl Glob {
    pub fn matches(&self, name: &str) -> bool {
        glob_match(self.0.as_bytes(), name.as_bytes())
    }
}

fn glob_match(p: &[u8], s: &[u8]) -> bool {
    // Iterative wildcard match with single backtrack point: O(len(p) * len(s)) worst case.
    let (mut pi, mut si) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while si < s.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some(pi);
            mark = si;
            pi += 1;
        } else if pi < p.len() && p[pi] == s[si] {
            pi += 1;
            si += 1;
        } else if let Some(st) = star {
            pi = st + 1;
            mark += 1;
            si = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

pub fn any_match(globs: &[Glob], name: &str) -> bool {
    globs.iter().any(|g| g.matches(name))
}

#[derive(Debug, Clone)]
pub struct Profile {
    pub name: String,
    pub admin: bool,
    pub tools: Vec<Glob>,
    /// Raw resource templates; `{tenant}` is expanded per agent.
    pub resources: Option<Vec<String>>,
    pub max_risk: Risk,
    pub approval: Vec<Glob>,
    pub deny: Vec<Glob>,
    /// The `{ tool, when }` entries of `tools`, `approval` and `deny`.
    pub conditional: Vec<CondEntry>,
    pub rate_per_minute: Option<u32>,
}

/// Which list of a profile an entry is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum List {
    Tools,
    Approval,
    Deny,
}

impl List {
    pub fn as_str(self) -> &'static str {
        match self {
            List::Tools => "tools",
            List::Approval => "approval",
            List::Deny => "deny",
        }
    }
}

/// A profile entry that holds only when its condition does (`{ tool: PATTERN, when: EXPR }`).
#[derive(Debug, Clone)]
pub struct CondEntry {
    pub list: List,
    pub glob: Glob,
    pub when: Arc<Condition>,
}

#[derive(Debug, Clone)]
pub struct Agent {
    pub id: String,
    pub profile: Arc<Profile>,
    pub tenant: Option<String>,
    pub owner: Option<String>,
    /// The profile's `resources` with this agent's tenant filled in.
    pub resources: Option<Vec<Pattern>>,
}

/// What the credential in use narrows the profile to.
#[derive(Debug, Clone, Default)]
pub struct Narrowing {
    pub tools: Option<Vec<Glob>>,
    pub max_risk: Option<Risk>,
}

/// Operational switches in force (from the store).
#[derive(Debug, Clone, Default)]
pub struct Switches {
    pub paused_all: bool,
    pub paused_agents: HashSet<String>,
    pub paused_tools: Vec<Glob>,
    pub paused_tenants: HashSet<String>,
    pub disabled_agents: HashSet<String>,
    pub draft_only: bool,
}

pub struct Input<'a> {
    pub agent: &'a Agent,
    pub narrowing: &'a Narrowing,
    pub tool: &'a Tool,
    pub path: &'a str,
    pub switches: &'a Switches,
    /// An operator already approved this exact request (replay).
    pub approved: bool,
    /// The outcomes of the profile's conditional entries for this request.
    pub evaluated: &'a Evaluated,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// `rule` names what granted it: `admin`, `tools`, `approved`.
    Allow {
        rule: &'static str,
        condition: Option<Arc<str>>,
    },
    Deny {
        reason: &'static str,
        detail: String,
        /// The condition that decided it, when one did.
        condition: Option<Arc<str>>,
    },
    Park {
        condition: Option<Arc<str>>,
    },
}

impl Decision {
    pub fn label(&self) -> &'static str {
        match self {
            Decision::Allow { .. } => "allow",
            Decision::Deny { .. } => "deny",
            Decision::Park { .. } => "park",
        }
    }
    pub fn reason(&self) -> &'static str {
        match self {
            Decision::Allow { rule, .. } => rule,
            Decision::Deny { reason, .. } => reason,
            Decision::Park { .. } => "approval_required",
        }
    }
    /// The condition that decided it, when one did.
    pub fn condition(&self) -> Option<&Arc<str>> {
        match self {
            Decision::Allow { condition, .. }
            | Decision::Deny { condition, .. }
            | Decision::Park { condition } => condition.as_ref(),
        }
    }
}

fn deny(reason: &'static str, detail: String) -> Decision {
    Decision::Deny {
        reason,
        detail,
        condition: None,
    }
}

fn deny_by(reason: &'static str, detail: String, condition: &Arc<str>) -> Decision {
    Decision::Deny {
        reason,
        detail,
        condition: Some(condition.clone()),
    }
}

/// The first conditional entry of `list` matching one of `names` that holds; a failed
/// condition holds when `failed_holds` (deny, approval) and not otherwise (grants).
/// Returns the entry, the name and the failure, if it failed.
fn conditional<'a>(
    p: &'a Profile,
    ev: &'a Evaluated,
    list: List,
    mut names: impl Iterator<Item = &'a str>,
    failed_holds: bool,
) -> Option<(&'a CondEntry, &'a str, Option<&'a str>)> {
    names.find_map(|n| {
        p.conditional.iter().enumerate().find_map(|(i, e)| {
            if e.list != list || !e.glob.matches(n) {
                return None;
            }
            match ev.entry(i) {
                Some(Outcome::Holds(true)) => Some((e, n, None)),
                Some(Outcome::Holds(false)) => None,
                Some(Outcome::Failed(why)) => failed_holds.then_some((e, n, Some(why.as_str()))),
                // Not evaluated (a caller without the request): the safe side.
                None => failed_holds.then_some((e, n, Some("it was not evaluated"))),
            }
        })
    })
}

/// ` (the condition `…` failed: …)` for a detail, when it failed.
fn failure(e: &CondEntry, why: Option<&str>) -> String {
    match why {
        Some(w) => format!(
            " (the condition `{}` could not be evaluated: {w})",
            e.when.text
        ),
        None => String::new(),
    }
}

/// The gate. First match wins; see DESIGN.md "Identity, then the gate".
pub fn decide(i: &Input) -> Decision {
    let (a, p, t, s) = (i.agent, &i.agent.profile, i.tool, i.switches);
    let name = &*t.name;
    if s.disabled_agents.contains(&a.id) {
        return deny("agent_disabled", format!("agent `{}` is disabled", a.id));
    }
    if s.paused_all {
        return deny("paused", "all agent traffic is paused".into());
    }
    if s.paused_agents.contains(&a.id) {
        return deny("paused", format!("agent `{}` is paused", a.id));
    }
    if let Some(tenant) = &a.tenant {
        if s.paused_tenants.contains(tenant) {
            return deny("paused", format!("tenant `{tenant}` is paused"));
        }
    }
    // Denies, pauses and approvals hold for every name this request goes by.
    if let Some(n) = t.names().find(|n| any_match(&s.paused_tools, n)) {
        return deny("paused", format!("tool `{n}` is paused"));
    }
    if let Some(n) = t.names().find(|n| any_match(&p.deny, n)) {
        return deny("profile_deny", format!("profile `{}` denies `{n}`", p.name));
    }
    if let Some((e, n, why)) = conditional(p, i.evaluated, List::Deny, t.names(), true) {
        return deny_by(
            "profile_deny",
            format!(
                "profile `{}` denies `{n}` when `{}`{}",
                p.name,
                e.when.text,
                failure(e, why)
            ),
            &e.when.text,
        );
    }
    // A grant holds for a name through a plain entry, or a conditional one that holds.
    let granted = |n: &str| {
        any_match(&p.tools, n)
            || conditional(p, i.evaluated, List::Tools, std::iter::once(n), false).is_some()
    };
    // Grants hold only if they hold for every name: a spelling a lenient backend routes
    // to another handler (`/items/EXPORT`) must be granted as that handler too.
    if let Some(tools) = &i.narrowing.tools {
        if let Some(n) = t.names().find(|n| !any_match(tools, n)) {
            return deny(
                "token_scope",
                format!("this credential is not scoped to `{n}`"),
            );
        }
    }
    if let Some(res) = &a.resources {
        if !res.iter().any(|r| r.matches(i.path)) {
            return deny(
                "out_of_scope",
                format!(
                    "`{}` is outside the resources of profile `{}`",
                    i.path, p.name
                ),
            );
        }
    }
    let approval = if t.names().any(|n| any_match(&p.approval, n)) {
        Some(None)
    } else {
        conditional(p, i.evaluated, List::Approval, t.names(), true)
            .map(|(e, _, _)| Some(e.when.text.clone()))
    };
    if let Some(condition) = approval {
        let condition = condition.or_else(|| t.condition.clone());
        return if i.approved {
            Decision::Allow {
                rule: "approved",
                condition,
            }
        } else {
            Decision::Park { condition }
        };
    }
    if p.admin {
        return Decision::Allow {
            rule: "admin",
            condition: None,
        };
    }
    if granted(name) {
        let mut ceiling = p.max_risk;
        if let Some(r) = i.narrowing.max_risk {
            ceiling = ceiling.min(r);
        }
        if s.draft_only {
            ceiling = ceiling.min(Risk::Low);
        }
        if t.risk <= ceiling {
            // The grant's condition, when only a conditional entry grants the name.
            let condition = if any_match(&p.tools, name) {
                None
            } else {
                conditional(p, i.evaluated, List::Tools, std::iter::once(name), false)
                    .map(|(e, _, _)| e.when.text.clone())
            };
            return match t.names().find(|n| !granted(n)) {
                None => Decision::Allow {
                    rule: "tools",
                    condition: condition.or_else(|| t.condition.clone()),
                },
                Some(n) => deny(
                    "not_granted",
                    format!(
                        "profile `{}` does not grant `{n}` (another spelling of `{name}`)",
                        p.name
                    ),
                ),
            };
        }
        let reason = if s.draft_only
            && t.risk > Risk::Low
            && t.risk
                <= p.max_risk
                    .min(i.narrowing.max_risk.unwrap_or(Risk::Critical))
        {
            "draft_only"
        } else {
            "risk_ceiling"
        };
        let why = if reason == "draft_only" {
            "draft-only mode allows only low".to_string()
        } else {
            format!("the ceiling is {ceiling}")
        };
        let detail = format!("`{name}` is {} risk; {why}", t.risk);
        return match &t.condition {
            Some(c) => deny_by(reason, format!("{detail} (risk set when `{c}`)"), c),
            None => deny(reason, detail),
        };
    }
    // A conditional grant whose condition did not hold names it.
    if let Some((e, why)) = p.conditional.iter().enumerate().find_map(|(ix, e)| {
        (e.list == List::Tools && e.glob.matches(name)).then(|| match i.evaluated.entry(ix) {
            Some(Outcome::Failed(w)) => (e, Some(w.as_str())),
            None => (e, Some("it was not evaluated")),
            _ => (e, None),
        })
    }) {
        return deny_by(
            "not_granted",
            format!(
                "profile `{}` grants `{name}` only when `{}`{}",
                p.name,
                e.when.text,
                failure(e, why)
            ),
            &e.when.text,
        );
    }
    deny(
        "not_granted",
        format!("profile `{}` does not grant `{name}`", p.name),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile() -> Profile {
        Profile {
            name: "drafter".into(),
            admin: false,
            tools: vec![
                Glob("tickets.get".into()),
                Glob("tickets.list".into()),
                Glob("tickets.comments.*".into()),
                Glob("tickets.update".into()),
                Glob("tickets.delete".into()),
            ],
            resources: None,
            max_risk: Risk::Medium,
            approval: vec![Glob("tickets.refund".into())],
            deny: vec![Glob("*.purge".into())],
            conditional: vec![],
            rate_per_minute: None,
        }
    }

    fn agent(p: Profile, resources: Option<Vec<&str>>) -> Agent {
        Agent {
            id: "bot".into(),
            profile: Arc::new(p),
            tenant: Some("acme".into()),
            owner: None,
            resources: resources.map(|r| r.into_iter().map(|t| Pattern::new(t).unwrap()).collect()),
        }
    }

    #[test]
    fn aliases_carry_denies_pauses_and_approvals() {
        let a = agent(
            Profile {
                tools: vec![Glob("tickets.*".into())],
                max_risk: Risk::High,
                ..profile()
            },
            None,
        );
        let mut t = tool("tickets.comments_json.list", Risk::Low);
        t.aliases = vec!["tickets.purge".into()];
        let none = Switches::default();
        let d = |t: &Tool, s: &Switches| {
            decide(&Input {
                agent: &a,
                narrowing: &Narrowing::default(),
                tool: t,
                path: "/x",
                switches: s,
                approved: false,
                evaluated: &Evaluated::default(),
            })
        };
        assert!(matches!(
            d(&t, &none),
            Decision::Deny {
                reason: "profile_deny",
                ..
            }
        ));
        t.aliases = vec!["tickets.refund".into()];
        assert_eq!(d(&t, &none), Decision::Park { condition: None });
        t.aliases = vec!["tickets.comments.list".into()];
        let paused = Switches {
            paused_tools: vec![Glob("tickets.comments.list".into())],
            ..Default::default()
        };
        assert!(matches!(
            d(&t, &paused),
            Decision::Deny {
                reason: "paused",
                ..
            }
        ));
        assert!(matches!(d(&t, &none), Decision::Allow { .. }));
    }

    #[test]
    fn grants_must_hold_for_every_alias() {
        let a = agent(
            Profile {
                tools: vec![Glob("items.get".into())],
                max_risk: Risk::High,
                ..profile()
            },
            None,
        );
        let none = Switches::default();
        let d = |t: &Tool, n: &Narrowing| {
            decide(&Input {
                agent: &a,
                narrowing: n,
                tool: t,
                path: "/items/EXPORT",
                switches: &none,
                approved: false,
                evaluated: &Evaluated::default(),
            })
        };
        let mut t = tool("items.get", Risk::Low);
        assert_eq!(
            d(&t, &Narrowing::default()),
            Decision::Allow {
                rule: "tools",
                condition: None
            }
        );
        t.aliases = vec!["items.export.list".into()];
        let cases: [(Narrowing, &str); 2] = [
            (Narrowing::default(), "not_granted"),
            (
                Narrowing {
                    tools: Some(vec![Glob("items.get".into())]),
                    max_risk: None,
                },
                "token_scope",
            ),
        ];
        for (n, want) in cases {
            match d(&t, &n) {
                Decision::Deny { reason, detail, .. } => {
                    assert_eq!(reason, want);
                    assert!(detail.contains("items.export.list"), "{detail}");
                }
                other => panic!("{want}: {other:?}"),
            }
        }
    }

    fn tool(name: &str, risk: Risk) -> Tool {
        Tool {
            name: name.into(),
            risk,
            template: "/x".into(),
            route: 0,
            approval_ttl: None,
            known: true,
            source: crate::classify::Source::Paths,
            op: None,
            aliases: vec![],
            when_risk: None,
            condition: None,
        }
    }

    #[test]
    fn precedence_table() {
        let admin = Profile {
            name: "ops".into(),
            admin: true,
            tools: vec![],
            max_risk: Risk::Low,
            ..profile()
        };
        let paused_all = Switches {
            paused_all: true,
            ..Default::default()
        };
        let paused_agent = Switches {
            paused_agents: ["bot".to_string()].into(),
            ..Default::default()
        };
        let paused_tenant = Switches {
            paused_tenants: ["acme".to_string()].into(),
            ..Default::default()
        };
        let paused_tool = Switches {
            paused_tools: vec![Glob("tickets.*".into())],
            ..Default::default()
        };
        let disabled = Switches {
            disabled_agents: ["bot".to_string()].into(),
            ..Default::default()
        };
        let draft = Switches {
            draft_only: true,
            ..Default::default()
        };
        let none = Switches::default();
        let narrow_tools = Narrowing {
            tools: Some(vec![Glob("tickets.get".into())]),
            max_risk: None,
        };
        let narrow_low = Narrowing {
            tools: None,
            max_risk: Some(Risk::Low),
        };
        let wide = Narrowing::default();
        let scoped = agent(profile(), Some(vec!["/tickets/{*rest}"]));
        let plain = agent(profile(), None);
        let adm = agent(admin, None);
        let empty = agent(
            Profile {
                tools: vec![],
                approval: vec![],
                ..profile()
            },
            None,
        );
        type Row<'a> = (
            &'a str,
            &'a Agent,
            &'a Narrowing,
            Tool,
            &'a str,
            &'a Switches,
            bool,
            &'a str,
        );
        let rows: Vec<Row> = vec![
            (
                "disabled beats everything",
                &adm,
                &wide,
                tool("tickets.get", Risk::Low),
                "/tickets/1",
                &disabled,
                false,
                "agent_disabled",
            ),
            (
                "global pause",
                &adm,
                &wide,
                tool("tickets.get", Risk::Low),
                "/tickets/1",
                &paused_all,
                false,
                "paused",
            ),
            (
                "agent pause",
                &plain,
                &wide,
                tool("tickets.get", Risk::Low),
                "/tickets/1",
                &paused_agent,
                false,
                "paused",
            ),
            (
                "tenant pause",
                &plain,
                &wide,
                tool("tickets.get", Risk::Low),
                "/tickets/1",
                &paused_tenant,
                false,
                "paused",
            ),
            (
                "tool pause",
                &plain,
                &wide,
                tool("tickets.get", Risk::Low),
                "/tickets/1",
                &paused_tool,
                false,
                "paused",
            ),
            (
                "pause beats approved replay",
                &plain,
                &wide,
                tool("tickets.refund", Risk::Critical),
                "/tickets/1",
                &paused_tool,
                true,
                "paused",
            ),
            (
                "profile deny beats admin-less grant",
                &plain,
                &wide,
                tool("tickets.purge", Risk::Low),
                "/tickets/1",
                &none,
                false,
                "profile_deny",
            ),
            (
                "token scope",
                &plain,
                &narrow_tools,
                tool("tickets.list", Risk::Low),
                "/tickets",
                &none,
                false,
                "token_scope",
            ),
            (
                "token scope before approval",
                &plain,
                &narrow_tools,
                tool("tickets.refund", Risk::Critical),
                "/tickets/1",
                &none,
                false,
                "token_scope",
            ),
            (
                "out of scope",
                &scoped,
                &wide,
                tool("tickets.get", Risk::Low),
                "/users/1",
                &none,
                false,
                "out_of_scope",
            ),
            (
                "in scope",
                &scoped,
                &wide,
                tool("tickets.get", Risk::Low),
                "/tickets/1",
                &none,
                false,
                "allow:tools",
            ),
            (
                "approval parks",
                &plain,
                &wide,
                tool("tickets.refund", Risk::Critical),
                "/tickets/1",
                &none,
                false,
                "park",
            ),
            (
                "approved replay allowed",
                &plain,
                &wide,
                tool("tickets.refund", Risk::Critical),
                "/tickets/1",
                &none,
                true,
                "allow:approved",
            ),
            (
                "approval parks even in draft-only",
                &plain,
                &wide,
                tool("tickets.refund", Risk::Critical),
                "/tickets/1",
                &draft,
                false,
                "park",
            ),
            (
                "admin allows anything",
                &adm,
                &wide,
                tool("anything.delete", Risk::Critical),
                "/x",
                &none,
                false,
                "allow:admin",
            ),
            (
                "admin ignores draft-only",
                &adm,
                &wide,
                tool("anything.delete", Risk::High),
                "/x",
                &draft,
                false,
                "allow:admin",
            ),
            (
                "granted within ceiling",
                &plain,
                &wide,
                tool("tickets.update", Risk::Medium),
                "/tickets/1",
                &none,
                false,
                "allow:tools",
            ),
            (
                "glob crosses dots",
                &plain,
                &wide,
                tool("tickets.comments.x.create", Risk::Medium),
                "/tickets/1",
                &none,
                false,
                "allow:tools",
            ),
            (
                "above profile ceiling",
                &plain,
                &wide,
                tool("tickets.delete", Risk::High),
                "/tickets/1",
                &none,
                false,
                "risk_ceiling",
            ),
            (
                "above token ceiling",
                &plain,
                &narrow_low,
                tool("tickets.update", Risk::Medium),
                "/tickets/1",
                &none,
                false,
                "risk_ceiling",
            ),
            (
                "draft-only",
                &plain,
                &wide,
                tool("tickets.update", Risk::Medium),
                "/tickets/1",
                &draft,
                false,
                "draft_only",
            ),
            (
                "draft-only still allows low",
                &plain,
                &wide,
                tool("tickets.get", Risk::Low),
                "/tickets/1",
                &draft,
                false,
                "allow:tools",
            ),
            (
                "draft-only does not mask a ceiling",
                &plain,
                &wide,
                tool("tickets.delete", Risk::High),
                "/tickets/1",
                &draft,
                false,
                "risk_ceiling",
            ),
            (
                "not granted",
                &plain,
                &wide,
                tool("users.list", Risk::Low),
                "/users",
                &none,
                false,
                "not_granted",
            ),
            (
                "scoped by default",
                &empty,
                &wide,
                tool("tickets.get", Risk::Low),
                "/tickets/1",
                &none,
                false,
                "not_granted",
            ),
        ];
        for (what, a, n, t, path, s, approved, want) in rows {
            let d = decide(&Input {
                agent: a,
                narrowing: n,
                tool: &t,
                path,
                switches: s,
                approved,
                evaluated: &Evaluated::default(),
            });
            let got = match &d {
                Decision::Allow { rule, .. } => format!("allow:{rule}"),
                Decision::Park { .. } => "park".into(),
                Decision::Deny { reason, .. } => reason.to_string(),
            };
            assert_eq!(got, want, "{what}");
        }
    }

    fn entry(list: List, glob: &str, when: &str) -> CondEntry {
        CondEntry {
            list,
            glob: Glob(glob.into()),
            when: Arc::new(crate::conditions::compile::compile(when).unwrap()),
        }
    }

    /// Conditions only narrow an entry that matches; the precedence is the table's.
    #[test]
    fn conditions_table() {
        let small = "request.body.amount <= 50";
        let big = "request.body.amount > 100";
        let forced = "'true' in request.query.force";
        let p = Profile {
            tools: vec![Glob("tickets.get".into())],
            approval: vec![],
            deny: vec![Glob("*.purge".into())],
            conditional: vec![
                entry(List::Tools, "tickets.refund", small),
                entry(List::Approval, "tickets.refund", big),
                entry(List::Deny, "tickets.delete", forced),
                entry(List::Tools, "tickets.delete", "true"),
                entry(List::Tools, "tickets.purge", "true"),
            ],
            max_risk: Risk::High,
            ..profile()
        };
        let a = agent(p, None);
        let o = |v: Option<bool>| v.map(Outcome::Holds);
        let failed = || Some(Outcome::Failed("no such key `amount`".into()));
        let paused = Switches {
            paused_tools: vec![Glob("tickets.*".into())],
            ..Default::default()
        };
        let none = Switches::default();
        let mut raised = tool("tickets.delete", Risk::Critical);
        raised.condition = Some(forced.into());
        type Row<'a> = (
            &'a str,
            Tool,
            Vec<Option<Outcome>>,
            &'a Switches,
            &'a str,
            Option<&'a str>,
        );
        let rows: Vec<Row> = vec![
            (
                "small refund granted by its condition",
                tool("tickets.refund", Risk::Medium),
                vec![o(Some(true)), o(Some(false)), None, None, None],
                &none,
                "allow:tools",
                Some(small),
            ),
            (
                "large refund parked by its condition",
                tool("tickets.refund", Risk::Medium),
                vec![o(Some(false)), o(Some(true)), None, None, None],
                &none,
                "park",
                Some(big),
            ),
            (
                "in between: neither holds, not granted",
                tool("tickets.refund", Risk::Medium),
                vec![o(Some(false)), o(Some(false)), None, None, None],
                &none,
                "not_granted",
                Some(small),
            ),
            (
                "a failed grant does not grant; a failed approval parks",
                tool("tickets.refund", Risk::Medium),
                vec![failed(), failed(), None, None, None],
                &none,
                "park",
                Some(big),
            ),
            (
                "a failed grant alone is not granted",
                tool("tickets.refund", Risk::Medium),
                vec![failed(), o(Some(false)), None, None, None],
                &none,
                "not_granted",
                Some(small),
            ),
            (
                "not evaluated is the safe side (approval holds)",
                tool("tickets.refund", Risk::Medium),
                vec![],
                &none,
                "park",
                Some(big),
            ),
            (
                "a pause beats a holding grant",
                tool("tickets.refund", Risk::Medium),
                vec![o(Some(true)), o(Some(false)), None, None, None],
                &paused,
                "paused",
                None,
            ),
            (
                "a conditional deny that holds denies",
                tool("tickets.delete", Risk::High),
                vec![None, None, o(Some(true)), o(Some(true)), None],
                &none,
                "profile_deny",
                Some(forced),
            ),
            (
                "a conditional deny that does not hold leaves the grant",
                tool("tickets.delete", Risk::High),
                vec![None, None, o(Some(false)), o(Some(true)), None],
                &none,
                "allow:tools",
                Some("true"),
            ),
            (
                "a failed deny denies",
                tool("tickets.delete", Risk::High),
                vec![None, None, failed(), o(Some(true)), None],
                &none,
                "profile_deny",
                Some(forced),
            ),
            (
                "a plain deny beats a holding conditional grant",
                tool("tickets.purge", Risk::Low),
                vec![None, None, None, None, o(Some(true))],
                &none,
                "profile_deny",
                None,
            ),
            (
                "a risk a condition raised past the ceiling names it",
                raised,
                vec![None, None, o(Some(false)), o(Some(true)), None],
                &none,
                "risk_ceiling",
                Some(forced),
            ),
        ];
        for (what, t, entries, s, want, want_cond) in rows {
            let ev = Evaluated {
                entries,
                trail: vec![],
            };
            let d = decide(&Input {
                agent: &a,
                narrowing: &Narrowing::default(),
                tool: &t,
                path: "/tickets/1",
                switches: s,
                approved: false,
                evaluated: &ev,
            });
            let got = match &d {
                Decision::Allow { rule, .. } => format!("allow:{rule}"),
                Decision::Park { .. } => "park".into(),
                Decision::Deny { reason, .. } => reason.to_string(),
            };
            assert_eq!(got, want, "{what}: {d:?}");
            assert_eq!(d.condition().map(|c| &**c), want_cond, "{what}: {d:?}");
            if let Decision::Deny { detail, .. } = &d {
                if let Some(c) = want_cond {
                    assert!(detail.contains(c), "{what}: {detail}");
                }
            }
        }
    }

    /// A conditional grant must hold for every name the request goes by.
    #[test]
    fn conditional_grants_hold_for_every_alias() {
        let p = Profile {
            tools: vec![],
            approval: vec![],
            conditional: vec![entry(List::Tools, "items.get", "true")],
            max_risk: Risk::High,
            ..profile()
        };
        let a = agent(p, None);
        let mut t = tool("items.get", Risk::Low);
        t.aliases = vec!["items.export.list".into()];
        let ev = Evaluated {
            entries: vec![Some(Outcome::Holds(true))],
            trail: vec![],
        };
        let d = decide(&Input {
            agent: &a,
            narrowing: &Narrowing::default(),
            tool: &t,
            path: "/items/EXPORT",
            switches: &Switches::default(),
            approved: false,
            evaluated: &ev,
        });
        assert!(
            matches!(&d, Decision::Deny { reason: "not_granted", detail, .. } if detail.contains("items.export.list")),
            "{d:?}"
        );
    }

    #[test]
    fn globs() {
        let cases = [
            ("tickets.*", "tickets.comments.create", true),
            ("*.delete", "a.b.delete", true),
            ("*.delete", "a.deleted", false),
            ("tickets.get", "tickets.get", true),
            ("tickets.get", "tickets.gets", false),
            ("*", "x", true),
            ("a*b*c", "aXbYc", true),
            ("a*b*c", "aXbY", false),
        ];
        for (p, s, want) in cases {
            assert_eq!(Glob(p.into()).matches(s), want, "{p} {s}");
        }
    }
}

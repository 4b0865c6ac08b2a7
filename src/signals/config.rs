//! The `signals:` block (top level, and `signals:` inside a profile): thresholds, windows,
//! baselines and the brake each signal applies. Raw structs refuse unknown keys; a
//! profile's block overrides the top-level one field by field.

use crate::config::duration;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

/// What a signal does besides being recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Alert,
    PauseAgent,
    RevokeCredential,
    DraftOnly,
}

impl Action {
    pub fn parse(s: &str) -> Option<Action> {
        Some(match s {
            "alert" => Action::Alert,
            "pause_agent" => Action::PauseAgent,
            "revoke_credential" => Action::RevokeCredential,
            "draft_only" => Action::DraftOnly,
            _ => return None,
        })
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Alert => "alert",
            Action::PauseAgent => "pause_agent",
            Action::RevokeCredential => "revoke_credential",
            Action::DraftOnly => "draft_only",
        }
    }
}

/// The six signals.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    RefusalBurst,
    NewTool,
    RateSpike,
    VolumeSpike,
    UpstreamFailures,
    ApprovalDenials,
}

impl Kind {
    pub const ALL: [Kind; 6] = [
        Kind::RefusalBurst,
        Kind::NewTool,
        Kind::RateSpike,
        Kind::VolumeSpike,
        Kind::UpstreamFailures,
        Kind::ApprovalDenials,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::RefusalBurst => "refusal_burst",
            Kind::NewTool => "new_tool",
            Kind::RateSpike => "rate_spike",
            Kind::VolumeSpike => "volume_spike",
            Kind::UpstreamFailures => "upstream_failures",
            Kind::ApprovalDenials => "approval_denials",
        }
    }
    pub fn parse(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// One signal's settings as written; every field optional (a profile overrides some).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawSignal {
    #[serde(default)]
    pub enabled: Option<bool>,
    #[serde(default)]
    pub action: Option<String>,
    /// A count (`refusal_burst`, `upstream_failures`, `approval_denials`).
    #[serde(default)]
    pub threshold: Option<u64>,
    #[serde(default)]
    pub window: Option<String>,
    /// `rate_spike`, `volume_spike`: how many times the baseline.
    #[serde(default)]
    pub factor: Option<f64>,
    /// The baseline's half-life (an exponentially weighted average).
    #[serde(default)]
    pub half_life: Option<String>,
    /// Below this baseline (calls or bytes per window) the baseline counts as this.
    #[serde(default)]
    pub min_baseline: Option<f64>,
    /// `new_tool`: how long after an agent's first call no tool is new to it.
    #[serde(default)]
    pub learn_for: Option<String>,
    /// `new_tool`: how many tools are remembered per agent.
    #[serde(default)]
    pub max_tools: Option<u64>,
}

/// `signals:` as written.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawSignals {
    #[serde(default)]
    pub enabled: Option<bool>,
    #[serde(default)]
    pub refusal_burst: Option<RawSignal>,
    #[serde(default)]
    pub new_tool: Option<RawSignal>,
    #[serde(default)]
    pub rate_spike: Option<RawSignal>,
    #[serde(default)]
    pub volume_spike: Option<RawSignal>,
    #[serde(default)]
    pub upstream_failures: Option<RawSignal>,
    #[serde(default)]
    pub approval_denials: Option<RawSignal>,
}

impl RawSignals {
    fn get(&self, k: Kind) -> Option<&RawSignal> {
        match k {
            Kind::RefusalBurst => self.refusal_burst.as_ref(),
            Kind::NewTool => self.new_tool.as_ref(),
            Kind::RateSpike => self.rate_spike.as_ref(),
            Kind::VolumeSpike => self.volume_spike.as_ref(),
            Kind::UpstreamFailures => self.upstream_failures.as_ref(),
            Kind::ApprovalDenials => self.approval_denials.as_ref(),
        }
    }
}

/// One signal, compiled.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    pub enabled: bool,
    pub action: Action,
    pub threshold: u64,
    pub window: Duration,
    pub factor: f64,
    pub half_life: Duration,
    pub min_baseline: f64,
    pub learn_for: Duration,
    pub max_tools: u64,
}

/// Every signal for one profile.
#[derive(Debug, Clone, PartialEq)]
pub struct Rules {
    pub enabled: bool,
    rules: [Rule; 6],
}

impl Rules {
    pub fn get(&self, k: Kind) -> &Rule {
        &self.rules[k as usize]
    }
    /// A signal that is on (and the block with it).
    pub fn on(&self, k: Kind) -> Option<&Rule> {
        let r = self.get(k);
        (self.enabled && r.enabled).then_some(r)
    }
}

/// The compiled `signals:`: the rules of each agent (by its profile).
#[derive(Debug, Clone)]
pub struct SignalsConfig {
    pub by_agent: HashMap<String, Arc<Rules>>,
    pub default: Arc<Rules>,
}

impl SignalsConfig {
    pub fn rules(&self, agent: &str) -> &Arc<Rules> {
        self.by_agent.get(agent).unwrap_or(&self.default)
    }
}

/// The defaults the issue names: bursts of refusals and of operator denials pause the
/// agent; the rest alert.
fn default_rule(k: Kind) -> Rule {
    let m = Duration::from_secs(60);
    let h = Duration::from_secs(3600);
    let base = Rule {
        enabled: true,
        action: Action::Alert,
        threshold: 0,
        window: m,
        factor: 0.0,
        half_life: h,
        min_baseline: 0.0,
        learn_for: Duration::ZERO,
        max_tools: 0,
    };
    match k {
        Kind::RefusalBurst => Rule {
            action: Action::PauseAgent,
            threshold: 20,
            ..base
        },
        Kind::NewTool => Rule {
            learn_for: Duration::from_secs(86_400),
            max_tools: 1000,
            ..base
        },
        Kind::RateSpike => Rule {
            factor: 10.0,
            min_baseline: 10.0,
            ..base
        },
        Kind::VolumeSpike => Rule {
            factor: 5.0,
            min_baseline: 1_048_576.0,
            ..base
        },
        Kind::UpstreamFailures => Rule {
            threshold: 5,
            ..base
        },
        Kind::ApprovalDenials => Rule {
            action: Action::PauseAgent,
            threshold: 3,
            window: h,
            ..base
        },
    }
}

/// A config error at `path` (the caller places it at file:line:col).
pub type At = (String, String);

fn merge(k: Kind, at: &str, base: &Rule, raw: Option<&RawSignal>) -> Result<Rule, At> {
    let Some(r) = raw else {
        return Ok(base.clone());
    };
    let at = format!("{at}.{}", k.as_str());
    let err = |key: &str, m: String| (format!("{at}.{key}"), m);
    let dur = |key: &str, v: &Option<String>, d: Duration| -> Result<Duration, At> {
        match v {
            None => Ok(d),
            Some(s) => duration::parse(s).map_err(|e| err(key, e)),
        }
    };
    let counted = matches!(
        k,
        Kind::RefusalBurst | Kind::UpstreamFailures | Kind::ApprovalDenials
    );
    let spiky = matches!(k, Kind::RateSpike | Kind::VolumeSpike);
    let refuse = |key: &str, given: bool, ok: bool| -> Result<(), At> {
        if given && !ok {
            return Err(err(
                key,
                format!("`{key}` does not apply to {}", k.as_str()),
            ));
        }
        Ok(())
    };
    refuse("threshold", r.threshold.is_some(), counted)?;
    refuse(
        "window",
        r.window.is_some(),
        counted && k != Kind::UpstreamFailures || spiky,
    )?;
    refuse("factor", r.factor.is_some(), spiky)?;
    refuse("half_life", r.half_life.is_some(), spiky)?;
    refuse("min_baseline", r.min_baseline.is_some(), spiky)?;
    refuse("learn_for", r.learn_for.is_some(), k == Kind::NewTool)?;
    refuse("max_tools", r.max_tools.is_some(), k == Kind::NewTool)?;
    let out = Rule {
        enabled: r.enabled.unwrap_or(base.enabled),
        action: match &r.action {
            None => base.action,
            Some(s) => Action::parse(s).ok_or_else(|| {
                err(
                    "action",
                    format!("`{s}`: expected alert, pause_agent, revoke_credential or draft_only"),
                )
            })?,
        },
        threshold: r.threshold.unwrap_or(base.threshold),
        window: dur("window", &r.window, base.window)?,
        factor: r.factor.unwrap_or(base.factor),
        half_life: dur("half_life", &r.half_life, base.half_life)?,
        min_baseline: r.min_baseline.unwrap_or(base.min_baseline),
        learn_for: dur("learn_for", &r.learn_for, base.learn_for)?,
        max_tools: r.max_tools.unwrap_or(base.max_tools),
    };
    if counted && out.threshold == 0 {
        return Err(err("threshold", "must be at least 1".into()));
    }
    if out.window < Duration::from_millis(100) || out.window > Duration::from_secs(86_400) {
        return Err(err("window", "must be between 100ms and 1day".into()));
    }
    if spiky {
        if !(out.factor.is_finite() && out.factor > 1.0) {
            return Err(err("factor", "must be a number above 1".into()));
        }
        if !(out.min_baseline.is_finite() && out.min_baseline > 0.0) {
            return Err(err("min_baseline", "must be a number above 0".into()));
        }
        if out.half_life < out.window {
            return Err(err("half_life", "must be at least the window".into()));
        }
    }
    if k == Kind::NewTool && !(1..=100_000).contains(&out.max_tools) {
        return Err(err("max_tools", "must be between 1 and 100000".into()));
    }
    Ok(out)
}

fn compile_rules(at: &str, base: &Rules, raw: &RawSignals) -> Result<Rules, At> {
    let mut rules = base.rules.clone();
    for k in Kind::ALL {
        rules[k as usize] = merge(k, at, base.get(k), raw.get(k))?;
    }
    Ok(Rules {
        enabled: raw.enabled.unwrap_or(base.enabled),
        rules,
    })
}

/// Compiles the top-level block and each profile's override; `agents` maps agent id to
/// profile name.
pub fn compile(
    top: Option<&RawSignals>,
    profiles: &BTreeMap<String, Option<RawSignals>>,
    agents: impl Iterator<Item = (String, String)>,
) -> Result<SignalsConfig, At> {
    let defaults = Rules {
        enabled: true,
        rules: Kind::ALL.map(default_rule),
    };
    let top = match top {
        Some(t) => compile_rules("signals", &defaults, t)?,
        None => defaults,
    };
    let top = Arc::new(top);
    let mut by_profile = HashMap::new();
    for (name, raw) in profiles {
        if let Some(raw) = raw {
            let r = compile_rules(&format!("profiles.{name}.signals"), &top, raw)?;
            by_profile.insert(name.clone(), Arc::new(r));
        }
    }
    let by_agent = agents
        .filter_map(|(a, p)| Some((a, by_profile.get(&p)?.clone())))
        .collect();
    Ok(SignalsConfig {
        by_agent,
        default: top,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(y: &str) -> RawSignals {
        serde_yaml::from_str(y).unwrap()
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        let c = compile(None, &BTreeMap::new(), std::iter::empty()).unwrap();
        let r = &c.default;
        assert_eq!(r.get(Kind::RefusalBurst).threshold, 20);
        assert_eq!(r.get(Kind::RefusalBurst).action, Action::PauseAgent);
        assert_eq!(r.get(Kind::ApprovalDenials).action, Action::PauseAgent);
        assert_eq!(
            r.get(Kind::ApprovalDenials).window,
            Duration::from_secs(3600)
        );
        assert_eq!(r.get(Kind::RateSpike).factor, 10.0);
        assert_eq!(r.get(Kind::VolumeSpike).factor, 5.0);
        assert_eq!(r.get(Kind::UpstreamFailures).threshold, 5);
        assert_eq!(r.get(Kind::NewTool).action, Action::Alert);
        assert_eq!(r.get(Kind::NewTool).learn_for, Duration::from_secs(86_400));
    }

    #[test]
    fn a_profile_overrides_field_by_field() {
        let top = parse("refusal_burst: { threshold: 5 }");
        let mut p = BTreeMap::new();
        p.insert("p".into(), Some(parse("refusal_burst: { action: alert }")));
        let c = compile(
            Some(&top),
            &p,
            [("a".to_string(), "p".to_string())].into_iter(),
        )
        .unwrap();
        let r = c.rules("a").get(Kind::RefusalBurst);
        assert_eq!((r.threshold, r.action), (5, Action::Alert));
        assert_eq!(
            c.rules("b").get(Kind::RefusalBurst).action,
            Action::PauseAgent
        );
    }

    #[test]
    fn bad_values_name_their_key() {
        let e = compile(
            Some(&parse("rate_spike: { threshold: 3 }")),
            &BTreeMap::new(),
            std::iter::empty(),
        )
        .unwrap_err();
        assert_eq!(e.0, "signals.rate_spike.threshold");
        let e = compile(
            Some(&parse("refusal_burst: { action: explode }")),
            &BTreeMap::new(),
            std::iter::empty(),
        )
        .unwrap_err();
        assert_eq!(e.0, "signals.refusal_burst.action");
        assert!(serde_yaml::from_str::<RawSignals>("refusal_bust: {}").is_err());
    }
}

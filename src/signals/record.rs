//! A signal as stored and shown: what crossed which threshold, for whom, the brake it
//! applied, and its acknowledgement.

use serde::{Deserialize, Serialize};

/// The most tools an open `new_tool` signal lists besides its own.
pub const MORE_TOOLS: usize = 50;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Signal {
    pub id: String,
    pub kind: String,
    pub agent: String,
    #[serde(default)]
    pub credential: Option<String>,
    #[serde(default)]
    pub tenant: Option<String>,
    /// The request that crossed the threshold.
    #[serde(default)]
    pub request_id: Option<String>,
    /// `new_tool`: the tool.
    #[serde(default)]
    pub tool: Option<String>,
    /// `new_tool`: more tools called for the first time while this signal was open
    /// (at most [`MORE_TOOLS`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub more_tools: Vec<String>,
    /// The window counted over (`1m`), if the signal has one.
    #[serde(default)]
    pub window: Option<String>,
    pub observed: f64,
    pub threshold: f64,
    #[serde(default)]
    pub baseline: Option<f64>,
    pub action: String,
    /// `applied`, `none` (alert), or `failed: <reason>`.
    pub brake: String,
    pub node: String,
    pub at_ms: u64,
    /// `open` or `acknowledged`.
    pub state: String,
    #[serde(default)]
    pub acked_by: Option<String>,
    #[serde(default)]
    pub ack_note: Option<String>,
    #[serde(default)]
    pub acked_at_ms: Option<u64>,
}

impl Signal {
    pub fn is_open(&self) -> bool {
        self.state == "open"
    }

    /// One line for logs and the webhook's Slack-compatible `text`.
    pub fn text(&self) -> String {
        let what = match (self.kind.as_str(), &self.tool, &self.window) {
            ("new_tool", Some(t), _) => format!("first call of `{t}`"),
            (_, _, Some(w)) => format!("{} in {w} (threshold {})", self.observed, self.threshold),
            _ => format!("{} (threshold {})", self.observed, self.threshold),
        };
        let brake = match self.action.as_str() {
            "alert" => String::new(),
            a => format!(" — brake {a}: {}", self.brake),
        };
        format!(
            "[portcullis] signal {} for agent {}: {what}{brake} — signal {}",
            self.kind, self.agent, self.id
        )
    }

    /// The API's view (times spelled out).
    pub fn view(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self).unwrap_or_default();
        v["at"] = rfc3339(self.at_ms).into();
        if let Some(ms) = self.acked_at_ms {
            v["acked_at"] = rfc3339(ms).into();
        }
        v
    }
}

pub fn rfc3339(ms: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms))
        .to_string()
}

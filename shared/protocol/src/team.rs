//! The team registry: who proves, with which workflow, on which task classes.
//! Loaded from a TOML file by the scheduler and kept in a KV bucket (one key per team).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::names::{validate_chain, validate_token};
use crate::workflow::{MAX_ARITY, MAX_PARTS, Workflow};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Shape {
    /// One task per block: the leaf is the root.
    #[default]
    Single,
    /// `parts` leaves, aggregated as a tree of `arity`.
    Split,
}

fn default_class() -> String {
    "prove".to_string()
}
/// Short, so a dead prover's task moves on within seconds; heartbeats every third of it keep
/// a live prover's task however long it takes.
fn default_ack_wait_ms() -> u64 {
    3_000
}
fn default_max_deliver() -> i64 {
    5
}
fn default_arity() -> u32 {
    2
}
fn default_slot_ms() -> u64 {
    12_000
}
fn default_sample_every() -> u64 {
    1
}

/// How a team's blocks are finalized.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Rollups: every block is proved and published strictly in block order, never skipped.
    #[default]
    Sequential,
    /// Real-time L1 proving: every block has a deadline (its slot); a block that cannot make it
    /// is handled by the team's late policy and counted as missed. Proofs are published as
    /// soon as they exist.
    Realtime,
}

/// What happens to a realtime block whose deadline has passed while a newer block waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LatePolicy {
    /// Withdraw its queued tasks and stop its provers: capacity goes to the head.
    #[default]
    Drop,
    /// Keep proving it; the proof is published late and counted as a miss.
    FinishLate,
}

/// Settings of one task class that override the team's (`[team.class.<name>]` in a teams
/// file): aggregations may take longer than leaves, or deserve fewer tries.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassSettings {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ack_wait_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_deliver: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_limit_ms: Option<u64>,
}

/// What one class of a team's tasks gets: the team's settings with the class's overrides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClassLimits {
    /// Ack deadline of a delivery, renewed by the gateway's heartbeats while proving.
    pub ack_wait: Duration,
    /// Deliveries of a task before it is dead-lettered.
    pub max_deliver: i64,
    /// Longest a prover may run on one task before it is killed and the delivery counts as
    /// failed; None leaves it to the gateway's `--task-timeout`.
    pub time_limit: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TeamConfig {
    pub name: String,
    #[serde(default)]
    pub shape: Shape,
    /// Leaves of a `split` workflow.
    #[serde(default)]
    pub parts: Option<u32>,
    /// Children per aggregation node of a `split` workflow.
    #[serde(default = "default_arity")]
    pub arity: u32,
    /// Chains this team proves; empty means every chain.
    #[serde(default)]
    pub chains: Vec<String>,
    /// Task class of leaf proofs (its own consumer group).
    #[serde(default = "default_class")]
    pub leaf_class: String,
    /// Task class of aggregation proofs.
    #[serde(default = "default_class")]
    pub aggregate_class: String,
    /// Ack deadline of a task; gateways renew it with heartbeats while proving.
    #[serde(default = "default_ack_wait_ms")]
    pub ack_wait_ms: u64,
    /// Deliveries of one task before it is dead-lettered; also the number of invalid proofs
    /// of one node tolerated before the block fails for this team. A class may override it
    /// (`class`), for both.
    #[serde(default = "default_max_deliver")]
    pub max_deliver: i64,
    /// Proof system the team's provers produce; a result naming another is rejected.
    #[serde(default)]
    pub proof_system: Option<String>,
    /// Verifier command (program and arguments) run as `<verifier…> verify --proof FILE`
    /// on every sub-proof before the aggregator accepts it; empty means no verification.
    #[serde(default)]
    pub verifier: Vec<String>,
    #[serde(default)]
    pub mode: Mode,
    /// Realtime: a block's deadline is its submission time plus this slot, unless the block
    /// carries its own deadline.
    #[serde(default = "default_slot_ms")]
    pub slot_ms: u64,
    /// Realtime sampling: prove only blocks whose number is a multiple of this.
    #[serde(default = "default_sample_every")]
    pub sample_every: u64,
    /// Realtime: what happens to work on a block that missed its deadline.
    #[serde(default)]
    pub late_policy: LatePolicy,
    /// Longest a prover may run on one task (every class), unless its class says otherwise;
    /// None leaves it to the gateway's `--task-timeout`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_limit_ms: Option<u64>,
    /// Per-class overrides of `ack_wait_ms`, `max_deliver` and `time_limit_ms`, by class name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub class: BTreeMap<String, ClassSettings>,
    /// The team's cluster id at Ethproofs: the reporter reports this team's blocks there under
    /// it. None: not reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ethproofs_cluster_id: Option<u64>,
}

impl TeamConfig {
    pub fn single(name: &str) -> Self {
        Self {
            name: name.to_string(),
            shape: Shape::Single,
            parts: None,
            arity: default_arity(),
            chains: Vec::new(),
            leaf_class: default_class(),
            aggregate_class: default_class(),
            ack_wait_ms: default_ack_wait_ms(),
            max_deliver: default_max_deliver(),
            proof_system: None,
            verifier: Vec::new(),
            mode: Mode::Sequential,
            slot_ms: default_slot_ms(),
            sample_every: default_sample_every(),
            late_policy: LatePolicy::Drop,
            time_limit_ms: None,
            class: BTreeMap::new(),
            ethproofs_cluster_id: None,
        }
    }

    /// The same team in realtime mode with deadline `slot_ms` after submission.
    pub fn realtime(self, slot_ms: u64) -> Self {
        Self {
            mode: Mode::Realtime,
            slot_ms,
            ..self
        }
    }

    pub fn is_realtime(&self) -> bool {
        self.mode == Mode::Realtime
    }

    /// Whether this team proves block `number` at all (realtime sampling).
    pub fn samples(&self, number: u64) -> bool {
        number.is_multiple_of(self.sample_every.max(1))
    }

    /// The deadline of a block for this team: the block's own, else (realtime) its slot's end.
    pub fn deadline_for(
        &self,
        submitted_at_ms: u64,
        block_deadline_ms: Option<u64>,
    ) -> Option<u64> {
        match (block_deadline_ms, self.mode) {
            (Some(d), _) => Some(d),
            (None, Mode::Realtime) => Some(submitted_at_ms.saturating_add(self.slot_ms)),
            (None, Mode::Sequential) => None,
        }
    }

    pub fn split(name: &str, parts: u32, arity: u32) -> Self {
        Self {
            shape: Shape::Split,
            parts: Some(parts),
            arity,
            ..Self::single(name)
        }
    }

    /// The team's workflow, within the bounds a workflow message may carry. A team that
    /// passed [`TeamConfig::problems`] gets its own settings; a registry record that never did
    /// (the bucket takes any write) gets at most [`MAX_PARTS`] leaves and arity [`MAX_ARITY`]
    /// rather than a tree no service could plan or decode.
    pub fn workflow(&self) -> Workflow {
        match self.shape {
            Shape::Single => Workflow::SINGLE,
            Shape::Split => Workflow {
                parts: self.parts.unwrap_or(1).min(MAX_PARTS),
                arity: self.arity.min(MAX_ARITY),
            },
        }
    }

    /// Whether results of this team are checked before they are accepted.
    pub fn checks_proofs(&self) -> bool {
        self.proof_system.is_some() || !self.verifier.is_empty()
    }

    pub fn proves_chain(&self, chain: &str) -> bool {
        self.chains.is_empty() || self.chains.iter().any(|c| c == chain)
    }

    /// The task classes this team's gateways serve, without repeats.
    pub fn classes(&self) -> Vec<String> {
        let mut classes = vec![self.leaf_class.clone()];
        if self.shape == Shape::Split && self.aggregate_class != self.leaf_class {
            classes.push(self.aggregate_class.clone());
        }
        classes
    }

    /// The settings tasks of `class` get: the class's overrides, else the team's.
    pub fn limits(&self, class: &str) -> ClassLimits {
        let own = self.class.get(class);
        ClassLimits {
            ack_wait: Duration::from_millis(
                own.and_then(|c| c.ack_wait_ms).unwrap_or(self.ack_wait_ms),
            ),
            max_deliver: own.and_then(|c| c.max_deliver).unwrap_or(self.max_deliver),
            time_limit: own
                .and_then(|c| c.time_limit_ms)
                .or(self.time_limit_ms)
                .map(Duration::from_millis),
        }
    }

    /// The class a node of this team's workflow is proved on.
    pub fn class_of(&self, level: u32) -> &str {
        if level == 0 {
            &self.leaf_class
        } else {
            &self.aggregate_class
        }
    }

    /// Every problem with this team's settings, not just the first.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let name = &self.name;
        if let Err(e) = validate_token("team name", name) {
            problems.push(e.to_string());
        }
        for class in [&self.leaf_class, &self.aggregate_class] {
            if let Err(e) = validate_token("task class", class) {
                problems.push(format!("team {name}: {e}"));
            }
        }
        for chain in &self.chains {
            if let Err(e) = validate_chain(chain) {
                problems.push(format!("team {name}: {e}"));
            }
        }
        match (self.shape, self.parts) {
            (Shape::Split, None) => problems.push(format!("team {name}: split needs `parts`")),
            (Shape::Split, Some(p)) if !(1..=MAX_PARTS).contains(&p) => problems.push(format!(
                "team {name}: parts must be 1 to {MAX_PARTS}, got {p}"
            )),
            (Shape::Single, Some(_)) => {
                problems.push(format!("team {name}: `parts` only applies to shape split"))
            }
            _ => {}
        }
        if !(2..=MAX_ARITY).contains(&self.arity) {
            problems.push(format!(
                "team {name}: arity must be 2 to {MAX_ARITY}, got {}",
                self.arity
            ));
        }
        let classes = self.classes();
        let settings = std::iter::once((
            format!("team {name}"),
            self.ack_wait_ms,
            self.max_deliver,
            self.time_limit_ms,
        ))
        .chain(self.class.iter().map(|(class, c)| {
            (
                format!("team {name}, class {class}"),
                c.ack_wait_ms.unwrap_or(self.ack_wait_ms),
                c.max_deliver.unwrap_or(self.max_deliver),
                c.time_limit_ms,
            )
        }));
        for (whose, ack_wait_ms, max_deliver, time_limit_ms) in settings {
            if ack_wait_ms < 500 {
                problems.push(format!("{whose}: ack_wait_ms must be at least 500"));
            }
            if max_deliver < 1 {
                problems.push(format!("{whose}: max_deliver must be at least 1"));
            }
            if time_limit_ms.is_some_and(|t| t < 100) {
                problems.push(format!("{whose}: time_limit_ms must be at least 100"));
            }
        }
        for class in self.class.keys() {
            if !classes.contains(class) {
                problems.push(format!(
                    "team {name}: settings for class {class}, which the team does not use (its classes: {})",
                    classes.join(", ")
                ));
            }
        }
        if self.slot_ms < 50 {
            problems.push(format!("team {name}: slot_ms must be at least 50"));
        }
        if self.sample_every == 0 {
            problems.push(format!("team {name}: sample_every must be at least 1"));
        }
        if self.sample_every > 1 && self.mode == Mode::Sequential {
            problems.push(format!(
                "team {name}: sampling skips blocks, which mode sequential never does; use mode realtime"
            ));
        }
        problems
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TeamsFile {
    #[serde(default)]
    pub team: Vec<TeamConfig>,
}

impl TeamsFile {
    /// Parses and validates a teams file, reporting every problem at once.
    pub fn parse(text: &str) -> Result<Vec<TeamConfig>, Vec<String>> {
        let file: TeamsFile = toml::from_str(text).map_err(|e| vec![e.to_string()])?;
        let mut problems: Vec<String> = file.team.iter().flat_map(|t| t.problems()).collect();
        let mut seen = std::collections::HashSet::new();
        for t in &file.team {
            if !seen.insert(&t.name) {
                problems.push(format!("team {} is defined twice", t.name));
            }
        }
        if problems.is_empty() {
            Ok(file.team)
        } else {
            Err(problems)
        }
    }

    /// The two teams `push0 dev` runs when given no file: one `single`, one `split`.
    pub fn default_teams() -> Vec<TeamConfig> {
        vec![TeamConfig::single("alpha"), TeamConfig::split("beta", 4, 2)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_teams_file() {
        let teams = TeamsFile::parse(
            r#"
            [[team]]
            name = "alpha"
            [[team]]
            name = "beta"
            shape = "split"
            parts = 4
            chains = ["eth"]
            "#,
        )
        .unwrap();
        assert_eq!(teams[0].workflow(), Workflow::SINGLE);
        assert_eq!(teams[1].workflow(), Workflow { parts: 4, arity: 2 });
        assert!(teams[1].proves_chain("eth"));
        assert!(!teams[1].proves_chain("op"));
        assert!(teams[0].proves_chain("anything"));
    }

    #[test]
    fn reports_every_problem() {
        let err = TeamsFile::parse(
            r#"
            [[team]]
            name = "Bad.Name"
            [[team]]
            name = "s"
            shape = "split"
            arity = 1
            "#,
        )
        .unwrap_err();
        assert_eq!(err.len(), 3, "{err:?}");
    }

    #[test]
    fn realtime_settings() {
        let teams = TeamsFile::parse(
            r#"
            [[team]]
            name = "rt"
            mode = "realtime"
            slot_ms = 2000
            sample_every = 3
            late_policy = "finish-late"
            "#,
        )
        .unwrap();
        let t = &teams[0];
        assert!(t.is_realtime());
        assert_eq!(t.late_policy, LatePolicy::FinishLate);
        assert_eq!(t.deadline_for(1000, None), Some(3000));
        assert_eq!(t.deadline_for(1000, Some(1500)), Some(1500));
        assert!(t.samples(9) && !t.samples(10));
        assert_eq!(TeamConfig::single("s").deadline_for(1000, None), None);
        let err = TeamsFile::parse("[[team]]\nname = \"a\"\nsample_every = 2\n").unwrap_err();
        assert!(err[0].contains("realtime"), "{err:?}");
    }

    #[test]
    fn class_settings_override_the_teams() {
        let teams = TeamsFile::parse(
            r#"
            [[team]]
            name = "s"
            shape = "split"
            parts = 4
            leaf_class = "leaf"
            aggregate_class = "agg"
            ack_wait_ms = 2000
            max_deliver = 4
            time_limit_ms = 60000
            [team.class.agg]
            ack_wait_ms = 9000
            max_deliver = 2
            "#,
        )
        .unwrap();
        let t = &teams[0];
        let leaf = t.limits("leaf");
        assert_eq!(leaf.ack_wait, Duration::from_secs(2));
        assert_eq!(leaf.max_deliver, 4);
        assert_eq!(leaf.time_limit, Some(Duration::from_secs(60)));
        let agg = t.limits("agg");
        assert_eq!(agg.ack_wait, Duration::from_secs(9));
        assert_eq!(agg.max_deliver, 2);
        assert_eq!(agg.time_limit, Some(Duration::from_secs(60)), "inherited");

        let err = TeamsFile::parse(
            "[[team]]\nname = \"a\"\n[team.class.prove]\nmax_deliver = 0\n[team.class.other]\nack_wait_ms = 1000\n",
        )
        .unwrap_err();
        assert!(
            err.iter().any(|e| e.contains("class prove: max_deliver")),
            "{err:?}"
        );
        assert!(
            err.iter()
                .any(|e| e.contains("class other, which the team does not use")),
            "{err:?}"
        );
    }

    /// fuzz/corpus/team/record-split-realtime, a realtime team, planned a block submitted at
    /// u64::MAX: the slot's end overflowed.
    #[test]
    fn hostile_times_and_shapes_stay_in_range() {
        let t = TeamConfig::single("rt").realtime(u64::MAX);
        assert_eq!(t.deadline_for(u64::MAX, None), Some(u64::MAX));
        assert_eq!(t.deadline_for(1, None), Some(u64::MAX));
        // A registry record is decoded without `problems`: its tree stays within what a
        // workflow message may carry.
        let huge = TeamConfig::split("s", u32::MAX, u32::MAX);
        assert!(!huge.problems().is_empty());
        assert_eq!(
            huge.workflow(),
            Workflow {
                parts: MAX_PARTS,
                arity: MAX_ARITY
            }
        );
        assert_eq!(
            TeamConfig::split("s", 7, 3).workflow(),
            Workflow { parts: 7, arity: 3 }
        );
    }

    #[test]
    fn rejects_unknown_keys() {
        assert!(TeamsFile::parse("[[team]]\nname = \"a\"\nshap = \"split\"\n").is_err());
    }
}

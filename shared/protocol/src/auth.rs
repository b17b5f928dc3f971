//! Who may do what on the bus. Every connection has an identity with the least rights its
//! flows need, enforced by nats-server from the authorization block [`render`] writes:
//!
//! - `admin`: everything; the topology step (the one owner of streams) and operators' writes.
//! - `ingest`, `scheduler`, `aggregator`, `reporter`: push0's services. They read and write
//!   push0's subjects and buckets and keep their own consumers; none may create, change or
//!   delete a stream (the scheduler alone may purge, to withdraw a removed team's tasks).
//! - `team-<name>`: one team's gateways. They fetch and ack only from their team's task
//!   consumers, publish only their team's results, heartbeats and attempt records, read the
//!   team registry and block payloads, and read and write their team's own object store. They
//!   cannot publish a block or a block proof, write the shared object store, read another
//!   team's tasks, replies or stored proofs, or touch a stream.
//! - `source`: block sources; publish blocks, nothing else.
//! - `reader`: status, dashboard and verify; read streams and buckets, no writes, no
//!   consumers on the work queues.
//!
//! Replies reach a connection on its own inbox, `_INBOX.<public key>`: an identity may listen
//! only there, so one team cannot read the answers to another's pulls.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::subjects::Subjects;
use crate::team::TeamConfig;

/// push0's services, each its own identity.
pub const SERVICES: [&str; 4] = ["ingest", "scheduler", "aggregator", "reporter"];

/// One kind of connection to the bus.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Identity {
    Admin,
    /// One of [`SERVICES`].
    Service(&'static str),
    /// The gateways of one team, over the task classes the team proves.
    Team {
        name: String,
        classes: Vec<String>,
    },
    Source,
    /// Readers, who may also read every team's stored proofs.
    Reader {
        teams: Vec<String>,
    },
}

impl Identity {
    pub fn team(team: &TeamConfig) -> Self {
        Identity::Team {
            name: team.name.clone(),
            classes: team.classes(),
        }
    }

    /// The service identity called `name`, if push0 has such a service.
    pub fn service(name: &str) -> Option<Self> {
        SERVICES
            .iter()
            .copied()
            .find(|s| *s == name)
            .map(Identity::Service)
    }

    /// Every identity of a cluster with `teams`.
    pub fn all(teams: &[TeamConfig]) -> Vec<Self> {
        let reader = Identity::Reader {
            teams: teams.iter().map(|t| t.name.clone()).collect(),
        };
        let mut all = vec![Identity::Admin, Identity::Source, reader];
        all.extend(SERVICES.iter().copied().map(Identity::Service));
        all.extend(teams.iter().map(Identity::team));
        all
    }

    /// The identity's name, also the stem of its key file: `admin`, `scheduler`,
    /// `team-alpha`, ...
    pub fn name(&self) -> String {
        match self {
            Identity::Admin => "admin".into(),
            Identity::Service(s) => (*s).into(),
            Identity::Team { name, .. } => team_identity(name),
            Identity::Source => "source".into(),
            Identity::Reader { .. } => "reader".into(),
        }
    }
}

/// The identity name of the gateways of team `team`.
pub fn team_identity(team: &str) -> String {
    format!("team-{team}")
}

/// The inbox prefix of a connection authenticated by `public_key`.
pub fn inbox_prefix(public_key: &str) -> String {
    format!("_INBOX.{public_key}")
}

/// Subjects an identity may publish to (less `publish_deny`) and subscribe to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Permissions {
    pub publish: Vec<String>,
    pub publish_deny: Vec<String>,
    pub subscribe: Vec<String>,
}

/// The rights of `who` when its inbox prefix is `inbox`.
pub fn permissions(s: &Subjects, who: &Identity, inbox: &str) -> Permissions {
    let api = "$JS.API";
    let own_inbox = format!("{inbox}.>");
    let kv = |bucket: String| format!("KV_{bucket}");
    let objects = s.object_store();
    let obj = format!("OBJ_{objects}");
    match who {
        Identity::Admin => Permissions {
            publish: vec![">".into()],
            publish_deny: Vec::new(),
            subscribe: vec![">".into()],
        },
        Identity::Service(name) => {
            let mut deny = vec![
                format!("{api}.STREAM.CREATE.>"),
                format!("{api}.STREAM.UPDATE.>"),
                format!("{api}.STREAM.DELETE.>"),
                format!("{api}.CONSUMER.DELETE.>"),
                format!("{api}.ACCOUNT.>"),
                "$SYS.>".into(),
            ];
            if *name != "scheduler" {
                deny.push(format!("{api}.STREAM.PURGE.>"));
            }
            Permissions {
                publish: vec![">".into()],
                publish_deny: deny,
                subscribe: vec![own_inbox, format!("{}.>", s.prefix())],
            }
        }
        Identity::Team { name, classes } => {
            let tasks = s.stream_tasks();
            let teams = kv(s.bucket_teams());
            let mut publish = vec![
                format!("{api}.STREAM.INFO.{tasks}"),
                // The team registry, read by a watch (an ordered consumer).
                format!("{api}.STREAM.INFO.{teams}"),
                format!("{api}.CONSUMER.CREATE.{teams}"),
                format!("{api}.CONSUMER.CREATE.{teams}.>"),
                format!("{api}.DIRECT.GET.{teams}.>"),
                format!("$JS.FC.{teams}.>"),
                s.results(name),
                format!("{}.dlq.prover-gateway.>", s.prefix()),
            ];
            // Payloads: read blocks from the shared store, which only services write; read
            // sub-proofs from the team's own store and write proofs above the inline size
            // there. Another team's store is out of reach.
            let own = s.team_object_store(name);
            for store in [&objects, &own] {
                let stream = format!("OBJ_{store}");
                publish.extend([
                    format!("{api}.STREAM.INFO.{stream}"),
                    format!("{api}.STREAM.MSG.GET.{stream}"),
                    format!("{api}.DIRECT.GET.{stream}.>"),
                    format!("{api}.CONSUMER.CREATE.{stream}"),
                    format!("{api}.CONSUMER.CREATE.{stream}.>"),
                    format!("$JS.FC.{stream}.>"),
                ]);
            }
            publish.extend([format!("$O.{own}.C.>"), format!("$O.{own}.M.>")]);
            for bucket in [s.bucket_capacity(), s.bucket_attempts()] {
                publish.push(format!("{api}.STREAM.INFO.{}", kv(bucket.clone())));
                publish.push(format!("$KV.{bucket}.{name}.>"));
            }
            for class in classes {
                let consumer = s.task_consumer(name, class);
                publish.extend([
                    format!(
                        "{api}.CONSUMER.CREATE.{tasks}.{consumer}.{}",
                        s.tasks(name, class)
                    ),
                    format!("{api}.CONSUMER.INFO.{tasks}.{consumer}"),
                    format!("{api}.CONSUMER.MSG.NEXT.{tasks}.{consumer}"),
                    format!("$JS.ACK.{tasks}.{consumer}.>"),
                    s.max_deliveries_advisory(&consumer),
                ]);
            }
            Permissions {
                publish,
                publish_deny: Vec::new(),
                subscribe: vec![own_inbox, s.cancel()],
            }
        }
        Identity::Source => Permissions {
            publish: vec![s.blocks_all()],
            publish_deny: Vec::new(),
            subscribe: vec![own_inbox],
        },
        Identity::Reader { teams } => {
            let mut publish: Vec<String> = [
                "INFO",
                "STREAM.INFO.*",
                "STREAM.NAMES",
                "STREAM.LIST",
                "STREAM.MSG.GET.*",
                "DIRECT.GET.>",
                "CONSUMER.INFO.*.*",
                "CONSUMER.NAMES.*",
                "CONSUMER.LIST.*",
            ]
            .iter()
            .map(|r| format!("{api}.{r}"))
            .collect();
            // Ordered consumers to read with, on every stream but the work queues (a consumer
            // there would take tasks from the teams).
            let mut readable = vec![
                s.stream_blocks(),
                s.stream_accepted(),
                s.stream_results(),
                s.stream_ready(),
                s.stream_proofs(),
                s.stream_dlq(),
                obj,
            ];
            readable.extend(
                teams
                    .iter()
                    .map(|t| format!("OBJ_{}", s.team_object_store(t))),
            );
            readable.extend(
                [
                    s.bucket_blocks(),
                    s.bucket_teams(),
                    s.bucket_plans(),
                    s.bucket_reports(),
                    s.bucket_parts(),
                    s.bucket_cursors(),
                    s.bucket_capacity(),
                    s.bucket_status(),
                    s.bucket_attempts(),
                    s.bucket_leases(),
                ]
                .map(kv),
            );
            for stream in readable {
                // An ordered consumer over many subjects is created without a filter token.
                publish.push(format!("{api}.CONSUMER.CREATE.{stream}"));
                publish.push(format!("{api}.CONSUMER.CREATE.{stream}.>"));
                // Ordered pull consumers fetch from their own ephemeral consumer.
                publish.push(format!("{api}.CONSUMER.MSG.NEXT.{stream}.*"));
                publish.push(format!("$JS.FC.{stream}.>"));
            }
            Permissions {
                publish,
                publish_deny: Vec::new(),
                subscribe: vec![own_inbox],
            }
        }
    }
}

/// Why the authorization cannot be rendered.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    /// Two teams' task consumers would have one name (`tasks-<team>-<class>` is ambiguous when
    /// names contain `-`): one team's rights would cover the other's tasks.
    #[error("teams {0} and {1} both have a task consumer named {2}; rename a team or a class")]
    SharedConsumer(String, String, String),
}

/// Refuses teams whose rights would overlap.
pub fn check_teams(s: &Subjects, teams: &[TeamConfig]) -> Result<(), AuthError> {
    let mut owner: BTreeMap<String, &str> = BTreeMap::new();
    for team in teams {
        for class in team.classes() {
            let consumer = s.task_consumer(&team.name, &class);
            match owner.get(&consumer) {
                Some(other) if *other != team.name => {
                    return Err(AuthError::SharedConsumer(
                        other.to_string(),
                        team.name.clone(),
                        consumer,
                    ));
                }
                _ => {
                    owner.insert(consumer, &team.name);
                }
            }
        }
    }
    Ok(())
}

/// A user of the authorization block: an identity and the public nkey it signs in with.
#[derive(Debug, Clone)]
pub struct User {
    pub identity: Identity,
    pub public_key: String,
}

/// The nats-server `authorization` block for `users`, to include from the server's
/// configuration; reload the server (`nats-server --signal reload`) after rewriting it.
pub fn render(s: &Subjects, users: &[User]) -> String {
    let list = |items: &[String]| {
        let quoted: Vec<String> = items.iter().map(|i| format!("\"{i}\"")).collect();
        format!("[{}]", quoted.join(", "))
    };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# push0 authorization for prefix {:?}: one nkey per identity, rendered by `push0 auth`.",
        s.prefix()
    );
    out.push_str("authorization {\n  users = [\n");
    for user in users {
        let p = permissions(s, &user.identity, &inbox_prefix(&user.public_key));
        let _ = writeln!(out, "    # {}", user.identity.name());
        let _ = writeln!(out, "    {{ nkey: \"{}\"", user.public_key);
        let _ = write!(
            out,
            "      permissions: {{ publish: {{ allow: {}",
            list(&p.publish)
        );
        if !p.publish_deny.is_empty() {
            let _ = write!(out, ", deny: {}", list(&p.publish_deny));
        }
        let _ = writeln!(
            out,
            " }}, subscribe: {{ allow: {} }} }} }}",
            list(&p.subscribe)
        );
    }
    out.push_str("  ]\n}\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subjects() -> Subjects {
        Subjects::new("p0").unwrap()
    }

    fn allowed(p: &Permissions, subject: &str) -> bool {
        let matches = |pattern: &str| {
            let (mut a, mut b) = (pattern.split('.'), subject.split('.'));
            loop {
                match (a.next(), b.next()) {
                    (Some(">"), Some(_)) => return true,
                    (Some("*"), Some(_)) => {}
                    (Some(x), Some(y)) if x == y => {}
                    (None, None) => return true,
                    _ => return false,
                }
            }
        };
        p.publish.iter().any(|x| matches(x)) && !p.publish_deny.iter().any(|x| matches(x))
    }

    #[test]
    fn a_team_reaches_its_own_work_and_nothing_of_another_team() {
        let s = subjects();
        let alpha = Identity::team(&TeamConfig::split("alpha", 2, 2));
        let p = permissions(&s, &alpha, "_INBOX.UALPHA");
        assert!(allowed(
            &p,
            "$JS.API.CONSUMER.MSG.NEXT.P0_TASKS.tasks-alpha-prove"
        ));
        assert!(allowed(&p, "$JS.ACK.P0_TASKS.tasks-alpha-prove.1.2.3.4.5"));
        assert!(allowed(&p, "p0.results.alpha"));
        assert!(allowed(&p, "$KV.p0_capacity.alpha.gw-1"));
        assert!(allowed(&p, "$KV.p0_attempts.alpha.eth.5.ab.0-1.2"));
        for refused in [
            "$JS.API.CONSUMER.MSG.NEXT.P0_TASKS.tasks-beta-prove",
            "$JS.ACK.P0_TASKS.tasks-beta-prove.1.2.3.4.5",
            "$JS.API.CONSUMER.CREATE.P0_TASKS.tasks-beta-prove.p0.tasks.beta.prove",
            "$JS.API.CONSUMER.CREATE.P0_TASKS.tasks-alpha-prove.p0.tasks.beta.prove",
            "$JS.API.CONSUMER.CREATE.P0_TASKS",
            "$JS.API.CONSUMER.CREATE.P0_RESULTS",
            "p0.results.beta",
            "$KV.p0_capacity.beta.gw-1",
            "$KV.p0_attempts.beta.eth.5.ab.0-1.2",
            "p0.proofs.alpha.eth",
            // A fence mark would only make the aggregator read before publishing, but it is
            // ingest's to publish.
            "p0.fences.alpha.eth",
            "p0.blocks.eth",
            "$JS.API.STREAM.DELETE.P0_TASKS",
            "$JS.API.STREAM.PURGE.P0_TASKS",
            "$KV.p0_teams.alpha",
            // The shared store is read-only to teams; another team's store is out of reach.
            "$O.p0_objects.C.x",
            "$O.p0_objects.M.x",
            "$JS.API.CONSUMER.CREATE.OBJ_p0_objects-beta",
            "$JS.API.DIRECT.GET.OBJ_p0_objects-beta.$O.p0_objects-beta.M.x",
            "$JS.API.STREAM.MSG.GET.OBJ_p0_objects-beta",
            "$O.p0_objects-beta.C.x",
        ] {
            assert!(!allowed(&p, refused), "{refused} allowed to a team");
        }
        for own in [
            "$JS.API.CONSUMER.CREATE.OBJ_p0_objects",
            "$JS.API.DIRECT.GET.OBJ_p0_objects.$O.p0_objects.M.x",
            "$JS.API.CONSUMER.CREATE.OBJ_p0_objects-alpha",
            "$O.p0_objects-alpha.C.x",
            "$O.p0_objects-alpha.M.x",
        ] {
            assert!(allowed(&p, own), "{own} refused to its team");
        }
        assert_eq!(p.subscribe, vec!["_INBOX.UALPHA.>", "p0.control.cancel"]);
    }

    #[test]
    fn services_keep_no_stream_admin_and_readers_no_writes() {
        let s = subjects();
        let ingest = permissions(&s, &Identity::Service("ingest"), "_INBOX.U1");
        assert!(allowed(&ingest, "p0.accepted.eth"));
        assert!(allowed(&ingest, "p0.fences.alpha.eth"));
        assert!(!allowed(&ingest, "$JS.API.STREAM.DELETE.P0_BLOCKS"));
        assert!(!allowed(&ingest, "$JS.API.STREAM.PURGE.P0_TASKS"));
        let scheduler = permissions(&s, &Identity::Service("scheduler"), "_INBOX.U2");
        assert!(allowed(&scheduler, "$JS.API.STREAM.PURGE.P0_TASKS"));
        let reader = Identity::Reader {
            teams: vec!["alpha".into()],
        };
        let reader = permissions(&s, &reader, "_INBOX.U3");
        assert!(allowed(
            &reader,
            "$JS.API.CONSUMER.CREATE.OBJ_p0_objects-alpha"
        ));
        assert!(allowed(&reader, "$JS.API.STREAM.INFO.P0_PROOFS"));
        assert!(allowed(
            &reader,
            "$JS.API.CONSUMER.CREATE.P0_PROOFS.x.p0.proofs.>"
        ));
        assert!(allowed(&reader, "$JS.API.CONSUMER.MSG.NEXT.P0_PROOFS.x"));
        for refused in [
            "$JS.API.CONSUMER.CREATE.P0_TASKS.x.p0.tasks.>",
            "$JS.API.CONSUMER.CREATE.P0_TASKS",
            "$JS.API.CONSUMER.MSG.NEXT.P0_TASKS.tasks-alpha-prove",
            "p0.blocks.eth",
            "$KV.p0_teams.alpha",
            "$JS.API.STREAM.DELETE.P0_PROOFS",
            "$O.p0_objects-alpha.C.x",
        ] {
            assert!(!allowed(&reader, refused), "{refused} allowed to a reader");
        }
        let source = permissions(&s, &Identity::Source, "_INBOX.U4");
        assert!(allowed(&source, "p0.blocks.eth"));
        assert!(!allowed(&source, "p0.accepted.eth"));
    }

    #[test]
    fn teams_whose_consumers_collide_are_refused() {
        let s = subjects();
        let mut a = TeamConfig::single("a");
        a.leaf_class = "b-c".into();
        let mut ab = TeamConfig::single("a-b");
        ab.leaf_class = "c".into();
        assert!(matches!(
            check_teams(&s, &[a, ab]),
            Err(AuthError::SharedConsumer(..))
        ));
        assert_eq!(
            check_teams(
                &s,
                &[TeamConfig::single("alpha"), TeamConfig::split("beta", 2, 2)]
            ),
            Ok(())
        );
    }

    #[test]
    fn the_rendered_block_names_every_user_once() {
        let s = subjects();
        let users: Vec<User> = Identity::all(&[TeamConfig::single("alpha")])
            .into_iter()
            .enumerate()
            .map(|(i, identity)| User {
                identity,
                public_key: format!("UKEY{i}"),
            })
            .collect();
        let text = render(&s, &users);
        for (i, user) in users.iter().enumerate() {
            assert_eq!(text.matches(&format!("nkey: \"UKEY{i}\"")).count(), 1);
            assert!(text.contains(&format!("# {}", user.identity.name())));
        }
        // The source (second user) listens on its own inbox only.
        assert!(text.contains("subscribe: { allow: [\"_INBOX.UKEY1.>\"] }"));
        // Subjects with `$` are quoted: unquoted, nats-server reads them as variables.
        assert!(!text.contains(" $JS"));
    }
}

//! Where a hop's time goes inside the services, from their own metrics: how long a message
//! waited between its stream and its handler (`push0_delivery_lag_seconds`), how long the
//! handler ran (`push0_handle_seconds`), and each kind of request to the server it waited on
//! (`push0_round_trip_seconds`: KV get, create, compare-and-set update; publish until acked).
//! Each process's `/metrics` is read before and after a closed-loop series; the differences
//! are divided by the blocks of the series. Background work in that time (lease renewals,
//! capacity records) is counted too; over a series of a few hundred milliseconds it adds a few
//! hundredths of a request per block.

use std::collections::BTreeMap;

use serde::Serialize;

/// Sum and count of every histogram series of interest, by (role, series).
pub type Scrape = BTreeMap<(String, Series), (f64, f64)>;

/// One histogram series: which step it times and what of.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Series {
    /// Stream time to handling start, for a wire type.
    Lag(String),
    /// Handler start to outcome, for a wire type.
    Handle(String),
    /// A request kind (get, create, update, publish) and its target (bucket or schema).
    RoundTrip(String, String),
}

/// One step of one role, per block of the series.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Step {
    pub role: String,
    pub step: String,
    /// How many times it happened per block.
    pub per_block: f64,
    /// Its mean duration, µs.
    pub mean_us: f64,
}

impl Step {
    /// Its time per block, µs.
    pub fn us_per_block(&self) -> f64 {
        self.per_block * self.mean_us
    }
}

/// Reads the metrics of every (role, metrics port); a process that does not answer is left out.
pub fn scrape(ports: &[(String, u16)]) -> Scrape {
    let mut out = Scrape::new();
    for (role, port) in ports {
        let Some((200, text)) = push0_natsd::http_get(*port, "/metrics") else {
            continue;
        };
        for (series, field, value) in text.lines().filter_map(parse_line) {
            let entry = out.entry((role.clone(), series)).or_default();
            match field {
                Field::Sum => entry.0 += value,
                Field::Count => entry.1 += value,
            }
        }
    }
    out
}

enum Field {
    Sum,
    Count,
}

/// `push0_round_trip_seconds_sum{op="get",target="blocks"} 0.0123` and the like.
fn parse_line(line: &str) -> Option<(Series, Field, f64)> {
    let (name, rest) = line.split_once('{')?;
    let (labels, value) = rest.rsplit_once("} ")?;
    let value: f64 = value.trim().parse().ok()?;
    let label = |key: &str| {
        labels.split(',').find_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            (k == key).then(|| v.trim_matches('"').to_string())
        })
    };
    let (family, field) = match name.rsplit_once('_')? {
        (family, "sum") => (family, Field::Sum),
        (family, "count") => (family, Field::Count),
        _ => return None,
    };
    let series = match family {
        "push0_delivery_lag_seconds" => Series::Lag(label("type")?),
        "push0_handle_seconds" => Series::Handle(label("type")?),
        "push0_round_trip_seconds" => Series::RoundTrip(label("op")?, label("target")?),
        _ => return None,
    };
    Some((series, field, value))
}

/// Where the roles spent a series of `blocks` blocks, from scrapes before and after it: in
/// flow order, each role's delivery lag and handler time first, then its round trips, the
/// costliest first.
pub fn steps(before: &Scrape, after: &Scrape, blocks: usize) -> Vec<Step> {
    let order = ["ingest", "scheduler", "gateway", "aggregator"];
    let mut steps: Vec<(usize, u8, Step)> = Vec::new();
    for ((role, series), (sum, count)) in after {
        let (sum0, count0) = before
            .get(&(role.clone(), series.clone()))
            .copied()
            .unwrap_or_default();
        let (sum, count) = (sum - sum0, count - count0);
        if count <= 0.0 {
            continue;
        }
        let (kind, step) = match series {
            Series::Lag(t) => (0, format!("stream → handler ({t})")),
            Series::Handle(t) => (1, format!("handler ({t})")),
            Series::RoundTrip(op, target) => (2, format!("{op} {target}")),
        };
        let rank = order.iter().position(|r| r == role).unwrap_or(order.len());
        steps.push((
            rank,
            kind,
            Step {
                role: role.clone(),
                step,
                per_block: count / blocks.max(1) as f64,
                mean_us: sum / count * 1e6,
            },
        ));
    }
    steps.sort_by(|a, b| {
        (a.0, a.1)
            .cmp(&(b.0, b.1))
            .then(b.2.us_per_block().total_cmp(&a.2.us_per_block()))
    });
    steps.into_iter().map(|(_, _, s)| s).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scrape_of(text: &str) -> Scrape {
        let mut out = Scrape::new();
        for (series, field, value) in text.lines().filter_map(parse_line) {
            let e = out.entry(("ingest".to_string(), series)).or_default();
            match field {
                Field::Sum => e.0 += value,
                Field::Count => e.1 += value,
            }
        }
        out
    }

    #[test]
    fn differences_are_taken_per_block_in_flow_order() {
        let before = scrape_of(
            "push0_round_trip_seconds_sum{op=\"get\",target=\"blocks\"} 0.001\n\
             push0_round_trip_seconds_count{op=\"get\",target=\"blocks\"} 10\n\
             push0_round_trip_seconds_bucket{op=\"get\",target=\"blocks\",le=\"0.1\"} 10\n",
        );
        let after = scrape_of(
            "push0_round_trip_seconds_sum{op=\"get\",target=\"blocks\"} 0.003\n\
             push0_round_trip_seconds_count{op=\"get\",target=\"blocks\"} 30\n\
             push0_round_trip_seconds_sum{op=\"create\",target=\"blocks\"} 0.004\n\
             push0_round_trip_seconds_count{op=\"create\",target=\"blocks\"} 10\n\
             push0_handle_seconds_sum{service=\"ingest\",type=\"block\"} 0.005\n\
             push0_handle_seconds_count{service=\"ingest\",type=\"block\"} 10\n\
             push0_messages_total{service=\"ingest\",type=\"block\",outcome=\"ok\"} 10\n",
        );
        let steps = steps(&before, &after, 10);
        let got: Vec<(&str, f64, f64)> = steps
            .iter()
            .map(|s| (s.step.as_str(), s.per_block, s.mean_us.round()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("handler (block)", 1.0, 500.0),
                ("create blocks", 1.0, 400.0),
                ("get blocks", 2.0, 100.0),
            ]
        );
    }
}

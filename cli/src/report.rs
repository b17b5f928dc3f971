//! Summaries of proved blocks: percentiles and a plain-text table.

use std::collections::BTreeMap;

use comfy_table::{Cell, CellAlignment, Table, TableComponent, presets};

use push0_protocol::BlockProof;
pub use push0_runtime::metrics::percentile;

#[derive(Debug, Default, Clone)]
pub struct TeamSummary {
    pub blocks: usize,
    pub latency_ms: Vec<u64>,
    pub proving_ms: Vec<u64>,
    pub overhead_ms: Vec<u64>,
    pub proof_system: String,
}

/// Per-team summaries of a set of proofs.
pub fn summarize(proofs: &[BlockProof]) -> BTreeMap<String, TeamSummary> {
    let mut teams: BTreeMap<String, TeamSummary> = BTreeMap::new();
    for p in proofs {
        let t = teams.entry(p.team.clone()).or_default();
        t.blocks += 1;
        t.latency_ms.push(p.latency_ms);
        t.proving_ms.push(p.proving_ms);
        t.overhead_ms
            .push(p.latency_ms.saturating_sub(p.proving_ms));
        t.proof_system = p.proof_system.clone();
    }
    for t in teams.values_mut() {
        t.latency_ms.sort_unstable();
        t.proving_ms.sort_unstable();
        t.overhead_ms.sort_unstable();
    }
    teams
}

/// A table aligned in columns, first row the header (underlined); numbers line up on the
/// right, words on the left.
pub fn table(rows: &[Vec<String>]) -> String {
    let Some((header, body)) = rows.split_first() else {
        return String::new();
    };
    let mut t = Table::new();
    t.load_preset(presets::NOTHING)
        .set_style(TableComponent::HeaderLines, '-')
        .set_header(header);
    for row in body {
        t.add_row(row.iter().enumerate().map(|(c, cell)| {
            let number = c > 0 && cell.starts_with(|ch: char| ch.is_ascii_digit());
            Cell::new(cell).set_alignment(if number {
                CellAlignment::Right
            } else {
                CellAlignment::Left
            })
        }));
    }
    // Two spaces between columns, none before the first.
    for column in t.column_iter_mut() {
        column.set_padding((0, 2));
    }
    let mut out = String::new();
    for line in t.lines() {
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// The summary table `push0 dev` ends with.
pub fn summary_table(proofs: &[BlockProof], expected_per_team: Option<usize>) -> String {
    let mut rows = vec![vec![
        "team".to_string(),
        "proof system".into(),
        "blocks".into(),
        "e2e p50".into(),
        "e2e p99".into(),
        "proving p50".into(),
        "overhead p50".into(),
        "overhead p99".into(),
    ]];
    for (team, s) in summarize(proofs) {
        let blocks = match expected_per_team {
            Some(n) => format!("{}/{n}", s.blocks),
            None => s.blocks.to_string(),
        };
        let ms = |v: u64| format!("{v} ms");
        rows.push(vec![
            team,
            s.proof_system.clone(),
            blocks,
            ms(percentile(&s.latency_ms, 0.5)),
            ms(percentile(&s.latency_ms, 0.99)),
            ms(percentile(&s.proving_ms, 0.5)),
            ms(percentile(&s.overhead_ms, 0.5)),
            ms(percentile(&s.overhead_ms, 0.99)),
        ]);
    }
    table(&rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_by_nearest_rank() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 0.5), 50);
        assert_eq!(percentile(&v, 0.99), 99);
        assert_eq!(percentile(&v, 1.0), 100);
        assert_eq!(percentile(&[7], 0.99), 7);
        assert_eq!(percentile(&[], 0.5), 0);
    }

    #[test]
    fn tables_align() {
        let t = table(&[
            vec!["a".into(), "bb".into()],
            vec!["ccc".into(), "1".into()],
            vec!["d".into(), "x".into()],
        ]);
        assert_eq!(t, "a    bb\n---------\nccc   1\nd    x\n");
    }
}

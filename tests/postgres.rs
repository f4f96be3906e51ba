//! The PostgreSQL mirror's schema (SPEC §9) against a throwaway cluster: the
//! same tables and columns as the SQLite mirror, with the types SPEC §9 names.
//! (The backend that writes it is not in this version: see the README.)

mod common;

use common::pg;

use std::collections::{BTreeMap, BTreeSet};

const MIGRATIONS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/postgres");

/// table → column → declared type, from the SQLite mirror after its migrations.
fn sqlite_schema() -> BTreeMap<String, BTreeMap<String, String>> {
    let dir = tempfile::tempdir().unwrap();
    let store = avala_mirror::store::Store::open(&dir.path().join("m.db")).unwrap();
    store.with(|c| {
        let tables: Vec<String> = c
            .prepare(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'",
            )
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        tables
            .into_iter()
            .map(|t| {
                let cols = c
                    .prepare(&format!("SELECT name, type FROM pragma_table_info('{t}')"))
                    .unwrap()
                    .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
                    .unwrap()
                    .map(Result::unwrap)
                    .collect();
                (t, cols)
            })
            .collect()
    })
}

#[test]
fn the_postgres_schema_has_the_sqlite_mirrors_tables_and_columns() {
    let Some(cluster) = pg::Cluster::start() else {
        return;
    };
    cluster.psql(&["-c", "CREATE SCHEMA avala_mirror"], None);
    let mut files: Vec<_> = std::fs::read_dir(MIGRATIONS)
        .unwrap()
        .map(|e| e.unwrap().path().join("up.sql"))
        .collect();
    files.sort();
    assert!(!files.is_empty());
    for f in &files {
        cluster.psql(
            &["-f", f.to_str().unwrap()],
            Some("-c search_path=avala_mirror"),
        );
    }
    let rows = cluster.psql(
        &[
            "-F",
            "\t",
            "-c",
            "SELECT table_name, column_name, data_type FROM information_schema.columns WHERE table_schema = 'avala_mirror'",
        ],
        None,
    );
    let mut pg: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for line in rows.lines() {
        let f: Vec<&str> = line.split('\t').collect();
        pg.entry(f[0].into())
            .or_default()
            .insert(f[1].into(), f[2].into());
    }
    let lite = sqlite_schema();
    assert_eq!(
        pg.keys().collect::<BTreeSet<_>>(),
        lite.keys().collect::<BTreeSet<_>>(),
        "the same tables"
    );
    // the mirror's own times; the API's stay text as it sent them
    let own_times = [
        "first_seen_at",
        "last_seen_at",
        "deleted_at",
        "next_attempt_at",
        "delivered_at",
        "completed_at",
        "retry_at",
        "last_attempt_at",
        "last_success_at",
        "full_at",
        "filter_failed_at",
    ];
    for (table, cols) in &lite {
        let theirs = &pg[table];
        let names: BTreeSet<&String> = theirs
            .keys()
            .filter(|c| *c != "id" || cols.contains_key("id"))
            .collect();
        assert_eq!(names, cols.keys().collect(), "{table}: the same columns");
        for (col, lite_type) in cols {
            let pg_type = theirs[col].as_str();
            let api_time = matches!((table.as_str(), col.as_str()), ("exports", "created_at"))
                || col == "updated_at" && !matches!(table.as_str(), "downloads" | "service_state");
            let want: &[&str] = match (col.as_str(), lite_type.as_str()) {
                ("raw" | "payload", _) => &["jsonb"],
                (c, _) if own_times.contains(&c) => &["timestamp with time zone"],
                ("created_at" | "updated_at", _) if !api_time => &["timestamp with time zone"],
                (_, "BLOB") => &["bytea"],
                (_, "INTEGER") => &["bigint", "boolean"],
                _ => &["text"],
            };
            assert!(
                want.contains(&pg_type),
                "{table}.{col}: {pg_type}, expected {want:?}"
            );
        }
        // a position for every record table, as SQLite's rowid is
        if cols.contains_key("raw") {
            assert_eq!(
                theirs.get("id").map(String::as_str),
                Some("bigint"),
                "{table}.id"
            );
        }
    }
}

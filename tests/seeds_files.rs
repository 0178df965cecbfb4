//! Seed files on disk: byte-stable round trips, atomic saves, imports of the other tools'
//! formats from committed sample files, and export back.

mod common;

use std::path::{Path, PathBuf};

use selfspec::seeds::{self, interchange, Limits, Seed, SeedFile};

fn root() -> PathBuf {
    common::root().to_path_buf()
}

fn selfspec(args: &[&str], cwd: &Path) -> (String, String, i32) {
    common::printed(common::selfspec().args(args).current_dir(cwd))
}

#[test]
fn sample_files_round_trip_byte_for_byte() {
    for name in ["biomedical", "finance", "sports"] {
        let path = root().join(format!("sample-seeds/{name}.yaml"));
        let bytes = std::fs::read(&path).unwrap();
        let loaded = seeds::load(&path, &Limits::default()).unwrap();
        assert!(loaded.is_valid(), "{name}: {:?}", loaded.problems);
        assert_eq!(seeds::to_yaml(&loaded.file).unwrap().as_bytes(), &bytes[..], "{name} is not canonical");
    }
}

/// A deterministic generator of awkward strings: YAML indicators, quotes, leading and trailing
/// spaces, blank lines, tabs, unicode, and scalars that read as other types.
struct Awkward(u64);

impl Awkward {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn string(&mut self) -> String {
        const WHOLE: [&str; 12] =
            ["yes", "no", "null", "~", "42", "3.0", "true", "- item", "#tag", "*alias", "&anchor", ""];
        if self.next().is_multiple_of(6) {
            return WHOLE[(self.next() % WHOLE.len() as u64) as usize].to_string();
        }
        const PIECES: [&str; 24] = [
            "a", "word", " ", "  ", "\n", "\n\n", ": ", " #", "'", "\"", "\\", "\t", "é", "日本", "😀", "{", "}", "[",
            "]", ",", "- ", "|", ">", "%",
        ];
        let n = self.next() % 12;
        (0..n).map(|_| PIECES[(self.next() % PIECES.len() as u64) as usize]).collect()
    }
}

#[test]
fn any_text_survives_save_and_load() {
    let mut gen = Awkward(0x9e3779b97f4a7c15);
    for round in 0..300 {
        let file = SeedFile {
            domain: format!("d{}", gen.string()),
            description: gen.string(),
            prompts: Default::default(),
            seeds: (0..4)
                .map(|i| Seed {
                    id: format!("s-{round}-{i}"),
                    task: "qa".into(),
                    tags: vec![gen.string(), gen.string()],
                    instruction: gen.string(),
                    input: gen.string(),
                    output: gen.string(),
                })
                .collect(),
        };
        let text = seeds::to_yaml(&file).unwrap();
        let loaded = seeds::load_str(&text, &Limits::default());
        assert!(loaded.is_lossless(), "round {round}: {:?}\n{text}", loaded.problems);
        assert_eq!(loaded.file, file, "round {round}:\n{text}");
        assert_eq!(seeds::to_yaml(&loaded.file).unwrap(), text, "round {round}: second save differs");
    }
}

#[test]
fn a_raw_nul_is_reported_where_it_is() {
    let text = "domain: x\nseeds:\n  - id: a\n    task: qa\n    instruction: Do it\n    input: \"\"\n    output: Fine \0 answer\n";
    let loaded = seeds::load_str(text, &Limits::default());
    assert!(!loaded.is_valid());
    let p = &loaded.problems[0];
    assert_eq!(p.pos.map(|p| (p.line, p.column)), Some((7, 18)), "{p}");
    assert!(p.message.contains("U+0000"), "{p}");
    // Written as an escape, it is text like any other.
    let escaped = text.replace("Fine \0 answer", "\"Fine \\0 answer\"");
    assert!(seeds::load_str(&escaped, &Limits::default()).is_valid());
}

#[test]
fn a_hundred_thousand_bad_seeds_are_reported_in_seconds() {
    let text = format!("domain: x\nseeds:\n{}", "- x\n".repeat(100_000));
    let started = std::time::Instant::now();
    let loaded = seeds::load_str(&text, &Limits::default());
    assert!(!loaded.is_valid());
    // Quadratic, it took over a minute in a release build; a debug build (CI) is slower still.
    assert!(started.elapsed() < std::time::Duration::from_secs(30), "{:?}", started.elapsed());
}

#[test]
fn saving_is_atomic_and_leaves_no_temporary_files() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.yaml");
    let mut file = seeds::load(&root().join("sample-seeds/sports.yaml"), &Limits::default()).unwrap().file;
    seeds::save(&path, &file).unwrap();
    file.seeds.truncate(3);
    seeds::save(&path, &file).unwrap();
    let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, vec![std::ffi::OsString::from("x.yaml")]);
    assert_eq!(seeds::load(&path, &Limits::default()).unwrap().file, file);
}

fn import(format: interchange::Format, file: &str, domain: Option<&str>) -> interchange::Imported {
    let opts = interchange::ImportOptions {
        domain: domain.map(str::to_string),
        default_domain: "fallback".into(),
        task: None,
        skip_invalid: false,
    };
    interchange::import(format, &root().join("tests/fixtures/import").join(file), &opts).unwrap()
}

#[test]
fn imports_self_instruct_seed_tasks() {
    let imported = import(interchange::Format::SelfInstruct, "seed_tasks.jsonl", Some("medicine"));
    let f = &imported.file;
    assert_eq!(f.domain, "medicine");
    let ids: Vec<&str> = f.seeds.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(ids, ["seed_task_0", "seed_task_1-1", "seed_task_1-2", "seed_task_2"]);
    assert_eq!(f.seeds[1].task, "cls");
    assert_eq!(f.seeds[1].input, "Sudden weakness of one side of the face and arm.");
    assert_eq!(f.seeds[2].output, "non-emergency");
    assert_eq!(f.seeds[0].tags, ["drug_class"]);
    assert_eq!(f.seeds[3].task, "other");
    // Two instances of one task share an instruction over different inputs: the importer keeps
    // both, and validation says so as a warning (classification seeds do this); the file is valid.
    let problems = seeds::validate(f, &Limits::default(), None);
    assert_eq!(problems.len(), 1);
    assert!(problems[0].warning);
    assert!(
        problems[0].message.starts_with("repeats the instruction of seeds[1] with another input"),
        "{}",
        problems[0]
    );
    // The same instruction and the same input twice stays an error.
    let mut twice = f.clone();
    twice.seeds[2].input = twice.seeds[1].input.clone();
    let problems = seeds::validate(&twice, &Limits::default(), None);
    assert_eq!(problems.len(), 1);
    assert!(!problems[0].warning);
    assert!(problems[0].message.starts_with("repeats the instruction and input of seeds[1]"), "{}", problems[0]);
}

#[test]
fn imports_instructlab_knowledge_and_skills() {
    let knowledge = import(interchange::Format::Instructlab, "qna.yaml", None).file;
    assert_eq!(knowledge.domain, "pharmacology");
    assert_eq!(knowledge.description, "Basic pharmacokinetics for clinicians");
    assert_eq!(knowledge.seeds.len(), 3);
    let s = &knowledge.seeds[1];
    assert_eq!((s.id.as_str(), s.task.as_str()), ("pharmacology-002", "qa"));
    assert_eq!(s.instruction, "How long does it take to reach steady state?");
    assert!(s.input.starts_with("Half-life is the time") && s.input.ends_with("regular dosing."), "{:?}", s.input);
    assert!(seeds::validate(&knowledge, &Limits::default(), None).is_empty());

    let skill = import(interchange::Format::Instructlab, "qna_skill.yaml", None).file;
    assert_eq!(skill.domain, "fallback");
    assert_eq!(skill.description, "Rewrite clinical jargon in plain language.");
    assert_eq!(skill.seeds[0].input, "The patient is normotensive and afebrile.");
    assert_eq!((skill.seeds[1].input.as_str(), skill.seeds[1].task.as_str()), ("", "other"));
}

#[test]
fn imports_alpaca_jsonl_and_exports_it_back_unchanged() {
    let f = import(interchange::Format::AlpacaJsonl, "alpaca.jsonl", Some("finance")).file;
    let ids: Vec<&str> = f.seeds.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(ids, ["finance-001", "finance-002", "fin-900"]);
    assert_eq!(f.seeds[1].input, "");
    assert_eq!((f.seeds[2].task.as_str(), f.seeds[2].tags.as_slice()), ("re", &["kpi".to_string()][..]));
    let dir = tempfile::tempdir().unwrap();
    let jsonl = dir.path().join("out.jsonl");
    std::fs::write(&jsonl, interchange::export_jsonl(&f)).unwrap();
    let opts = interchange::ImportOptions {
        domain: Some("finance".into()),
        default_domain: String::new(),
        task: None,
        skip_invalid: false,
    };
    let again = interchange::import(interchange::Format::AlpacaJsonl, &jsonl, &opts).unwrap().file;
    assert_eq!(again, f);
}

#[test]
fn bad_records_are_all_reported_with_their_lines() {
    let dir = root().join("tests/fixtures/import");
    let (stdout, stderr, code) =
        selfspec(&["seeds", "import", "--from", "alpaca-jsonl", "alpaca_broken.jsonl", "/nonexistent/out.yaml"], &dir);
    assert_eq!(code, 2, "{stdout}{stderr}");
    let expected = "\
error: alpaca_broken.jsonl:2:1: output: is missing
alpaca_broken.jsonl:3:2: not valid JSON: expected ident
alpaca_broken.jsonl:4:1: instruction: must be a string, found a number
alpaca_broken.jsonl:5:1: each line must be one JSON object
alpaca_broken.jsonl:6:1: task: \"summary\" is not a task; use one of qa, ner, re, sa, cls, sum, gen, other
";
    assert_eq!(stderr, expected);

    let (_, stderr, code) =
        selfspec(&["seeds", "import", "--from", "instructlab", "qna_broken.yaml", "/nonexistent/out.yaml"], &dir);
    assert_eq!(code, 2);
    assert_eq!(
        stderr,
        "error: qna_broken.yaml:5:9: answer: is missing\nqna_broken.yaml:6:5: seed_examples: each example must be a mapping, found text\n"
    );
}

#[test]
fn import_and_export_commands_never_overwrite_without_force() {
    let dir = tempfile::tempdir().unwrap();
    let fixtures = root().join("tests/fixtures/import");
    let out = dir.path().join("medicine.yaml");
    let out_s = out.to_str().unwrap();
    let (stdout, _, code) =
        selfspec(&["seeds", "import", "--from", "self-instruct", "seed_tasks.jsonl", out_s], &fixtures);
    assert_eq!(code, 0);
    assert!(stdout.contains("4 seeds imported"), "{stdout}");
    // One instruction over two inputs: a warning, not a problem to fix.
    assert!(!stdout.contains("to fix before use"), "{stdout}");
    assert!(stdout.contains("warning: seeds[2].instruction"), "{stdout}");
    let before = std::fs::read(&out).unwrap();
    let (_, stderr, code) = selfspec(&["seeds", "import", "--from", "alpaca-jsonl", "alpaca.jsonl", out_s], &fixtures);
    assert_eq!(code, 2);
    assert!(stderr.contains("already exists; pass --force"), "{stderr}");
    assert_eq!(std::fs::read(&out).unwrap(), before);
    // The domain defaults to the output file's name.
    assert!(String::from_utf8_lossy(&before).starts_with("domain: medicine\n"));

    let (stdout, _, code) = selfspec(
        &[
            "seeds",
            "import",
            "--from",
            "alpaca-jsonl",
            "--skip-invalid",
            "--force",
            "--task",
            "sa",
            "alpaca_broken.jsonl",
            out_s,
        ],
        &fixtures,
    );
    assert_eq!(code, 0);
    assert!(stdout.contains("1 seeds imported"), "{stdout}");
    let jsonl = dir.path().join("out.jsonl");
    let (_, _, code) = selfspec(&["seeds", "export", out_s, jsonl.to_str().unwrap()], &fixtures);
    assert_eq!(code, 0);
    assert_eq!(
        std::fs::read_to_string(&jsonl).unwrap(),
        "{\"id\":\"medicine-001\",\"instruction\":\"Fine.\",\"input\":\"\",\"output\":\"ok\",\"task\":\"sa\",\"tags\":[]}\n"
    );
}

#[test]
fn stats_counts_tasks() {
    let (stdout, _, code) = selfspec(&["seeds", "stats", "--json", "sample-seeds/sports.yaml"], &root());
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v["seeds"], 40);
    assert_eq!(v["tasks"]["qa"], 16);
    assert_eq!(v["tasks"]["sum"], 8);
    let (text, _, _) = selfspec(&["seeds", "stats", "sample-seeds/sports.yaml"], &root());
    assert!(text.contains("qa         16   40.0%"), "{text}");
}

#[test]
fn lossy_files_are_refused_by_fmt_and_stats() {
    let (_, stderr, code) = selfspec(&["seeds", "fmt", "tests/fixtures/broken/unknown-keys.yaml"], &root());
    assert_eq!(code, 2);
    assert!(stderr.contains("unknown-keys.yaml:6:3: seeds[0].intruction"), "{stderr}");
}

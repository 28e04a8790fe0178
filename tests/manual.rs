//! The manual (README.md and the mdBook in docs/) against what it describes:
//! - the configuration reference lists every flag and environment variable of
//!   every command, as the built binary's `--help` shows them, and nothing the
//!   commands do not have;
//! - every relative link of the book and the README leads to a file that
//!   exists, and every `#anchor` to a heading of that file (mdBook's slugs);
//! - every chapter is in SUMMARY.md.
//!
//! mdBook itself does not fail on a broken anchor, so this is what CI relies on.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const CONFIGURATION: &str = "docs/src/configuration.md";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

// ---------------------------------------------------------------------------
// The CLI, as `--help` shows it.

/// One `--flag` of one command, with its environment variable when it has one.
#[derive(Debug, Clone)]
struct CliArg {
    command: String,
    flag: String,
    env: Option<String>,
}

/// The binary with these arguments, without the caller's environment (clap
/// shows an environment variable's value in `--help`).
fn reactor(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_reactor"))
        .args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .output()
        .expect("run the reactor binary")
}

fn help(args: &[&str]) -> String {
    let out = reactor(args);
    assert!(out.status.success(), "reactor {args:?}: {out:?}");
    String::from_utf8(out.stdout).expect("help is UTF-8")
}

/// The subcommands `reactor --help` lists (without clap's own `help`).
fn subcommands() -> Vec<String> {
    let top = help(&["--help"]);
    let list = top
        .split_once("Commands:\n")
        .expect("reactor --help lists its commands")
        .1;
    let names: Vec<String> = list
        .lines()
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| *name != "help")
        .map(str::to_string)
        .collect();
    assert!(
        names.len() > 5,
        "commands parsed from reactor --help: {names:?}"
    );
    names
}

/// The `--flags` of one command's help text, each with the `[env: NAME]` of
/// its description (clap's long help: a flag's line, then its description).
fn flags_in_help(command: &str, text: &str) -> Vec<CliArg> {
    let mut out: Vec<CliArg> = Vec::new();
    for line in text.lines() {
        let indent = line.len() - line.trim_start().len();
        let trimmed = line.trim_start();
        if trimmed.starts_with('-') && indent <= 6 {
            let flag = trimmed
                .split([' ', ',', '='])
                .find(|t| t.starts_with("--"))
                .map(str::to_string);
            if let Some(flag) = flag {
                out.push(CliArg {
                    command: command.to_string(),
                    flag,
                    env: None,
                });
            }
        }
        if let Some((_, rest)) = line.split_once("[env: ") {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            let last = out
                .last_mut()
                .unwrap_or_else(|| panic!("{command}: [env: {name}] before any flag"));
            last.env = Some(name);
        }
    }
    out.retain(|a| a.flag != "--help" && a.flag != "--version");
    out
}

fn cli_args() -> Vec<CliArg> {
    let mut all = Vec::new();
    for command in subcommands() {
        let text = help(&[&command, "--help"]);
        all.extend(flags_in_help(&command, &text));
    }
    all
}

// ---------------------------------------------------------------------------
// The configuration reference.

/// The rows of the markdown table whose header is exactly `header`, as cells.
fn table(text: &str, header: &str) -> Vec<Vec<String>> {
    let mut lines = text.lines().skip_while(|l| l.trim() != header);
    assert!(
        lines.next().is_some(),
        "{CONFIGURATION} has a table `{header}`"
    );
    let width = header.matches('|').count() - 1;
    lines
        .skip(1) // |---|---|
        .take_while(|l| l.starts_with('|'))
        .map(|l| {
            let cells: Vec<String> = l
                .trim()
                .trim_matches('|')
                .split('|')
                .map(|c| c.trim().to_string())
                .collect();
            assert_eq!(
                cells.len(),
                width,
                "a row of `{header}` with a stray `|`: {l}"
            );
            cells
        })
        .collect()
}

/// The text of each `code span` of a cell.
fn code_spans(cell: &str) -> Vec<String> {
    cell.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

fn env_names(cell: &str) -> Vec<String> {
    code_spans(cell)
        .into_iter()
        .filter(|s| {
            s.chars().next().is_some_and(|c| c.is_ascii_uppercase())
                && s.chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
        })
        .collect()
}

/// The `--flags` a cell names (`--lease`, `reactor migrate --allow-foreign-policies`).
fn flag_names(cell: &str) -> Vec<String> {
    code_spans(cell)
        .iter()
        .flat_map(|s| s.split_whitespace())
        .filter(|t| t.starts_with("--"))
        .map(str::to_string)
        .collect()
}

/// The commands a cell names (`reactor watch`, `reactor doctor`).
fn command_names(cell: &str) -> Vec<String> {
    code_spans(cell)
        .iter()
        .filter_map(|s| s.strip_prefix("reactor "))
        .map(|s| s.split_whitespace().next().unwrap_or("").to_string())
        .collect()
}

struct Reference {
    /// `| variable | flag | default | meaning |`: (env names, flags, the flag cell).
    variables: Vec<(Vec<String>, Vec<String>, String)>,
    /// `| flag | command | meaning |`: (flag, commands).
    flags_only: Vec<(String, Vec<String>)>,
}

fn reference(text: &str) -> Reference {
    let variables = table(text, "| variable | flag | default | meaning |")
        .into_iter()
        .map(|row| (env_names(&row[0]), flag_names(&row[1]), row[1].clone()))
        .collect();
    let flags_only = table(text, "| flag | command | meaning |")
        .into_iter()
        .map(|row| {
            let flags = flag_names(&row[0]);
            assert_eq!(flags.len(), 1, "one flag per row: {row:?}");
            let commands = command_names(&row[1]);
            assert!(!commands.is_empty(), "a row names its command: {row:?}");
            (flags[0].clone(), commands)
        })
        .collect();
    Reference {
        variables,
        flags_only,
    }
}

/// Whether `reactor run` knows a flag its help does not show (a hidden,
/// deprecated one): clap names an unknown one as "unexpected argument".
fn run_accepts_hidden(flag: &str) -> bool {
    let out = reactor(&["run", flag]);
    !String::from_utf8_lossy(&out.stderr).contains("unexpected argument")
}

/// Every difference between the reference and the CLI, in words.
fn mismatches(reference: &Reference, cli: &[CliArg]) -> Vec<String> {
    let mut problems = Vec::new();

    // Each variable is documented once.
    let mut seen = BTreeSet::new();
    for (envs, _, _) in &reference.variables {
        for env in envs {
            if !seen.insert(env.clone()) {
                problems.push(format!("{env} has two rows in the configuration table"));
            }
        }
    }

    // Every flag of the CLI is in the reference.
    for arg in cli {
        match &arg.env {
            Some(env) => {
                let row = reference
                    .variables
                    .iter()
                    .find(|(envs, _, _)| envs.contains(env));
                match row {
                    None => problems.push(format!(
                        "`reactor {} {}` reads {env}, which the configuration table does not list",
                        arg.command, arg.flag
                    )),
                    Some((_, flags, _)) if !flags.contains(&arg.flag) => problems.push(format!(
                        "{env}: the configuration table names the flag {flags:?}, `reactor {}` has {}",
                        arg.command, arg.flag
                    )),
                    Some(_) => {}
                }
            }
            None => {
                let listed = reference
                    .flags_only
                    .iter()
                    .any(|(flag, commands)| *flag == arg.flag && commands.contains(&arg.command));
                if !listed {
                    problems.push(format!(
                        "`reactor {} {}` has no variable and is not in the table of flags without a variable",
                        arg.command, arg.flag
                    ));
                }
            }
        }
    }

    // Every row of the reference is in the CLI.
    for (envs, flags, flag_cell) in &reference.variables {
        if flags.is_empty() {
            // Marked as not a flag (`—`): then no command may read it as one.
            for env in envs {
                if let Some(arg) = cli.iter().find(|a| a.env.as_ref() == Some(env)) {
                    problems.push(format!(
                        "{env} is marked as not a flag ({flag_cell}), but `reactor {}` has it as {}",
                        arg.command, arg.flag
                    ));
                }
            }
            continue;
        }
        for env in envs {
            for flag in flags {
                let shown = cli
                    .iter()
                    .any(|a| a.env.as_ref() == Some(env) && a.flag == *flag);
                let hidden = !cli.iter().any(|a| a.flag == *flag)
                    && flag_cell.contains("hidden")
                    && run_accepts_hidden(flag);
                if !shown && !hidden {
                    problems.push(format!(
                        "the configuration table lists {env} as {flag}, which no command has"
                    ));
                }
            }
        }
    }
    for (flag, commands) in &reference.flags_only {
        for command in commands {
            let found = cli
                .iter()
                .any(|a| a.command == *command && a.flag == *flag && a.env.is_none());
            if !found {
                problems.push(format!(
                    "the table of flags without a variable lists `reactor {command} {flag}`, which does not exist"
                ));
            }
        }
    }
    problems
}

#[test]
fn the_configuration_table_matches_every_commands_help() {
    let cli = cli_args();
    assert!(
        cli.iter().any(|a| a.command == "run"
            && a.flag == "--lease"
            && a.env.as_deref() == Some("REACTOR_LEASE")),
        "the help parser found `reactor run --lease` (REACTOR_LEASE): {cli:#?}"
    );
    let text = read(&root().join(CONFIGURATION));
    let problems = mismatches(&reference(&text), &cli);
    assert!(
        problems.is_empty(),
        "{CONFIGURATION} and the CLI disagree:\n  {}",
        problems.join("\n  ")
    );
}

/// The comparison itself catches each kind of difference (so the test above
/// cannot pass by comparing nothing).
#[test]
fn a_missing_renamed_or_invented_setting_is_named() {
    let cli = cli_args();
    let text = read(&root().join(CONFIGURATION));
    let lease_row = text
        .lines()
        .find(|l| l.starts_with("| `REACTOR_LEASE` |"))
        .expect("the REACTOR_LEASE row");

    let dropped = text.replace(&format!("{lease_row}\n"), "");
    let problems = mismatches(&reference(&dropped), &cli);
    assert!(
        problems.iter().any(|p| p.contains("REACTOR_LEASE")),
        "a row removed: {problems:?}"
    );

    let renamed = text.replace(lease_row, &lease_row.replace("`--lease`", "`--lease-for`"));
    let problems = mismatches(&reference(&renamed), &cli);
    assert!(
        problems.iter().any(|p| p.contains("--lease-for")),
        "a flag renamed: {problems:?}"
    );

    let invented = text.replace(
        &format!("{lease_row}\n"),
        &format!("{lease_row}\n| `REACTOR_NAP` | `--nap` | `1s` | sleeps |\n"),
    );
    let problems = mismatches(&reference(&invented), &cli);
    assert!(
        problems.iter().any(|p| p.contains("REACTOR_NAP")),
        "a row the CLI does not have: {problems:?}"
    );

    let unflagged = text.replace(lease_row, &lease_row.replace("`--lease`", "—"));
    let problems = mismatches(&reference(&unflagged), &cli);
    assert!(
        problems.iter().any(|p| p.contains("marked as not a flag")),
        "a flag marked as none: {problems:?}"
    );

    let print_row = text
        .lines()
        .find(|l| l.starts_with("| `--print` |"))
        .expect("the --print row");
    let problems = mismatches(
        &reference(&text.replace(&format!("{print_row}\n"), "")),
        &cli,
    );
    assert!(
        problems
            .iter()
            .any(|p| p.contains("reactor migrate --print")),
        "a flag without a variable removed: {problems:?}"
    );
}

// ---------------------------------------------------------------------------
// Links and anchors.

/// mdBook's heading ids: the heading's text without markup, lowercased,
/// whitespace to `-`, everything but letters, digits, `_` and `-` dropped.
fn slug(heading: &str) -> String {
    let mut text = heading.replace(['`', '*'], "");
    // A link in a heading counts by its text.
    while let (Some(open), Some(mid)) = (text.find('['), text.find("](")) {
        let Some(close) = text[mid..].find(')') else {
            break;
        };
        text = format!(
            "{}{}{}",
            &text[..open],
            &text[open + 1..mid],
            &text[mid + close + 1..]
        );
    }
    text.trim()
        .chars()
        .filter_map(|c| {
            if c.is_alphanumeric() || c == '_' || c == '-' {
                Some(c.to_lowercase().next().unwrap_or(c))
            } else if c.is_whitespace() {
                Some('-')
            } else {
                None
            }
        })
        .collect()
}

/// A file as mdBook sees it: `{{#include path}}` replaced by that file.
fn expanded(path: &Path) -> String {
    let dir = path.parent().expect("a file's folder");
    read(path)
        .lines()
        .map(|line| {
            match line
                .trim()
                .strip_prefix("{{#include ")
                .and_then(|r| r.strip_suffix("}}"))
            {
                Some(target) => expanded(&dir.join(target.trim())),
                None => line.to_string(),
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The lines outside fenced code blocks.
fn prose(text: &str) -> Vec<&str> {
    let mut fenced = false;
    text.lines()
        .filter(|l| {
            if l.trim_start().starts_with("```") {
                fenced = !fenced;
                return false;
            }
            !fenced
        })
        .collect()
}

fn anchors(path: &Path) -> BTreeSet<String> {
    prose(&expanded(path))
        .into_iter()
        .filter_map(|l| {
            let hashes = l.chars().take_while(|c| *c == '#').count();
            (1..=6).contains(&hashes).then(|| &l[hashes..])
        })
        .filter(|rest| rest.starts_with(' '))
        .map(slug)
        .collect()
}

/// The targets of a text's inline links `[text](target)`, code spans left out.
fn links(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in prose(text) {
        let without_code: String = line.split('`').step_by(2).collect::<Vec<_>>().join(" ");
        let mut rest = without_code.as_str();
        while let Some(at) = rest.find("](") {
            rest = &rest[at + 2..];
            let end = rest.find(')').unwrap_or(rest.len());
            out.push(rest[..end].trim().to_string());
            rest = &rest[end..];
        }
    }
    out
}

/// Every broken relative link or anchor in these files, in words.
fn broken_links(files: &[PathBuf]) -> Vec<String> {
    let mut cache: BTreeMap<PathBuf, BTreeSet<String>> = BTreeMap::new();
    let mut problems = Vec::new();
    for file in files {
        let shown = file
            .strip_prefix(root())
            .unwrap_or(file)
            .display()
            .to_string();
        for target in links(&read(file)) {
            if target.starts_with("http://")
                || target.starts_with("https://")
                || target.starts_with("mailto:")
            {
                continue;
            }
            let (path, anchor) = match target.split_once('#') {
                Some((p, a)) => (p, Some(a)),
                None => (target.as_str(), None),
            };
            let resolved = if path.is_empty() {
                file.clone()
            } else {
                file.parent().expect("folder").join(path)
            };
            if !resolved.exists() {
                problems.push(format!("{shown}: ({target}) leads to no file"));
                continue;
            }
            let Some(anchor) = anchor else { continue };
            if resolved.extension().is_none_or(|e| e != "md") {
                problems.push(format!(
                    "{shown}: ({target}) has an anchor on a file without headings"
                ));
                continue;
            }
            let known = cache
                .entry(resolved.clone())
                .or_insert_with(|| anchors(&resolved));
            if !known.contains(anchor) {
                problems.push(format!(
                    "{shown}: ({target}) names no heading of {}",
                    resolved.strip_prefix(root()).unwrap_or(&resolved).display()
                ));
            }
        }
    }
    problems
}

fn chapters() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(root().join("docs/src"))
        .expect("docs/src")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    files.sort();
    files
}

#[test]
fn every_link_and_anchor_of_the_book_and_the_readme_leads_somewhere() {
    let mut files = chapters();
    files.push(root().join("README.md"));
    let readme_links = links(&read(&root().join("README.md")));
    assert!(
        readme_links
            .iter()
            .any(|l| l.starts_with("docs/src/") && l.contains('#')),
        "the README links into the book, anchors included: {readme_links:?}"
    );
    let problems = broken_links(&files);
    assert!(
        problems.is_empty(),
        "broken links:\n  {}",
        problems.join("\n  ")
    );
}

#[test]
fn every_chapter_is_in_the_summary() {
    let summary = read(&root().join("docs/src/SUMMARY.md"));
    let listed: BTreeSet<String> = links(&summary).into_iter().collect();
    for chapter in chapters() {
        let name = chapter.file_name().unwrap().to_string_lossy().to_string();
        if name != "SUMMARY.md" {
            assert!(
                listed.contains(&name),
                "docs/src/{name} is not in SUMMARY.md, so the book leaves it out"
            );
        }
    }
}

/// The checker catches a missing file, a missing heading, and an anchor
/// into an included file that is not there (so it cannot pass by checking nothing).
#[test]
fn a_broken_link_or_anchor_is_named() {
    let dir = tempfile::tempdir().expect("scratch folder");
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).expect("write");
        path
    };
    write("included.md", "## From the include\n");
    let target = write(
        "target.md",
        "# The `reactor doctor` command: checks\n\n```sh\n# not a heading\n```\n\n{{#include included.md}}\n",
    );
    let good = write(
        "good.md",
        "[a](target.md#the-reactor-doctor-command-checks) [b](target.md#from-the-include) \
         [c](#here) [d](https://example.com/x#y) `[e](nowhere.md)`\n\n## Here\n",
    );
    assert_eq!(broken_links(&[good, target]), Vec::<String>::new());

    let bad = write(
        "bad.md",
        "[a](missing.md) [b](target.md#not-a-heading) [c](#nowhere)\n",
    );
    let problems = broken_links(&[bad]);
    assert_eq!(problems.len(), 3, "{problems:#?}");
    assert!(problems[0].contains("missing.md"), "{problems:?}");
    assert!(problems[1].contains("#not-a-heading"), "{problems:?}");
    assert!(problems[2].contains("#nowhere"), "{problems:?}");
}

//! The README's first command, exactly as a newcomer runs it: `reactor demo`
//! with no DATABASE_URL (it starts its own PostgreSQL), in an empty directory.
#[test]
fn reactor_demo_runs_the_whole_pipeline_offline_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_reactor"))
        .arg("demo")
        .current_dir(dir.path())
        .env_remove("DATABASE_URL")
        .env_remove("REACTOR_STORAGE_URL")
        .output()
        .expect("run reactor demo");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "demo failed: {}\n{stdout}\n{stderr}",
        output.status
    );
    for mode in ["redesign", "staging", "compose", "imagine"] {
        let line = stdout
            .lines()
            .find(|l| l.starts_with(mode) && l.contains("succeeded"))
            .unwrap_or_else(|| panic!("no succeeded {mode} row in:\n{stdout}"));
        assert!(
            line.contains("/public/renders/") && line.ends_with(".jpg"),
            "{line}"
        );
    }
    assert!(
        stdout.contains("a generation is already in progress"),
        "shows the 409 rule:\n{stdout}"
    );
    assert!(
        stdout.contains("remaining this month: 26 of 30"),
        "{stdout}"
    );
    assert!(
        stdout.contains("processing → succeeded"),
        "live status lines:\n{stdout}"
    );
    assert!(
        stdout.contains("_thumb.webp"),
        "shows the thumbnails' paths:\n{stdout}"
    );
    let images = walk(&dir.path().join("storage/public/renders"));
    assert_eq!(
        images.len(),
        16,
        "two images per job, each with its thumbnail: {images:?}"
    );
    let thumbnails = images
        .iter()
        .filter(|p| p.to_string_lossy().ends_with("_thumb.webp"))
        .count();
    assert_eq!(thumbnails, 8, "{images:?}");
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            found.extend(walk(&path));
        } else {
            found.push(path);
        }
    }
    found
}

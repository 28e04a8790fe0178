//! Embeds every file of `sql/` and `triggers/` into the binary, in apply order
//! (`sql/` first, then `triggers/`, each by file name), so `reactor migrate`
//! works from the binary alone and a new file cannot be forgotten.
use std::{env, fs, path::Path};

fn main() {
    let root = env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let mut entries = String::from("&[\n");
    for dir in ["sql", "triggers"] {
        println!("cargo:rerun-if-changed={dir}");
        let mut names: Vec<String> = fs::read_dir(Path::new(&root).join(dir))
            .unwrap_or_else(|e| panic!("reading {dir}/: {e}"))
            .map(|e| {
                e.expect("directory entry")
                    .file_name()
                    .into_string()
                    .expect("utf-8 file name")
            })
            .filter(|n| n.ends_with(".sql"))
            .collect();
        names.sort();
        for name in names {
            println!("cargo:rerun-if-changed={dir}/{name}");
            entries.push_str(&format!(
                "    Migration {{ name: \"{dir}/{name}\", sql: include_str!(concat!(env!(\"CARGO_MANIFEST_DIR\"), \"/{dir}/{name}\")) }},\n"
            ));
        }
    }
    entries.push(']');
    let out = Path::new(&env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("migrations.rs");
    fs::write(out, entries).expect("writing migrations.rs");
}

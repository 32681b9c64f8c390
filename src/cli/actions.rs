//! `rune list-actions` and `rune plugin-info`: what the registry holds.

use serde_json::json;

use super::{EXIT_OK, EXIT_USAGE, OutputFormat, PluginDirs};
use crate::plugins::{Plugin, Registry, default_display};

fn report_problems(registry: &Registry) {
    for p in registry.problems() {
        eprintln!("warning: {p}");
    }
}

/// `rune list-actions`.
pub fn list(dirs: &PluginDirs, output: OutputFormat) -> i32 {
    let registry = dirs.load();
    match output {
        OutputFormat::Json => {
            let actions: Vec<&Plugin> = registry.all().map(|p| p.as_ref()).collect();
            let doc = json!({ "actions": actions, "problems": registry.problems() });
            println!("{doc}");
        }
        OutputFormat::Pretty => {
            report_problems(&registry);
            println!("{:<20} {:<10} {:<12} {:<5} {:>8}  DESCRIPTION", "ACTION", "VERSION", "CLASS", "ROOT", "TIMEOUT");
            for p in registry.latest() {
                let others = registry.versions(&p.name).len() - 1;
                let more = if others > 0 { format!(" (+{others} older)") } else { String::new() };
                println!(
                    "{:<20} {:<10} {:<12} {:<5} {:>7}s  {}{more}",
                    p.name,
                    p.version.to_string(),
                    format!("{:?}", p.class).to_lowercase(),
                    if p.needs_root { "yes" } else { "no" },
                    p.timeout.as_secs(),
                    p.description
                );
            }
        }
    }
    EXIT_OK
}

/// `rune plugin-info NAME[@VERSION]`.
pub fn info(action: &str, dirs: &PluginDirs, output: OutputFormat) -> i32 {
    let registry = dirs.load();
    let plugin = match registry.resolve(action) {
        Ok(p) => p,
        Err(e) => {
            report_problems(&registry);
            eprintln!("error: {e}");
            return EXIT_USAGE;
        }
    };
    let versions: Vec<String> = registry.versions(&plugin.name).iter().map(|p| p.version.to_string()).collect();
    match output {
        OutputFormat::Json => {
            let doc = json!({ "plugin": plugin.as_ref(), "versions": versions });
            println!("{doc}");
        }
        OutputFormat::Pretty => {
            println!("{} {}", plugin.name, plugin.version);
            println!("  {}", plugin.description);
            println!("  class:      {}", format!("{:?}", plugin.class).to_lowercase());
            println!("  needs root: {}", if plugin.needs_root { "yes" } else { "no" });
            println!("  timeout:    {}s", plugin.timeout.as_secs());
            println!(
                "  requires:   {}",
                if plugin.requires.is_empty() { "-".to_owned() } else { plugin.requires.join(", ") }
            );
            println!("  tags:       {}", if plugin.tags.is_empty() { "-".to_owned() } else { plugin.tags.join(", ") });
            println!("  file:       {}", plugin.path.display());
            println!("  sha256:     {}", plugin.sha256);
            println!("  versions:   {}", versions.join(", "));
            if plugin.args.is_empty() {
                println!("  arguments:  none");
            } else {
                println!("  arguments:");
                for (name, spec) in &plugin.args {
                    let mut facts = vec![format!("{:?}", spec.arg_type).to_lowercase()];
                    if spec.required {
                        facts.push("required".into());
                    }
                    if spec.default.is_some() {
                        facts.push(format!("default {:?}", default_display(&spec.default)));
                    }
                    if let Some(p) = &spec.pattern {
                        facts.push(format!("pattern {p}"));
                    }
                    println!("    {name} ({})", facts.join(", "));
                    if let Some(d) = &spec.description {
                        println!("        {d}");
                    }
                }
            }
        }
    }
    EXIT_OK
}

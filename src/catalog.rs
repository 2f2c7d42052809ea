//! `kube-ebpf-exporter programs`: what each built-in program answers, its hooks, what
//! it needs of the kernel and what it costs.

use anyhow::{Context as _, Result};
use kube_ebpf_exporter::config::Config;

use crate::programs;

/// `kube-ebpf-exporter programs`: the embedded default config's programs.
pub fn list_programs() -> Result<()> {
    let config = Config::load(None)?;
    for (name, program) in &config.programs {
        let object = bpf_programs::find(program.object.as_deref().unwrap_or(name))
            .with_context(|| format!("program {name}: no built-in object"))?;
        let (optional, hooks): (Vec<_>, Vec<_>) = ingest::sections(name, object.bytes)?
            .into_iter()
            .partition(|(function, _)| program.optional.contains(function));
        let hooks: Vec<String> = hooks.into_iter().map(|(_, s)| s).collect();
        let default = if program.enabled {
            "on by default"
        } else {
            "off by default"
        };
        println!(
            "{name} ({default}): {}",
            program.description.as_deref().unwrap_or("")
        );
        println!("  hooks: {}", hooks.join(", "));
        if !optional.is_empty() {
            let optional: Vec<&str> = optional.iter().map(|(_, s)| s.as_str()).collect();
            println!("  where the kernel has them: {}", optional.join(", "));
        }
        println!(
            "  needs: {}",
            programs::kernel_needs(&hooks, !program.rings.is_empty())
        );
        if let Some(cost) = &program.cost {
            println!("  cost: {cost}");
        }
    }
    Ok(())
}

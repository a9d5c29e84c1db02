//! Feature resolution, as cargo does it for the one binary a program builds: which
//! features of each crate are on, which optional dependencies they activate, and the
//! manifest entries a build never uses (dropped from the laid-out manifests).

use std::collections::HashMap;

use super::manifest::{Activation, Crate, Source};

/// The features table of a manifest: feature -> what it enables.
pub(super) fn features_table(manifest: &toml_edit::DocumentMut) -> HashMap<String, Vec<String>> {
    let mut table = HashMap::new();
    if let Some(features) = manifest.get("features").and_then(|f| f.as_table_like()) {
        for (name, item) in features.iter() {
            let enables = item
                .as_array()
                .map(|a| a.iter().filter_map(|v| v.as_str()).map(str::to_owned).collect())
                .unwrap_or_default();
            table.insert(name.to_owned(), enables);
        }
    }
    table
}

/// One step of what a feature enables, in cargo's syntax.
pub(super) enum Enables<'a> {
    /// `name`: another feature, or the implicit feature of an optional dependency.
    Feature(&'a str),
    /// `dep:name`: an optional dependency, without its implicit feature.
    Dependency(&'a str),
    /// `name/feature` (activates `name`) or `name?/feature` (only if `name` is used).
    DependencyFeature { dependency: &'a str, feature: &'a str, weak: bool },
}

pub(super) fn enables(entry: &str) -> Enables<'_> {
    if let Some(dependency) = entry.strip_prefix("dep:") {
        return Enables::Dependency(dependency);
    }
    match entry.split_once('/') {
        Some((dependency, feature)) => match dependency.strip_suffix('?') {
            Some(dependency) => Enables::DependencyFeature { dependency, feature, weak: true },
            None => Enables::DependencyFeature { dependency, feature, weak: false },
        },
        None => Enables::Feature(entry),
    }
}

/// What a build of the binary (with its default features) activates in every crate
/// of the program, as cargo's feature resolver does: features are unified across
/// dependents, `dep:`, `name/feature` and weak `name?/feature` are followed, and an
/// optional dependency is used only when an enabled feature activates it. `None`
/// for crates the binary never reaches.
pub(super) fn activate(crates: &[Crate], binary: usize) -> Vec<Option<Activation>> {
    let tables: Vec<HashMap<String, Vec<String>>> = crates.iter().map(|c| features_table(&c.manifest)).collect();
    let mut activations: Vec<Option<Activation>> = vec![None; crates.len()];
    let mut asked: Vec<std::collections::BTreeSet<String>> = vec![Default::default(); crates.len()];
    asked[binary].insert("default".into());
    let mut reached = vec![false; crates.len()];
    reached[binary] = true;
    // Features only grow, so this ends: at the latest when every feature is on.
    loop {
        let mut changed = false;
        for (index, krate) in crates.iter().enumerate() {
            if !reached[index] {
                continue;
            }
            let activation = activate_one(krate, &tables[index], &asked[index]);
            for (dependency, wanted) in krate.dependencies.iter().zip(&activation.dependencies) {
                if let (Source::Path(target), Some(wanted)) = (&dependency.source, wanted) {
                    reached[*target] = true;
                    for feature in wanted {
                        changed |= asked[*target].insert(feature.clone());
                    }
                }
            }
            if activations[index].as_ref() != Some(&activation) {
                activations[index] = Some(activation);
                changed = true;
            }
        }
        if !changed {
            return activations;
        }
    }
}

/// One crate's activation, given the features its dependents ask of it.
pub(super) fn activate_one(
    krate: &Crate,
    table: &HashMap<String, Vec<String>>,
    asked: &std::collections::BTreeSet<String>,
) -> Activation {
    let optional = |name: &str| krate.dependencies.iter().any(|d| d.optional && d.name == name);
    let mut features = std::collections::BTreeSet::new();
    let mut used: std::collections::BTreeSet<&str> = Default::default();
    let mut extra: HashMap<&str, Vec<&str>> = HashMap::new();
    let mut weak: Vec<(&str, &str)> = Vec::new();
    let mut pending: Vec<&str> = asked.iter().map(String::as_str).collect();
    while let Some(feature) = pending.pop() {
        if !features.insert(feature.to_owned()) {
            continue;
        }
        match table.get(feature) {
            Some(entries) => {
                for entry in entries {
                    match enables(entry) {
                        Enables::Feature(name) => pending.push(name),
                        Enables::Dependency(name) => {
                            used.insert(name);
                        }
                        Enables::DependencyFeature { dependency, feature, weak: false } => {
                            used.insert(dependency);
                            extra.entry(dependency).or_default().push(feature);
                            // `name/feature` of an optional dependency enables its
                            // implicit feature too.
                            if optional(dependency) && !table.contains_key(dependency) {
                                features.insert(dependency.to_owned());
                            }
                        }
                        Enables::DependencyFeature { dependency, feature, weak: true } => {
                            weak.push((dependency, feature));
                        }
                    }
                }
            }
            // An optional dependency's implicit feature.
            None if optional(feature) => {
                used.insert(feature);
            }
            None => {}
        }
    }
    for (dependency, feature) in weak {
        extra.entry(dependency).or_default().push(feature);
    }
    let dependencies = krate
        .dependencies
        .iter()
        .map(|dependency| {
            if dependency.optional && !used.contains(dependency.name.as_str()) {
                return None;
            }
            let mut wanted: std::collections::BTreeSet<String> = dependency.features.iter().cloned().collect();
            if dependency.default_features {
                wanted.insert("default".into());
            }
            wanted.extend(extra.get(dependency.name.as_str()).into_iter().flatten().map(|f| (*f).to_owned()));
            Some(wanted)
        })
        .collect();
    Activation { features, dependencies }
}

/// Removes from a crate's manifest what a build of the binary never needs, so that
/// crates copied from crates.io build as they are: `[dev-dependencies]` (in every
/// target table), `[[bench]]`, `[[test]]` and `[[example]]` targets (and their
/// auto-discovery), and the optional dependencies no enabled feature activates,
/// with every feature entry that names them.
pub(super) fn drop_unbuilt(manifest: &mut toml_edit::DocumentMut, krate: &Crate, activation: &Activation) {
    let mut dropped: std::collections::BTreeSet<&str> = Default::default();
    for (dependency, used) in krate.dependencies.iter().zip(&activation.dependencies) {
        if used.is_none() {
            remove_at(manifest, &dependency.keys);
            dropped.insert(dependency.name.as_str());
        }
    }
    manifest.remove("dev-dependencies");
    if let Some(targets) = manifest.get_mut("target").and_then(|t| t.as_table_like_mut()) {
        for (_, target) in targets.iter_mut() {
            if let Some(target) = target.as_table_like_mut() {
                target.remove("dev-dependencies");
            }
        }
    }
    for kind in ["bench", "test", "example"] {
        manifest.remove(kind);
    }
    if let Some(package) = manifest.get_mut("package").and_then(|p| p.as_table_like_mut()) {
        for auto in ["autobenches", "autotests", "autoexamples"] {
            package.insert(auto, toml_edit::value(false));
        }
    }
    if dropped.is_empty() {
        return;
    }
    let features = features_table(manifest);
    let names_dropped = |entry: &str| match enables(entry) {
        Enables::Dependency(name) | Enables::DependencyFeature { dependency: name, .. } => dropped.contains(name),
        Enables::Feature(name) => dropped.contains(name) && !features.contains_key(name),
    };
    if let Some(table) = manifest.get_mut("features").and_then(|f| f.as_table_like_mut()) {
        for (_, item) in table.iter_mut() {
            if let Some(array) = item.as_array_mut() {
                array.retain(|v| !v.as_str().is_some_and(names_dropped));
            }
        }
    }
}

pub(super) fn remove_at(manifest: &mut toml_edit::DocumentMut, keys: &[String]) {
    let Some((last, parents)) = keys.split_last() else { return };
    let mut item = manifest.as_item_mut();
    for key in parents {
        match item.as_table_like_mut().and_then(|t| t.get_mut(key)) {
            Some(next) => item = next,
            None => return,
        }
    }
    if let Some(table) = item.as_table_like_mut() {
        table.remove(last);
    }
}

//! [`Program`]: a program that follows every rule, from its files, and the layout a
//! worker writes of it.

use std::collections::HashMap;

use super::features::{activate, drop_unbuilt};
use super::layout::{LaidOutCrate, Layout};
use super::manifest::{
    Crate, Dependency, Source, assign_files, check_in_set, find_binary, join, read_crates, read_dependencies, set_path,
    strip_dir,
};
use super::rules::{ProgramError, ProgramFile, check_files, source_sha256};
use crate::depset::DepSet;

/// A program that follows every rule.
#[derive(Debug, Clone)]
pub struct Program {
    files: Vec<ProgramFile>,
    crates: Vec<Crate>,
    binary: usize,
}

impl Program {
    /// Applies every rule of the format to `files`.
    pub fn parse(files: Vec<ProgramFile>, depset: &DepSet) -> Result<Program, ProgramError> {
        check_files(&files)?;
        let mut crates = read_crates(&files)?;
        let binary = find_binary(&crates)?;
        assign_files(&files, &mut crates);
        let by_dir: HashMap<String, usize> = crates.iter().enumerate().map(|(i, c)| (c.dir.clone(), i)).collect();
        let dependencies: Vec<Vec<Dependency>> =
            crates.iter().map(|c| read_dependencies(c, &by_dir)).collect::<Result<_, _>>()?;
        for (krate, dependencies) in crates.iter_mut().zip(dependencies) {
            krate.dependencies = dependencies;
        }
        let activations = activate(&crates, binary);
        for (krate, activation) in crates.iter_mut().zip(activations) {
            krate.activation = activation;
        }
        for krate in &crates {
            check_in_set(krate, depset)?;
        }
        let program = Program { files, crates, binary };
        program.topological_order()?;
        Ok(program)
    }

    pub fn binary(&self) -> &Crate {
        &self.crates[self.binary]
    }

    pub fn crates(&self) -> &[Crate] {
        &self.crates
    }

    /// Crates reachable from the binary by path dependencies, dependencies first.
    fn topological_order(&self) -> Result<Vec<usize>, ProgramError> {
        #[derive(Clone, Copy, PartialEq)]
        enum Mark {
            New,
            Visiting,
            Done,
        }
        fn visit(program: &Program, at: usize, marks: &mut [Mark], order: &mut Vec<usize>) -> Result<(), ProgramError> {
            match marks[at] {
                Mark::Done => return Ok(()),
                Mark::Visiting => return Err(ProgramError::DependencyCycle(program.crates[at].package.clone())),
                Mark::New => {}
            }
            marks[at] = Mark::Visiting;
            for target in program.crates[at].path_targets() {
                visit(program, target, marks, order)?;
            }
            marks[at] = Mark::Done;
            order.push(at);
            Ok(())
        }
        let mut marks = vec![Mark::New; self.crates.len()];
        let mut order = Vec::new();
        // Only what the binary uses: crates no build of it reaches are not laid out.
        visit(self, self.binary, &mut marks, &mut order)?;
        Ok(order)
    }

    /// Content-addresses every crate the binary uses. A crate's address covers its
    /// files and, through its rewritten manifest, the addresses of its path
    /// dependencies: the same operator source gets the same directory in every
    /// pipeline and on every worker, which is what lets sccache share its compilation.
    pub fn layout(&self) -> Layout {
        // `parse` already rejected cycles, so the order exists.
        let order = self.topological_order().expect("parse rejects dependency cycles");
        let mut dir_names: HashMap<usize, String> = HashMap::new();
        let mut crates = Vec::new();
        for index in order {
            let krate = &self.crates[index];
            let mut manifest = krate.manifest.clone();
            let activation = krate.activation.as_ref().expect("laid-out crates are reached by the binary");
            for (dep, used) in krate.dependencies.iter().zip(&activation.dependencies) {
                if let (Source::Path(target), Some(_)) = (&dep.source, used) {
                    set_path(&mut manifest, &dep.keys, &format!("../{}", dir_names[target]));
                }
            }
            drop_unbuilt(&mut manifest, krate, activation);
            // A member of the worker's workspace may not declare a workspace, and its
            // profiles would be ignored with a warning: the farm decides both.
            // `[patch]` too: only the workspace root's counts, and the farm's root
            // patches the pipeline runtime itself.
            manifest.remove("workspace");
            manifest.remove("profile");
            manifest.remove("patch");
            let manifest_path = join(&krate.dir, "Cargo.toml");
            let mut files: Vec<ProgramFile> = krate
                .files
                .iter()
                .map(|&i| {
                    let file = &self.files[i];
                    let relative = strip_dir(&krate.dir, &file.path).to_owned();
                    if file.path == manifest_path {
                        ProgramFile { path: relative, content: manifest.to_string().into_bytes(), executable: false }
                    } else {
                        ProgramFile { path: relative, content: file.content.clone(), executable: file.executable }
                    }
                })
                .collect();
            files.sort_by(|a, b| a.path.cmp(&b.path));
            let hash = source_sha256(&files);
            let dir_name = format!("{}-{}", krate.package, hash);
            dir_names.insert(index, dir_name.clone());
            crates.push(LaidOutCrate { dir_name, package: krate.package.clone(), kind: krate.kind, files });
        }
        Layout { crates }
    }
}

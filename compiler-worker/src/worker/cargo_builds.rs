//! What the real worker builds with: cargo in the build root (through the
//! sandbox, through sccache when it runs), the compile cache's figures read around
//! each build, and the binary taken and hashed once the build's processes are
//! gone. The claim loop sees only the [`BuildResult`].

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use kiln_core::api::CacheFigures;
use kiln_core::cluster::Figures;
use kiln_core::program::{Layout, Program};
use tokio_util::sync::CancellationToken;

use crate::builder::{self, BuildOutcome, BuildSettings, Wrapper};
use crate::disk::{DiskState, DiskWatch};
use crate::link::{Assignment, Binary};
use crate::sandbox;
use crate::sandbox::gateway::Scope;
use crate::sccache::{self, CompileCache};
use crate::worker::result::{BuildResult, Builds, Built};
use crate::worker::shared::Shared;

/// Builds with cargo, as the member is configured.
pub(crate) struct CargoBuilds {
    pub settings: BuildSettings,
    /// The compile cache, when it runs.
    pub sccache: Option<CompileCache>,
    /// Why there is no compile cache, when there is none.
    pub cache_note: String,
    pub shared: Arc<Shared>,
    /// The disk watermarks, looked at between builds.
    pub disk: DiskWatch,
    /// The profiles whose prebuilt dependency set this member has made ready
    /// besides its own (`builder::prepare_profile`).
    pub profiles_ready: std::collections::HashSet<String>,
}

/// The sccache side of one build: the wrapper cargo runs with, and the figures so far.
struct CacheRun {
    wrapper: Wrapper,
    figures: CacheFigures,
}

impl Builds for CargoBuilds {
    async fn make_room(&mut self) -> DiskState {
        let watch = self.disk.clone();
        tokio::task::spawn_blocking(move || watch.make_room()).await.unwrap_or_default()
    }

    /// Builds the assignment: lays the program out, runs cargo (through sccache when
    /// it runs), reads the cache's figures and hashes the binary.
    async fn build(&mut self, assignment: &Assignment, cancel: &CancellationToken) -> BuildResult {
        tracing::info!("build started");
        let files = assignment.files.clone();
        let layout = match Program::parse(files, &self.settings.depset) {
            Ok(program) => program.layout(),
            Err(e) => {
                return BuildResult::SystemError {
                    error: format!("this worker cannot build the program: {e}"),
                    log: String::new(),
                    figures: Figures { cache: self.cache_off_figures(), ..Figures::default() },
                };
            }
        };
        let pipeline = assignment.claim.pipeline_id;
        let settings = match self.settings_for(&assignment.profile).await {
            Ok(settings) => settings,
            Err(e) => {
                return BuildResult::SystemError {
                    error: format!("this worker cannot build in profile {:?}: {e:#}", assignment.profile),
                    log: String::new(),
                    figures: Figures { cache: self.cache_off_figures(), ..Figures::default() },
                };
            }
        };
        // Who may write what others read, decided here from the layout this worker
        // is about to write, before anything of the build runs.
        let submitted_code = layout.submitted_code().or_else(|| {
            sandbox::target::layer_ran_submitted_code(&settings.build_root, pipeline).then(|| {
                "an earlier build of this pipeline on this worker ran code of its submitter, and what it wrote is in this build's target/".to_owned()
            })
        });
        if let Some(sccache) = &self.sccache {
            sccache.set_scope(match &submitted_code {
                None => Scope::Shared,
                Some(why) => {
                    tracing::info!(reason = %why, "the build runs code of its submitter: its compile-cache entries stay its pipeline's");
                    let name = match kiln_core::program::validate_name(&assignment.name) {
                        Ok(()) => assignment.name.clone(),
                        Err(_) => format!("id-{pipeline}"),
                    };
                    Scope::Pipeline(name)
                }
            });
        }
        let mut cache = self.start_cache_run().await;
        // Only builds that run no submitted code compile through the member's
        // long-lived server.
        if let (Some(_), Some(in_sandbox)) = (&submitted_code, cache.wrapper.in_sandbox.as_mut()) {
            in_sandbox.server = None;
        }
        let outcome = builder::build(&settings, &cache.wrapper, &layout, pipeline, cancel, &self.shared.progress).await;
        let mut cache_section = self.finish_cache_run(&mut cache.figures, &layout).await;
        if let (Some(why), true) = (&submitted_code, cache.figures.enabled) {
            cache_section.push_str(&format!(
                "this build ran code of its submitter ({why}): the compile-cache entries it made are kept for pipeline {} alone, and its binary is served by the binary cache to this pipeline only\n",
                assignment.name
            ));
        }
        let figures = |elapsed: Duration, cache: CacheFigures| Figures {
            compile_ms: elapsed.as_millis() as u64,
            cache,
            ..Figures::default()
        };
        match outcome {
            Ok(BuildOutcome::Cancelled) => BuildResult::Cancelled,
            Ok(BuildOutcome::CompileError { summary, log, elapsed }) => BuildResult::CompileError {
                summary,
                log: log + &cache_section,
                figures: figures(elapsed, cache.figures),
            },
            Err(e) => BuildResult::SystemError {
                error: format!("{e:#}"),
                log: String::new(),
                figures: figures(Duration::ZERO, cache.figures),
            },
            Ok(BuildOutcome::Built { executable, log, elapsed }) => {
                let log = log + &cache_section;
                let figures = figures(elapsed, cache.figures);
                let path = executable.clone();
                let taken =
                    tokio::task::spawn_blocking(move || sandbox::target::take_binary(&settings, &executable)).await;
                match taken {
                    Ok(Ok((file, sha256, size))) => {
                        let executable = Binary::new(file, path);
                        BuildResult::Built(Built { executable, sha256, size, log, figures, submitted_code })
                    }
                    // The build left something else than its binary where cargo put
                    // it: the program's doing, so its error; the worker goes on.
                    Ok(Err(
                        refused @ (sandbox::files::Refused::NotRegular { .. }
                        | sandbox::files::Refused::TooLarge { .. }),
                    )) => {
                        tracing::warn!(error = %refused, "the build's binary was refused");
                        BuildResult::CompileError {
                            summary: format!("the binary was refused: {refused}"),
                            log,
                            figures,
                        }
                    }
                    Ok(Err(refused)) => BuildResult::SystemError { error: refused.to_string(), log, figures },
                    Err(e) => BuildResult::SystemError { error: format!("taking the binary: {e}"), log, figures },
                }
            }
        }
    }
}

impl CargoBuilds {
    /// The build settings of a build in `profile` (empty: the member's own),
    /// its prebuilt dependency set made ready the first time it is asked for.
    async fn settings_for(&mut self, profile: &str) -> anyhow::Result<BuildSettings> {
        if profile.is_empty() || profile == self.settings.profile {
            return Ok(self.settings.clone());
        }
        let profile = kiln_core::profile::check(profile)?;
        let settings = BuildSettings { profile: profile.to_owned(), ..self.settings.clone() };
        if !self.profiles_ready.contains(profile) {
            builder::prepare_profile(&settings).await?;
            self.profiles_ready.insert(profile.to_owned());
        }
        Ok(settings)
    }

    fn cache_off_figures(&self) -> CacheFigures {
        CacheFigures { enabled: false, note: self.cache_note.clone(), ..Default::default() }
    }

    /// Readies the compile cache for a build (after it, its figures are read).
    async fn start_cache_run(&self) -> CacheRun {
        let Some(sccache) = &self.sccache else {
            return CacheRun { wrapper: Wrapper::default(), figures: self.cache_off_figures() };
        };
        match sccache.before_build().await {
            Ok(wrapper) => CacheRun { wrapper, figures: CacheFigures { enabled: true, ..Default::default() } },
            Err(e) => {
                let note = format!("sccache failed before the build ({e:#}): built without the cache");
                tracing::warn!("{note}");
                self.shared.set_cache_state(false, format!("sccache does not answer: {e:#}"));
                CacheRun {
                    wrapper: Wrapper::default(),
                    figures: CacheFigures { enabled: false, note, ..Default::default() },
                }
            }
        }
    }

    /// Reads this build's cache figures into `cache`; returns the log's cache section.
    async fn finish_cache_run(&self, cache: &mut CacheFigures, layout: &Layout) -> String {
        let (true, Some(sccache)) = (cache.enabled, &self.sccache) else { return String::new() };
        match sccache.after_build().await {
            Ok(stats) => {
                cache.hits = stats.hits;
                cache.misses = stats.misses;
                cache.non_cacheable = stats.non_cacheable;
                cache.hit_read_ms = stats.hit_read_ms;
                cache.miss_compile_ms = stats.miss_compile_ms;
                cache.saved_ms = stats.saved_ms;
                cache.hits_without_cost = stats.hits_without_cost;
                cache.time_from_cache_percent = CacheFigures::percent_from_cache(stats.saved_ms, stats.miss_compile_ms);
                if stats.store_errors > 0 {
                    cache.note = format!(
                        "the cache store failed {} times during this build; those crates were compiled without the cache",
                        stats.store_errors
                    );
                    tracing::warn!(store_errors = stats.store_errors, "the cache store failed during the build");
                }
                cache_log(&self.settings.build_root, layout, &stats, &sccache.describe())
            }
            Err(e) => {
                cache.note = format!("sccache statistics unavailable: {e:#}");
                String::new()
            }
        }
    }
}

/// The cache part of a build log: enough to explain a miss that should have been a hit.
fn cache_log(build_root: &Path, layout: &Layout, stats: &sccache::SccacheStats, describe: &str) -> String {
    let mut text = format!(
        "\n== compile cache ==\n{describe}\nhits {} ({} ms reading) / misses {} ({} ms compiling) / not cacheable {} / store errors {}\nbuild root {}\n",
        stats.hits,
        stats.hit_read_ms,
        stats.misses,
        stats.miss_compile_ms,
        stats.non_cacheable,
        stats.store_errors,
        build_root.display()
    );
    text.push_str(&format!(
        "compile time saved by hits {} ms: {} % of this build's compile time came from the cache",
        stats.saved_ms,
        CacheFigures::percent_from_cache(stats.saved_ms, stats.miss_compile_ms)
    ));
    if stats.hits_without_cost > 0 {
        text.push_str(&format!(" ({} hits have no recorded cost and are not counted)", stats.hits_without_cost));
    }
    text.push('\n');
    for (reason, count) in &stats.not_cached {
        text.push_str(&format!("not cached: {reason} x{count}\n"));
    }
    for krate in &layout.crates {
        text.push_str(&format!("crate {} at src/{}\n", krate.package, krate.dir_name));
    }
    text
}
